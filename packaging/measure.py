"""Start-up costs of the executables against the Python commands, same machine, same run, interleaved:

    .venv/bin/python packaging/measure.py [--repeat 5]

- `--version`: dist/oss-download vs `python -m flows.download`
- an empty prefix on moto's S3 server: dist/oss-download vs `python -m flows.download --no-prefect`
- the desktop app until its service listens (Xvfb, when installed): dist/feishu-desktop vs
  `python -m bridge.desktop` (which imports Prefect when it is installed, to record jobs)

Wall time per run; prints the median, the fastest and the slowest of each. The executables run from a
clean environment (HOME and PATH only), as tests/test_dist.py runs them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.s3_server import ACCESS_KEY, SECRET_KEY, MotoS3  # noqa: E402

DIST = ROOT / "dist"


def timed(command: list[str], env: dict, cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-500:]}")
    return elapsed


def until_listening(command: list[str], env: dict, cwd: Path) -> float:
    """Seconds from launch to the desktop app's first `running` trace line; then it is stopped."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("{") and json.loads(line).get("event") == "running" and json.loads(line)["running"]:
                return time.perf_counter() - started
        raise SystemExit(f"{command[0]} ended without starting its service")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)


def report(name: str, seconds: list[float]) -> None:
    print(f"  {name:<52} median {statistics.median(seconds):6.2f} s   ({min(seconds):.2f}–{max(seconds):.2f},"
          f" n={len(seconds)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    if not (DIST / "oss-download").is_file():
        raise SystemExit("dist/oss-download is not built: run make dist")
    work = Path(tempfile.mkdtemp(prefix="measure-"))
    home = work / "home"
    home.mkdir()
    clean = {"HOME": str(home), "PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    python_env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, **clean,
                  "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    python = [sys.executable, "-m", "flows.download"]
    times: dict[str, list[float]] = {}
    with MotoS3() as s3:
        s3.client().create_bucket(Bucket="measure-empty")
        empty = ["--endpoint", s3.endpoint, "--bucket", "measure-empty", "--prefix", "nothing/", "--yes"]
        for i in range(repeat):  # interleaved: the machine's noise falls on both alike
            for name, command, env in (
                    ("dist/oss-download --version", [str(DIST / "oss-download"), "--version"], clean),
                    ("python -m flows.download --version", python + ["--version"], python_env),
                    ("dist/oss-download, empty prefix", [str(DIST / "oss-download"), *empty,
                                                         "--output", str(work / f"e{i}")], clean),
                    ("python -m flows.download --no-prefect, empty prefix",
                     python + ["--no-prefect", *empty, "--output", str(work / f"p{i}")], python_env)):
                times.setdefault(name, []).append(timed(command, env, ROOT))
    xvfb = None
    if (DIST / "feishu-desktop").is_file() and subprocess.run(["which", "Xvfb"], capture_output=True).returncode == 0:
        from tests.test_desktop import start_xvfb, stop_process
        xvfb, display = start_xvfb()
        try:
            for i in range(min(repeat, 3)):
                args = ["--trace", "--start", "--port", "0", "--output", str(work / f"d{i}")]
                for name, command, env in (
                        ("dist/feishu-desktop until listening", [str(DIST / "feishu-desktop"), *args],
                         {**clean, "DISPLAY": display}),
                        ("python -m bridge.desktop until listening", [sys.executable, "-m", "bridge.desktop", *args],
                         {**python_env, "DISPLAY": display})):
                    times.setdefault(name, []).append(until_listening(command, env, ROOT))
        finally:
            stop_process(xvfb)
    print(f"wall time, {os.cpu_count()} cores:")
    for name, seconds in times.items():
        report(name, seconds)
    for name in ("oss-download", "feishu-desktop"):
        if (DIST / name).is_file():
            print(f"  size of dist/{name}: {(DIST / name).stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
