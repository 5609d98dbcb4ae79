"""Does the live terminal display slow downloads? The product on a pseudo-terminal (rich progress, 10
redraws/s) against the same run with output to a pipe, alternating, on the bench's SeaweedFS.

    python -m bench.redraw [--objects 5000] [--rounds 3]

Compares the summary's `time` (the whole command's) and counts the redraws.
"""
from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.seaweed import ACCESS_KEY, REGION, SECRET_KEY, Weed
from bench.seed import BUCKET, scenarios, seed

HERE = Path(__file__).resolve().parent
SECONDS = re.compile(rb"time\s+(?:(\d+) min (\d+) s|([0-9.]+) s)")


def summary_seconds(out: bytes) -> float:
    found = SECONDS.findall(out)
    if not found:
        return float("nan")
    minutes, secs, plain = found[-1]
    return float(plain) if plain else int(minutes) * 60 + int(secs)


def run_on_pty(argv: list[str], env: dict) -> tuple[bytes, float]:
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    out, started = bytearray(), time.monotonic()
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    os.waitpid(pid, 0)
    return bytes(out), time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    sc = scenarios(args.objects)[1]
    times: dict[str, list[float]] = {"tty": [], "pipe": []}
    redraws = []
    with Weed(HERE / ".data" / "weed") as weed:
        seed(weed.endpoint, sc)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_DEFAULT_REGION=REGION, PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="120", TERM="xterm")
        for _ in range(args.rounds):
            for mode in ("tty", "pipe"):
                out_dir = Path(tempfile.mkdtemp(prefix="redraw-", dir=HERE / ".data"))
                argv = [sys.executable, "-m", "flows.download", "--backend", "s3", "--endpoint", weed.endpoint,
                        "--bucket", BUCKET, "--prefix", sc.prefix, "--output", str(out_dir),
                        "--concurrency", str(args.concurrency), "--yes"]
                if mode == "tty":
                    out, _ = run_on_pty(argv, env)
                    # rich redraws the live block by moving the cursor up: one "\x1b[1A" run per frame.
                    frames = len(re.findall(rb"\r\x1b\[2K(?:\x1b\[1A\x1b\[2K)*", out))
                    command_s = summary_seconds(out)
                    redraws.append(frames / max(command_s, 1e-6))
                else:
                    res = subprocess.run(argv, env=env, capture_output=True, cwd=HERE.parent)
                    command_s = summary_seconds(res.stdout)
                files = sum(1 for p in out_dir.rglob("*.bin"))
                shutil.rmtree(out_dir, ignore_errors=True)
                if files != sc.count:
                    print(f"{mode}: only {files}/{sc.count} files", file=sys.stderr)
                    return 1
                times[mode].append(command_s)
                print(f"{mode:4}  command {command_s:6.2f} s", flush=True)
    tty, pipe = statistics.median(times["tty"]), statistics.median(times["pipe"])
    print(f"median command seconds: tty {tty:.2f}, pipe {pipe:.2f}, ratio {tty / pipe:.3f};"
          f" redraws/s (median) {statistics.median(redraws):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
