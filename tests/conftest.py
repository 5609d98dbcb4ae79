"""Shared fixtures: one Prefect test server, one moto S3 server and one OSS-protocol server per session (per
worker under pytest-xdist), started on first use; and the download CLI, run the way a test asks: on the core
alone (--no-prefect) or as a Prefect flow run."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import inspect
import os
import shutil
import socket
import sqlite3
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


def has_ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (IPv6 tests run where it can)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrated_prefect_db(tmp_path_factory, dest: Path) -> Path:
    """A copy at `dest` of a SQLite database with Prefect's migrations applied. The template is made once per
    session (under pytest-xdist the first worker to ask makes it under a lock, the others wait): each server the
    suite starts on a copy skips the ~7 s of CPU its migrations cost (one per xdist worker)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    template = root / "prefect-migrated.db"
    with open(root / "prefect-migrated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            partial = root / "prefect-migrating.db"
            for left in root.glob("prefect-migrating.db*"):  # from a worker that failed here before
                left.unlink()
            env = dict(os.environ, PREFECT_HOME=str(root / "prefect-migrating-home"),
                       PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{partial}")
            done = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env,
                                  capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, done.stdout + done.stderr
            with contextlib.closing(sqlite3.connect(partial)) as db:  # all in the main file: the copy takes it alone
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            partial.rename(template)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, dest)
    return dest


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect server for the whole session, on a copy of the migrated database; yields its API URL (for
    subprocesses) and points this process's Prefect client at it."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings
    db = migrated_prefect_db(tmp_path_factory, tmp_path_factory.mktemp("prefect-api") / "prefect.db")
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}):
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=120)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
            drain_prefect_workers()  # logs and events this process still holds go out before the server stops
    finally:
        server.stop()


def drain_prefect_workers() -> None:
    """What Prefect's own test harness does before it stops its server (this fixture replaces the harness to
    choose the server's database): flush the API log and events workers, or they print 'Error logging to API'."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain():
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # the worker never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result
    run_coro_as_sync(drain())


class MotoStore(MotoS3):
    """moto's S3 server, and a quick way to fill a bucket for listing tests: straight into the server's own
    (in-process) backend, ~100 times faster than a PUT each over HTTP. What the tests exercise — listings
    and GETs — still goes over HTTP."""

    def put_many(self, bucket: str, objects: dict[str, bytes]) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key, data in objects.items():
            backend.put_object(bucket, key, data)


@pytest.fixture(scope="session")
def s3():
    with MotoStore() as server:
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

    def put_many(self, bucket: str, objects: dict[str, bytes]) -> None:
        for key, data in objects.items():
            self.server.put(bucket, key, data)


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


class Cli:
    """`python -m flows.download` the way a test runs it: as a flow run on the session's Prefect server
    (`prefect_api`), or on the core alone (--no-prefect: the same rounds, manifest, summary, CSV and exit
    codes, ~3 s less per launch)."""

    def __init__(self, prefect_api: str | None):
        self.prefect_api = prefect_api

    @property
    def prefect(self) -> bool:
        return self.prefect_api is not None

    def command(self, args: list[str], **env) -> tuple[list[str], dict]:
        env = dict(os.environ, **env)
        if self.prefect:
            env["PREFECT_API_URL"] = self.prefect_api
        else:
            args = [*args, "--no-prefect"]
        return [sys.executable, "-m", "flows.download", *args], env

    def __call__(self, args: list[str], timeout: float = 240, **env) -> subprocess.CompletedProcess:
        command, env = self.command(args, **env)
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self, args: list[str], **popen) -> subprocess.Popen:
        command, env = self.command(args)
        return subprocess.Popen(command, cwd=ROOT, env=env, **popen)


@pytest.fixture
def via(request) -> str:
    """How a test runs the download CLI: "core" (--no-prefect) unless parametrized (indirectly) "prefect"."""
    return getattr(request, "param", "core")


@pytest.fixture
def cli(request, via) -> Cli:
    """The download CLI, run the test's way (`via`); the session's Prefect server is started only for a test
    that runs it through Prefect."""
    return Cli(request.getfixturevalue("prefect_api") if via == "prefect" else None)


@pytest.fixture
def prefect_cli(prefect_api) -> Cli:
    """The download CLI as a flow run on the session's Prefect server (Prefect-specific behaviour)."""
    return Cli(prefect_api)


def flow_run_states(output: Path) -> list[str]:
    """State types of the session server's flow runs whose parameters name this output folder."""
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return [run.state.type.value for run in runs if run.parameters.get("params", {}).get("output") == str(output)]


# Under pytest-xdist (make test: --dist loadfile --no-loadscope-reorder) each file runs whole in one worker, in
# the order collected, and a worker near the end of its file is already given the next one. So the files that take
# longest (--durations: their own servers and workers, real waits) go first, the test_prefect_ops pair ahead of
# all, then the middling ones, so that what queues behind the pair is short. Only the order changes.
LONG_FIRST = ["tests/test_prefect_ops.py", "tests/test_prefect_scheduling.py", "tests/test_dist.py",
              "tests/test_download.py", "tests/test_bench_smoke.py", "tests/test_feishu.py",
              "tests/test_real_networks.py",
              "tests/test_bridge.py", "tests/test_desktop.py", "tests/test_integrity.py", "tests/test_terminal.py"]


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: every worker sorts its collection the same way
        rank = {path: i for i, path in enumerate(LONG_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_FIRST)))


# -- system programs some tests drive -------------------------------------------------------------------------------
# Debian packages, as README "Tests" says to install them; `make test` installs the missing ones when it can (root or
# passwordless sudo), .ci/run always. A test whose program is missing is skipped with one line naming the package and
# this install line; with OSSDL_REQUIRE_SYSTEM=1 (.ci/run) it fails instead, so CI never skips one.
SYSTEM_PACKAGES = "chromium xvfb xdotool x11-apps python3-tk fonts-wqy-microhei postgresql strace faketime openssl"
REQUIRE_SYSTEM = "OSSDL_REQUIRE_SYSTEM"


def find_program(name: str, *alternatives: str) -> str | None:
    """Where a system program is: `name` or one of `alternatives`, each a program on PATH, an absolute path pattern
    (a file its package installs: /usr/lib/postgresql/*/bin/initdb, a font's folder) or `import:MODULE` (a module a
    system package gives this Python: import:_tkinter); None when none is there."""
    for candidate in (name, *alternatives):
        if candidate.startswith("import:"):
            try:
                __import__(candidate[len("import:"):])
            except ImportError:
                continue
            return candidate
        found = sorted(glob.glob(candidate))[-1:] if os.path.isabs(candidate) else [shutil.which(candidate)]
        if found and found[0]:
            return found[0]
    return None


def missing_program_line(name: str, package: str) -> str:
    return (f"{name} is not installed (Debian package {package}); the suite's system packages: "
            f"sudo apt-get install {SYSTEM_PACKAGES}")


def need_program(name: str, package: str, *alternatives: str) -> str:
    """The system program a test drives (see find_program), or the test is skipped with one line naming `package`
    and the README's install line; failed instead under OSSDL_REQUIRE_SYSTEM=1. In a test or a fixture; as a mark
    before any fixture is set up: @pytest.mark.system(name, package, *alternatives)."""
    found = find_program(name, *alternatives)
    if found is None:
        line = missing_program_line(name, package)
        if os.environ.get(REQUIRE_SYSTEM) == "1":
            pytest.fail(f"{line} ({REQUIRE_SYSTEM}=1)", pytrace=False)
        pytest.skip(line)
    return found


def pytest_configure(config):
    config.addinivalue_line("markers", "system(name, package, *alternatives): the test drives this system program "
                                       "(tests/conftest.py need_program)")


def pytest_itemcollected(item):
    """A test marked with a missing system program is skipped before its fixtures start (the skip points at it)."""
    if os.environ.get(REQUIRE_SYSTEM) == "1":
        return
    for mark in item.iter_markers("system"):
        if find_program(mark.args[0], *mark.args[2:]) is None:
            item.add_marker(pytest.mark.skip(reason=missing_program_line(*mark.args[:2])))
            return


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under OSSDL_REQUIRE_SYSTEM=1, a marked test whose program is missing fails, before its fixtures start."""
    if os.environ.get(REQUIRE_SYSTEM) != "1":
        return
    for mark in item.iter_markers("system"):
        need_program(*mark.args)
