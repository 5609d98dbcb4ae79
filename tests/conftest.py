"""Shared fixtures: one Prefect test server per session, one moto S3 server per session."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from infra.s3_server import ACCESS_KEY, SECRET_KEY, MotoS3  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect server for the whole session; yields its API URL for subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def s3():
    with MotoS3() as server:
        yield server


@pytest.fixture
def bucket(s3):
    name = "b-" + uuid.uuid4().hex[:12]
    s3.client().create_bucket(Bucket=name)
    yield name
    s3.clear_faults()


def run_cli(args: list[str], prefect_api: str | None = None, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """Run `python -m flows.download` as a user would; reuse the session's Prefect server when given."""
    full_env = dict(os.environ, **env)
    if prefect_api:
        full_env["PREFECT_API_URL"] = prefect_api
    return subprocess.run([sys.executable, "-m", "flows.download", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
