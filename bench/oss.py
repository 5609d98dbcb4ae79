"""The OSS-protocol server (infra/oss_server.py) in its own process, holding the scenarios' objects, for the
product's `--backend oss` runs. SeaweedFS speaks only S3; this server is Python (one thread per
connection), so it caps the OSS runs' wall time; the product's own CPU time is the fair comparison.

    python -m bench.oss --scenarios 1,2,3,4 [--objects N] [--big-mb N]   # prints "ready <endpoint>"
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bench import measure
from bench.seed import BUCKET, MiB, scenarios

ROOT = Path(__file__).resolve().parent.parent


class OssProcess:
    """Starts `python -m bench.oss` and reads its endpoint; stop() ends it."""

    def __init__(self, python: str, numbers: list[int], objects: int | None, big_mb: int, log: Path):
        self.cmd = [python, "-m", "bench.oss", "--scenarios", ",".join(map(str, numbers)), "--big-mb", str(big_mb)]
        if objects:
            self.cmd += ["--objects", str(objects)]
        self.log, self.proc, self.endpoint = log, None, ""

    def start(self, timeout: float = 600) -> "OssProcess":
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(self.log, "wb"),
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        timer = threading.Timer(timeout, lambda: measure.stop_group(self.proc, grace=5))
        timer.start()
        try:
            line = self.proc.stdout.readline().split()
        finally:
            timer.cancel()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"the OSS-protocol server did not start; see {self.log}")
        self.endpoint = line[1]
        return self

    def stop(self) -> None:
        measure.stop_group(self.proc, grace=5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenarios", default="1,2,3,4")
    p.add_argument("--objects", type=int)
    p.add_argument("--big-mb", type=int, default=1024)
    args = p.parse_args()
    from infra.oss_server import OssServer
    server = OssServer()
    server.create_bucket(BUCKET)
    for number in sorted({int(x) for x in args.scenarios.split(",")}):
        sc = scenarios(args.objects, args.big_mb)[number]
        for key, size in sc.objects():
            if size >= 64 * MiB:  # as the S3 seeding does: uploaded in parts (an ETag that is not an MD5)
                server.put_multipart(BUCKET, key, os.urandom(size), part_size=64 * MiB)
            else:
                server.put(BUCKET, key, os.urandom(size))
            server._buckets[BUCKET].objects[key].crc  # computed now, not during the first measured GET
    server.start()
    # The server keeps a record of every request for the tests; a benchmark's millions would only grow it.
    type(server).requests = property(lambda self: [], lambda self, value: None)
    type(server).starts = property(lambda self: [], lambda self, value: None)
    print("ready", server.endpoint, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Event().wait()


if __name__ == "__main__":
    main()
