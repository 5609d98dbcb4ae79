"""Helpers for the tests that drive a real Prefect server the README's way (`make server`, `make deploy`,
`make worker`): processes in their own groups (stopped as a group), a loopback webhook receiver, API waits."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import ROOT, free_port  # noqa: F401 - free_port is part of these helpers

# Never let `make` rebuild the shared .venv (its .installed stamp is older than a changed pyproject.toml).
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed"]


def clean_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "OSS_", "DOWNLOAD_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="200", **extra)
    return env


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A long-running process in its own process group (make and what it starts stop together)."""
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    """Each process group in turn, the last started first: workers stop while their server still answers (a worker
    told to stop reports to it, and one whose server was gone lingered). SIGTERM, then SIGKILL for whatever of the
    group is left after 30 s: `make` exits at once, so the whole group is waited for, not only `make`."""
    for proc in reversed(procs):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(proc):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the group's leader once it has exited, or it counts as alive
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_healthy(api: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{api}/health", timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


def run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def client_for(api: str):
    from prefect.client.orchestration import SyncPrefectClient
    return SyncPrefectClient(api)


def wait_for(what: str, check, timeout: float = 240, every: float = 0.5):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def wait_final(client, run_id, timeout: float = 240):
    def final():
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None
    return wait_for(f"flow run {run_id} to finish", final, timeout)


def artifacts_of(client, run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: (json.loads(a.data) if isinstance(a.data, str) and a.type == "table" else a.data) for a in found}


def logs_of(client, run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    return [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]


def start_workers(procs: list, names: list[str], port: int, env: dict, logs: Path, api: str) -> None:
    """`make worker`s (added to `procs`), one after another: each is online before the next starts (SQLite's
    write lock makes simultaneous registrations fail with 'database is locked', which the server logs)."""
    for name in names:
        procs.append(start(MAKE + ["worker", f"PREFECT_PORT={port}", f"WORKER_NAME={name}"], env,
                           logs / f"{name}.log"))
        with client_for(api) as client:
            wait_for(f"{name} to come online", lambda: name in {
                w.name for w in client.read_workers_for_work_pool("downloads")}, timeout=120)


_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (\w+) +\| ([\w.]+) - ", re.M)
# Prefect's SQLite server reports worker registrations and heartbeats that lost a write-lock race ("database is
# locked") with a traceback, and the worker retries; a server on PostgreSQL logs none (tests/test_prefect_ops.py).
_SQLITE_WORKER_RACE = ("prefect.server.api.workers", "prefect.server.utilities.worker_channel")


def server_errors(log: str) -> list[str]:
    """The server log's error records and tracebacks, except SQLite lock races of worker bookkeeping."""
    starts = [m.start() for m in _RECORD.finditer(log)] + [len(log)]
    records = [log[a:b] for a, b in zip(starts, starts[1:])]
    found = [r for r in records if _RECORD.match(r).group(1) in ("ERROR", "CRITICAL") or "Traceback" in r]
    found += [log[:starts[0]]] if "Traceback" in log[:starts[0]] else []
    return [r for r in found if not (_RECORD.match(r) and _RECORD.match(r).group(2) in _SQLITE_WORKER_RACE
                                     and "database is locked" in r)]


class Receiver:
    """A loopback HTTP endpoint recording every POST body (the alert webhook's target)."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's spelling
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


@contextlib.contextmanager
def postgres_cluster():
    """A PostgreSQL cluster of its own (Debian's postgresql): initdb in a temporary folder, trust auth on
    127.0.0.1, a free port, one database `prefect`. Postgres refuses to run as root, so as root it runs as the
    `postgres` user the package creates. Yields the server's URL for Prefect and a psql command on it."""
    assert pg_bin("initdb"), "Debian's postgresql is not installed (apt-get install postgresql; .ci/run does)"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="prefect-pg-")
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    init = subprocess.run(as_user + [pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "prefect", "-E", "UTF8"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise AssertionError(init.stdout + init.stderr)
    with open(os.path.join(folder, "pg.log"), "w") as log:
        server = subprocess.Popen(as_user + [pg_bin("postgres"), "-D", data, "-p", str(port), "-h", "127.0.0.1",
                                             "-k", folder], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "-d", "postgres", "-tAc"]
        wait_for("postgres to accept connections", lambda: subprocess.run(
            psql + ["select 1"], capture_output=True).returncode == 0, timeout=60)
        subprocess.run(psql + ["create database prefect"], check=True, capture_output=True)
        yield {"url": f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect",
               "psql": psql[:-3] + ["-d", "prefect", "-tAc"]}
    finally:
        os.killpg(server.pid, signal.SIGINT)  # fast shutdown
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
