"""The README's PostgreSQL path: Debian's postgresql started by the test (its own cluster in a temporary folder on a
free port), `make server` on it, `make deploy`, two `make worker`s and a sharded run from the shell."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.prefect_ops import MAKE, clean_env, free_port, run, start, start_workers, stop, wait_for, wait_healthy
from tests.test_download import body, local_files, put


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


@pytest.fixture
def postgres():
    """A PostgreSQL cluster of its own: initdb in a temporary folder, trust auth on 127.0.0.1, a free port.
    Postgres refuses to run as root, so as root it runs as the `postgres` user the package creates."""
    if not pg_bin("initdb"):
        pytest.skip("Debian's postgresql is not installed (apt-get install postgresql; .ci/run does)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="prefect-pg-")
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    init = subprocess.run(as_user + [pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "prefect", "-E", "UTF8"],
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    server = subprocess.Popen(as_user + [pg_bin("postgres"), "-D", data, "-p", str(port), "-h", "127.0.0.1",
                                         "-k", folder], stdout=open(os.path.join(folder, "pg.log"), "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
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


def test_server_on_postgresql_runs_a_sharded_download_over_two_workers(postgres, s3, bucket, tmp_path):
    home = tmp_path / "prefect-home"
    logs = home / "logs"
    logs.mkdir(parents=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    fast = dict(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
    env = clean_env(home, PREFECT_API_URL=api, **fast)
    procs = [start(MAKE + ["server", f"PREFECT_PORT={port}"],
                   clean_env(home, PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres["url"]), logs / "server.log")]
    try:
        wait_healthy(api, logs / "server.log")
        deploy = run(MAKE + ["deploy", f"PREFECT_PORT={port}"],
                     dict(env, AWS_ACCESS_KEY_ID="pg-key", AWS_SECRET_ACCESS_KEY="pg-secret"))
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        start_workers(procs, ["pg-worker-a", "pg-worker-b"], port, env, logs, api)
        keys = [f"pg/{f}/{i}.dat" for f in "abcd" for i in range(4)]
        for key in keys:
            put(s3, bucket, key, body(key, 2000))
            s3.add_fault(bucket, key, "delay", seconds=0.3)  # shards long enough for both workers to take some
        out = tmp_path / "out"
        result = run([sys.executable, "-m", "flows.sharded", "--shards", "4", "--endpoint", s3.endpoint,
                      "--bucket", bucket, "--prefix", "pg/", "--output", str(out), "--credentials-block",
                      "s3-credentials", "--poll-seconds", "1"], env, timeout=400)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "downloaded        16" in result.stdout and "failed            0" in result.stdout
        assert local_files(out) == {k[len("pg/"):]: body(k, 2000) for k in keys}
    finally:
        stop(procs)
    # The runs are rows in PostgreSQL, and both workers ran shards.
    shards = subprocess.run(postgres["psql"] + ["select id from flow_run where name like 'shard-s%'"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(shards) == 4
    ran = {name: [i for i in shards if i in (logs / f"{name}.log").read_text()] for name in ("pg-worker-a", "pg-worker-b")}
    assert ran["pg-worker-a"] and ran["pg-worker-b"], ran
    assert "Traceback" not in (logs / "server.log").read_text(errors="replace")
