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

from infra import oss_server  # noqa: E402
from infra.s3_server import ACCESS_KEY, SECRET_KEY, MotoS3  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
                  OSS_ACCESS_KEY_ID=oss_server.ACCESS_KEY, OSS_ACCESS_KEY_SECRET=oss_server.SECRET_KEY)
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "OSS_SESSION_TOKEN"):
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


class OssStore:
    """The OSS-protocol server behind the small interface the end-to-end tests use for moto's S3 server."""
    backend = "oss"

    def __init__(self, server: oss_server.OssServer):
        self.server = server

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self) -> "OssStore":
        return self

    def create_bucket(self, Bucket: str) -> None:  # noqa: N803 - boto3's spelling, so tests read the same
        self.server.create_bucket(Bucket)

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803
        self.server.put(Bucket, Key, Body)

    def add_fault(self, bucket: str, key: str, kind: str, **kwargs) -> None:
        self.server.add_fault(bucket, key, kind, **kwargs)

    def clear_faults(self) -> None:
        self.server.clear_faults()

    def get_count(self, bucket: str, key: str) -> int:
        return self.server.get_count(bucket, key)

    def add_list_fault(self, bucket: str, kind: str, **kwargs) -> None:
        self.server.add_list_fault(bucket, kind, **kwargs)

    def list_count(self, bucket: str) -> int:
        return self.server.list_count(bucket)

    def put_multipart(self, bucket: str, key: str, data: bytes, **kwargs) -> str:
        return self.server.put_multipart(bucket, key, data, **kwargs)


@pytest.fixture(scope="session")
def oss():
    with oss_server.OssServer() as server:
        yield server


@pytest.fixture
def store(request):
    """The store under test: moto's S3 server by default; `indirect` parametrization picks "oss"."""
    if getattr(request, "param", "s3") == "oss":
        return OssStore(request.getfixturevalue("oss"))
    return request.getfixturevalue("s3")


@pytest.fixture
def bucket(store):
    name = "b-" + uuid.uuid4().hex[:12]
    store.client().create_bucket(Bucket=name)
    yield name
    store.clear_faults()


def run_cli(args: list[str], prefect_api: str | None = None, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """Run `python -m flows.download` as a user would; reuse the session's Prefect server when given."""
    full_env = dict(os.environ, **env)
    if prefect_api:
        full_env["PREFECT_API_URL"] = prefect_api
    return subprocess.run([sys.executable, "-m", "flows.download", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
