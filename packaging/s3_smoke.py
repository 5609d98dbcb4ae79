"""The built oss-download against a local S3 server, checking the bytes: what .github/workflows/dist.yml runs on
Windows and macOS after the build, and what runs here the same way:

    python packaging/s3_smoke.py dist/oss-download        # needs moto[server] (boto3 comes with it)

moto's S3 server on 127.0.0.1 holds a bucket of objects whose names are awkward but storable on Windows, macOS
and Linux alike (spaces, Chinese, accents, an emoji, `#+&=@'!()[]~,;%`, deep folders, no two names differing only
in case), an empty object and one over the multipart threshold (fetched as ranged parts). The executable downloads
the prefix; every file must hold exactly the object's bytes, and nothing else may appear beside the tool's own
files. A second run must find everything already present and leave the same bytes. Exits 1 with what differed."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BUCKET, PREFIX = "smoke", "data/"
KEYS = ["plain.txt", "spaces in a name.txt", "中文/文件 一.txt", "accents-éüñ/ç.txt", "emoji-😀.txt",
        "punct #+&=@'!()[]~,;%.txt", "deep/a/b/c/d/e/f.bin", "empty.txt"]
BIG = "big/ranged.bin"
BIG_SIZE = 17 * (1 << 20) + 7  # over the 16 MiB multipart threshold: 8 MiB ranged parts, written by seek + write


def body(key: str, size: int | None = None) -> bytes:
    """Fixed bytes per key (not all alike: a file written under another's name would show)."""
    seed = hashlib.sha256(key.encode()).digest()
    size = size if size is not None else (0 if key == "empty.txt" else 1000 + seed[0] * 40)
    return (seed * (size // len(seed) + 1))[:size]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_files(out: Path) -> dict[str, bytes]:
    """Everything under the output but the tool's own files (.oss-*, the .ossdl/ work area)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".oss") for part in p.relative_to(out).parts)}


def run(tool: Path, endpoint: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(AWS_ACCESS_KEY_ID="smoke-key", AWS_SECRET_ACCESS_KEY="smoke-secret", AWS_DEFAULT_REGION="us-east-1",
               NO_PROXY="127.0.0.1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    command = [str(tool), "--endpoint", endpoint, "--bucket", BUCKET, "--prefix", PREFIX, "--output", str(out),
               "--concurrency", "8", "--yes"]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, env=env, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    stdout, stderr = (s.decode("utf-8", "replace") for s in (done.stdout, done.stderr))
    print(stdout + stderr, flush=True)
    return subprocess.CompletedProcess(command, done.returncode, stdout, stderr)


def compare(got: dict[str, bytes], expected: dict[str, bytes]) -> list[str]:
    problems = [f"missing: {k}" for k in sorted(expected.keys() - got.keys())]
    problems += [f"not an object: {k}" for k in sorted(got.keys() - expected.keys())]
    problems += [f"different bytes: {k} ({len(got[k])} bytes, expected {len(expected[k])})"
                 for k in sorted(got.keys() & expected.keys()) if got[k] != expected[k]]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    tool = Path(argv[0]).resolve()
    for stream in (sys.stdout, sys.stderr):  # a Windows console's code page may lack the keys' characters
        stream.reconfigure(errors="backslashreplace")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="smoke-key",
                              aws_secret_access_key="smoke-secret")
        client.create_bucket(Bucket=BUCKET)
        expected = {key: body(key) for key in KEYS}
        expected[BIG] = body(BIG, BIG_SIZE)
        for key, data in expected.items():
            client.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data)
        client.put_object(Bucket=BUCKET, Key="elsewhere.txt", Body=b"outside the prefix")
        with tempfile.TemporaryDirectory(prefix="oss-smoke-") as folder:
            out = Path(folder) / "out"
            problems = []
            for attempt in ("first run", "second run"):
                done = run(tool, endpoint, out)
                if done.returncode != 0:
                    problems.append(f"{attempt}: exit {done.returncode}, expected 0")
                problems += [f"{attempt}: {p}" for p in compare(local_files(out), expected)]
                # The summary's counts: the first run downloads everything, the second finds it all present.
                fetched, present = (len(expected), 0) if attempt == "first run" else (0, len(expected))
                for label, count in (("downloaded", fetched), ("already present", present)):
                    if not re.search(rf"^\s*{label}\s+{count}\s*$", done.stdout, re.M):
                        problems.append(f"{attempt}: the summary does not say {label} {count}")
                if problems:
                    break
    finally:
        server.stop()
    for problem in problems:
        print("FAILED:", problem, file=sys.stderr)
    if not problems:
        print(f"ok: {len(expected)} objects downloaded byte-identical by {tool.name}; the second run fetched nothing")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
