"""packaging/s3_smoke.py, what .github/workflows/dist.yml runs on Windows and macOS after the build, run here against
the Linux executable: it must pass here before it can mean anything there."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.test_dist import executable


def test_the_workflows_download_check_passes_against_the_linux_executable():
    done = subprocess.run([sys.executable, str(ROOT / "packaging" / "s3_smoke.py"), str(executable("oss-download"))],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == ("ok: 9 objects downloaded byte-identical by oss-download; the second run"
                                            " fetched nothing")
