"""Prefect operations the README's way, on a real server on PostgreSQL (the README's choice beyond a couple of
workers): `make server` on a free port, `make deploy` from prefect.yaml, two `make worker`s, runs with failed
objects ending Failed and alerting a webhook, the failure CSV linked from the UI, one run of a deployment at a
time, shards that cannot start, a sharded run from the shell, credentials blocks, and the flow-run page in
Chromium. Schedules, sharded deployments and refused parameters are in test_prefect_scheduling.py, on a server of
their own on SQLite (`make server`'s default; `ops` is per module), so that pytest-xdist runs the two files side
by side. Every test makes its own objects and runs; none relies on another's."""
from __future__ import annotations

import contextlib
import csv
import json
import re
import subprocess
import sys
import urllib.request
import uuid

import pytest

from tests.conftest import ROOT, need_program
from tests.prefect_ops import (MAKE, Receiver, artifacts_of, clean_env, client_for, free_port, logs_of,
                               postgres_cluster, run, start, start_workers, stop, wait_final, wait_for, wait_healthy)
from tests.test_download import body, local_files, put, read_csv

SECRET = "Sup3r-Secret-Value-9f2c"
ARTIFACTS = ROOT / "tests" / "artifacts"
DEPLOYMENTS = {"object-download/s3-download", "object-download/oss-nightly-mirror", "object-download/shard",
               "sharded-download/sharded", "feishu-attachments/feishu-attachments"}


@contextlib.contextmanager
def ops_server(tmp_path_factory, s3, prefect_file=None, database_url=None):
    """`make server` on a free port (its first start: SQLite in a new PREFECT_HOME, or `database_url` as
    PREFECT_SERVER_DATABASE_CONNECTION_URL, as the README says), `make deploy` with credentials, an alert webhook
    and a reports bucket in the environment, and two `make worker`s (without store credentials of their own: runs
    use the blocks). `prefect_file`: deploy that file instead of prefect.yaml (`make deploy PREFECT_FILE=...`)."""
    home = tmp_path_factory.mktemp("prefect-home")
    logs = home / "logs"
    logs.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    receiver = Receiver()
    reports = "reports-" + uuid.uuid4().hex[:8]
    s3.client().create_bucket(Bucket=reports)
    fast = dict(PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1", PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_WORKER_PREFETCH_SECONDS="1", PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
    # The server's shell has no PREFECT_API_URL: its UI must still talk to PREFECT_PORT, not 4200.
    server_env = clean_env(home, **fast, **({"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url}
                                            if database_url else {}))
    # Every client here (the CLI, make deploy, the workers, their flow runs) retries a 503 seven times, not five:
    # a SQLite server under load answers 503 while writers contend for its lock (README: PostgreSQL).
    env = clean_env(home, PREFECT_API_URL=api, PREFECT_CLIENT_MAX_RETRIES="7", **fast)
    deploy_env = dict(env, AWS_ACCESS_KEY_ID="test-access-key", AWS_SECRET_ACCESS_KEY=SECRET,
                      OSS_ACCESS_KEY_ID="oss-key-id", OSS_ACCESS_KEY_SECRET="oss-" + SECRET,
                      DOWNLOAD_ALERT_WEBHOOK_URL=receiver.url, DOWNLOAD_REPORTS_BUCKET=reports,
                      DOWNLOAD_REPORTS_ENDPOINT=s3.endpoint)
    procs = [start(MAKE + ["server", f"PREFECT_PORT={port}"], server_env, logs / "server.log")]
    try:
        wait_healthy(api, logs / "server.log")
        deploy = run(MAKE + ["deploy", f"PREFECT_PORT={port}"] + ([f"PREFECT_FILE={prefect_file}"] if prefect_file else []),
                     deploy_env)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        worker_env = dict(env, PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK="s3-bucket/download-reports")
        start_workers(procs, ["worker-a", "worker-b"], port, worker_env, logs, api)
        yield {"api": api, "env": env, "deploy_env": deploy_env, "logs": logs, "port": port, "home": home,
               "receiver": receiver, "reports": reports, "deploy": deploy.stdout}
    finally:
        stop(procs)
        receiver.close()


@pytest.fixture(scope="module")
def ops(tmp_path_factory, s3):
    need_program("/usr/lib/postgresql/*/bin/initdb", "postgresql")
    with postgres_cluster() as postgres, ops_server(tmp_path_factory, s3, database_url=postgres["url"]) as found:
        yield dict(found, psql=postgres["psql"])


def everything_recorded(client, run_ids, ops) -> str:
    """Parameters, logs and artifacts of the runs, every artifact, every process log and webhook body."""
    text = ""
    for run_id in run_ids:
        text += json.dumps(client.read_flow_run(run_id).parameters) + "".join(logs_of(client, run_id))
    text += json.dumps([a.data for a in client.read_artifacts()], default=str)
    text += "".join(p.read_text(errors="replace") for p in ops["logs"].iterdir())
    return text + "".join(ops["receiver"].bodies)


def schedule_ids(ops, deployment: str) -> list[str]:
    listed = run([sys.executable, "-m", "prefect", "deployment", "schedule", "ls", deployment], ops["env"])
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listed.stdout)


def schedule(ops, action: str, deployment: str, schedule_id: str) -> None:
    """`prefect deployment schedule resume|pause DEPLOYMENT SCHEDULE_ID`, as the README says; a failure shows
    the server's last lines."""
    done = run([sys.executable, "-m", "prefect", "deployment", "schedule", action, deployment, schedule_id],
               ops["env"])
    server_log = (ops["logs"] / "server.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout + done.stderr + "\n--- server.log ---\n" + server_log[-4000:]


def runs_of(client, deployment: str):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    dep = client.read_deployment_by_name(deployment)
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), limit=200)


def start_run(ops, deployment: str, parameters: dict, **options):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings({PREFECT_API_URL: ops["api"]}):
        return run_deployment(deployment, parameters=parameters, timeout=0, **options)


def store_params(s3, bucket, prefix, out, **extra) -> dict:
    return {"backend": "s3", "endpoint": s3.endpoint, "bucket": bucket, "prefix": prefix, "output": str(out),
            "concurrency": 4, "credentials_block": "s3-credentials", "retry_backoff": 0.05, **extra}


def test_parameter_forms_are_described_and_bounded():
    from prefect.utilities.callables import parameter_schema

    from flows.download import download_objects
    from flows.sharded import sharded_download
    schema = parameter_schema(download_objects).model_dump()
    assert schema["required"] == ["params"]
    model = schema["definitions"]["DownloadParams"]
    props = model["properties"]
    assert model["required"] == ["bucket"]
    assert props["backend"]["enum"] == ["s3", "oss"] and props["backend"]["default"] == "s3"
    assert props["addressing_style"]["enum"] == ["auto", "path", "virtual"]
    assert props["concurrency"]["default"] == 5 and props["concurrency"]["maximum"] == 256
    assert props["max_attempts"]["default"] == 3 and props["output"]["default"] == "./downloads"
    assert all(p.get("title") for p in props.values())
    # Credentials are named by block, never passed as values.
    assert not [name for name in props if "secret" in name or "token" in name or "password" in name]

    sharded = parameter_schema(sharded_download).model_dump()["properties"]
    assert (sharded["shards"]["minimum"], sharded["shards"]["maximum"], sharded["shards"]["default"]) == (1, 64, 4)
    assert (sharded["poll_seconds"]["minimum"], sharded["poll_seconds"]["maximum"]) == (0.5, 60)
    assert sharded["start_timeout_seconds"]["minimum"] == 5
    assert all(p.get("description") for p in sharded.values()), sharded


def test_make_server_and_make_deploy(ops):
    # The UI served by `make server PREFECT_PORT=N` talks to port N.
    settings = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ops['port']}/ui-settings", timeout=10))
    assert settings["api_url"] == ops["api"]
    assert "automation 'download-failed'" in ops["deploy"]
    with client_for(ops["api"]) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        assert set(deployments) == DEPLOYMENTS
        limits = {name: d.global_concurrency_limit.limit if d.global_concurrency_limit else None
                  for name, d in deployments.items()}
        assert limits == {name: None if name == "object-download/shard" else 1 for name in DEPLOYMENTS}
        for name in ("object-download/s3-download", "object-download/oss-nightly-mirror"):
            assert [s.active for s in deployments[name].schedules] == [False], name
            assert deployments[name].enforce_parameter_schema
        blocks = {f"{b.block_type.slug}/{b.name}" for b in client.read_block_documents()}
    assert {"aws-credentials/s3-credentials", "oss-credentials/oss-credentials", "custom-webhook/download-alerts",
            "s3-bucket/download-reports"} <= blocks


def test_failed_objects_end_failed_alert_and_link_the_csv(ops, s3, bucket, tmp_path):
    keys = [f"nightly/{i:02d}.bin" for i in range(12)]
    for key in keys:
        put(s3, bucket, key, body(key, 4000))
    s3.add_fault(bucket, "nightly/03.bin", "status", status=503, code="SlowDown", times=1)
    s3.add_fault(bucket, "nightly/07.bin", "status", status=403, code="AccessDenied")
    out = tmp_path / "mirror"
    started = start_run(ops, "object-download/s3-download", {"params": store_params(s3, bucket, "nightly/", out)})
    with client_for(ops["api"]) as client:
        done = wait_final(client, started.id)
        assert done.state.is_failed() and done.state.name == "Failed", done.state
        assert done.state.message.startswith("1 of 12 objects failed"), done.state.message
        assert local_files(out) == {k[len("nightly/"):]: body(k, 4000) for k in keys if k != "nightly/07.bin"}
        assert read_csv(out)[1:] == [["nightly/07.bin", "HTTP 403 AccessDenied: injected fault", "1"]]

        artifacts = artifacts_of(client, done.id)
        summary = {r["metric"]: r["value"] for r in artifacts["download-summary"]}
        assert (summary["listed"], summary["downloaded"], summary["failed"]) == ("12", "11", "1")
        assert artifacts["download-failures"] == [
            {"key": "nightly/07.bin", "last_error": "HTTP 403 AccessDenied: injected fault", "retry_count": 1}]
        # The link leads to the full CSV in the reports bucket, over HTTP, from any browser.
        (link,) = re.findall(r"\]\((.+)\)$", artifacts["download-failed-csv"])
        assert link.startswith(f"{s3.endpoint}/{ops['reports']}/download-failures/{done.id}/"), link
        assert "X-Amz-Signature=" in link and "X-Amz-Expires=604800" in link, link
        assert urllib.request.urlopen(link, timeout=10).read() == (out / ".oss-failed.csv").read_bytes()

        # The shipped automation notified the webhook.
        alert = wait_for("the failure alert", lambda: [b for b in ops["receiver"].bodies if done.name in b],
                         timeout=120)
        sent = json.loads(alert[0])
        assert "ended Failed" in sent["subject"] and "1 of 12 objects failed" in sent["body"], sent
        assert f"/runs/flow-run/{done.id}" in sent["body"], sent
        assert SECRET not in everything_recorded(client, [done.id], ops)


def test_a_csv_that_cannot_be_uploaded_leaves_a_local_link(ops, s3, bucket, tmp_path):
    """The reports bucket is gone: the run still ends Failed with all its artifacts; the link is the local file."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.setup import aws_credentials, save_reports_bucket
    with temporary_settings({PREFECT_API_URL: ops["api"]}):
        save_reports_bucket("no-such-bucket", aws_credentials("test-access-key", SECRET, endpoint=s3.endpoint),
                            name="gone-reports")
    put(s3, bucket, "gone/ok.txt", b"ok")
    put(s3, bucket, "gone/denied.txt", b"no")
    s3.add_fault(bucket, "gone/denied.txt", "status", status=403, code="AccessDenied")
    started = start_run(ops, "object-download/s3-download", {"params": store_params(s3, bucket, "gone/", tmp_path)},
                        job_variables={"env": {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "s3-bucket/gone-reports"}})
    with client_for(ops["api"]) as client:
        done = wait_final(client, started.id)
        assert done.state.is_failed() and done.state.message.startswith("1 of 2 objects failed"), done.state
        artifacts = artifacts_of(client, done.id)
        assert {"download-summary", "download-failures"} <= set(artifacts)
        assert f"]({(tmp_path / '.oss-failed.csv').as_uri()})" in artifacts["download-failed-csv"]
        warned = wait_for("the warning", lambda: [m for m in logs_of(client, done.id) if "not uploaded" in m], 30)
    assert warned[0].startswith("failure CSV not uploaded to s3-bucket/gone-reports ("), warned


def test_runs_of_one_deployment_never_overlap(ops, s3, bucket, tmp_path):
    for i in range(3):
        put(s3, bucket, f"slow/{i}", b"x" * 100)
        s3.add_fault(bucket, f"slow/{i}", "delay", seconds=1.0)
    runs = [start_run(ops, "object-download/s3-download",
                      {"params": store_params(s3, bucket, "slow/", tmp_path / f"out{n}", concurrency=1)})
            for n in range(2)]
    with client_for(ops["api"]) as client:
        done = [wait_final(client, r.id) for r in runs]
        assert all(r.state.is_completed() for r in done), [r.state for r in done]
        spans, waited = [], []
        for r in done:
            states = client.read_flow_run_states(r.id)
            running = [s.timestamp for s in states if s.type.value == "RUNNING"]
            spans.append((min(running), max(s.timestamp for s in states)))
            waited.append(any(s.name == "AwaitingConcurrencySlot" for s in states))
    first, second = sorted(spans)
    assert first[1] <= second[0], spans  # the second started only after the first had finished
    assert any(waited), "neither run waited for the deployment's concurrency slot"


def test_shards_that_cannot_start_fail_clearly(ops, s3, bucket, tmp_path):
    """A shard deployment in a pool no worker polls: the parent gives up after start_timeout, cancels the
    waiting shards and says which; a pool whose limit leaves no slot is refused before any shard is created."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    for key in ("idle/a/1", "idle/b/1"):
        put(s3, bucket, key, b"x")
    pool = "idle-" + uuid.uuid4().hex[:6]
    with client_for(ops["api"]) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("object-download")
        client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool,
                                 entrypoint="flows/download.py:download_objects")
    out = tmp_path / "idle"
    argv = [sys.executable, "-m", "flows.sharded", "--deployment", f"object-download/{pool}", "--endpoint",
            s3.endpoint, "--bucket", bucket, "--prefix", "idle/", "--output", str(out), "--credentials-block",
            "s3-credentials", "--start-timeout", "5", "--poll-seconds", "0.5"]
    result = run(argv, ops["env"])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not start within 5 s and were cancelled: shard-s0 (Scheduled)," in errors[0]
    assert f"work pool {pool!r}" in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".oss")]
    with client_for(ops["api"]) as client:
        assert {r.state.name for r in runs_of(client, f"object-download/{pool}")} == {"Cancelled"}
        client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=0))
    refused = run(argv, ops["env"])
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: work pool {pool!r} runs at most 0 flow run(s) at once: shards could never start; raise it"
        f" (prefect work-pool set-concurrency-limit {pool} N) or clear it")


def test_sharded_run_from_the_shell_spreads_over_both_workers(ops, s3, bucket, tmp_path):
    """`python -m flows.sharded` in a shell with PREFECT_API_URL set: the parent runs here, its shards run on
    the workers (both take some), and the runs are rows in PostgreSQL."""
    server_log = ops["logs"] / "server.log"
    logged_before = len(server_log.read_text(errors="replace"))
    keys = [f"pg/{f}/{i}.dat" for f in "abcd" for i in range(4)]
    for key in keys:
        put(s3, bucket, key, body(key, 2000))
        s3.add_fault(bucket, key, "delay", seconds=0.3)  # shards long enough for both workers to take some
    out = tmp_path / "out"
    result = run([sys.executable, "-m", "flows.sharded", "--shards", "4", "--endpoint", s3.endpoint,
                  "--bucket", bucket, "--prefix", "pg/", "--output", str(out), "--credentials-block",
                  "s3-credentials", "--poll-seconds", "1"], ops["env"], timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "downloaded        16" in result.stdout and "failed            0" in result.stdout
    assert local_files(out) == {k[len("pg/"):]: body(k, 2000) for k in keys}
    literal = "'" + str(out).replace("'", "''") + "'"
    ids = subprocess.run(ops["psql"] + ["select id from flow_run where name like 'shard-s%'"
                                        f" and parameters->'params'->>'output' = {literal}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 4, ids
    ran = {name: [i for i in ids if i in (ops["logs"] / f"{name}.log").read_text()] for name in ("worker-a", "worker-b")}
    assert ran["worker-a"] and ran["worker-b"], ran
    assert "Traceback" not in server_log.read_text(errors="replace")[logged_before:]  # no lock races to excuse


def test_a_sharded_mirror_deletes_after_every_shard_listed_each_within_its_range(ops, s3, bucket, tmp_path):
    """--delete over shards (run as the object-download/shard deployment on the workers): each shard records
    what it listed; the parent deletes range by range once all have run — and nothing when one shard failed
    for a reason another run could change."""
    keys = [f"mr/{f}/{i}.dat" for f in "abcd" for i in range(2)]
    for key in keys:
        put(s3, bucket, key, body(key, 500))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "flows.sharded", "--shards", "4", "--endpoint", s3.endpoint, "--bucket", bucket,
               "--prefix", "mr/", "--output", str(out), "--credentials-block", "s3-credentials", "--poll-seconds", "1",
               "--delete", "--max-attempts", "1"]
    assert run(command, ops["env"], timeout=400).returncode == 0
    s3.client().delete_object(Bucket=bucket, Key="mr/a/0.dat")
    s3.client().delete_object(Bucket=bucket, Key="mr/c/1.dat")
    for stray in ("b/stray.txt", "d/stray.txt", "top.txt"):
        (out / stray).write_text("never in the store")
    s3.add_fault(bucket, "mr/d/0.dat", "status", status=503, code="SlowDown")  # shard of d: a retryable failure
    (out / "d" / "0.dat").unlink()
    blocked = run(command, ops["env"], timeout=400)
    assert blocked.returncode == 1 and "deletion skipped: 1 download(s) failed" in blocked.stdout, blocked.stdout
    assert (out / "a" / "0.dat").exists() and (out / "top.txt").exists()
    s3.clear_faults()
    done = run(command, ops["env"], timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "deleted           5" in done.stdout, done.stdout
    assert local_files(out) == {k[len("mr/"):]: body(k, 500) for k in keys if k not in ("mr/a/0.dat", "mr/c/1.dat")}
    with open(out / ".oss-changes.csv", newline="") as f:
        deleted = sorted(r[0] for r in csv.reader(f) if r[1] == "deleted")
    assert deleted == ["mr/a/0.dat", "mr/b/stray.txt", "mr/c/1.dat", "mr/d/stray.txt", "mr/top.txt"]


def test_credentials_blocks_typed_and_legacy(ops):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.setup import save_secret_credentials
    from tasks.credentials import load_block_credentials
    from core.errors import UsageError
    with temporary_settings({PREFECT_API_URL: ops["api"]}):
        save_secret_credentials("legacy-creds", "legacy-id", "legacy-secret", "legacy-token")
        assert load_block_credentials("legacy-creds") == {
            "access_key_id": "legacy-id", "secret_access_key": "legacy-secret", "session_token": "legacy-token"}
        assert load_block_credentials("s3-credentials") == load_block_credentials("aws-credentials/s3-credentials") \
            == {"access_key_id": "test-access-key", "secret_access_key": SECRET}
        assert load_block_credentials("oss-credentials") == {"access_key_id": "oss-key-id",
                                                             "secret_access_key": "oss-" + SECRET}
        with pytest.raises(UsageError, match="^credentials block 'nope' not found"):
            load_block_credentials("nope")
    with client_for(ops["api"]) as client:
        shown = {b.name: b.data for b in client.read_block_documents(include_secrets=False) if b.name in ("s3-credentials", "oss-credentials")}
    assert SECRET not in json.dumps(shown, default=str)  # SecretStr fields are masked by the API


def test_oss_runs_with_the_typed_block_and_a_legacy_secret_block(ops, oss, tmp_path):
    """The OSS-protocol server checks every signature: a run completes only with the block's real keys, read
    from an OSS Credentials block (SecretStr) or from the JSON Secret block of earlier versions."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.setup import save_oss_credentials, save_secret_credentials
    from infra.oss_server import ACCESS_KEY, SECRET_KEY
    bucket = "oss-" + uuid.uuid4().hex[:8]
    oss.create_bucket(bucket)
    for i in range(3):
        oss.put(bucket, f"m/{i}.txt", body(f"m/{i}.txt", 700))
    with temporary_settings({PREFECT_API_URL: ops["api"]}):
        save_oss_credentials("oss-e2e", ACCESS_KEY, SECRET_KEY)
        save_secret_credentials("oss-legacy", ACCESS_KEY, SECRET_KEY)
        save_oss_credentials("oss-wrong", ACCESS_KEY, "not-the-secret")
    with client_for(ops["api"]) as client:
        for block, completes in (("oss-e2e", True), ("oss-legacy", True), ("oss-wrong", False)):
            out = tmp_path / block
            params = {"backend": "oss", "endpoint": oss.endpoint, "bucket": bucket, "prefix": "m/",
                      "output": str(out), "credentials_block": block}
            done = wait_final(client, start_run(ops, "object-download/oss-nightly-mirror", {"params": params}).id)
            assert done.state.is_completed() is completes, (block, done.state)
            expected = {f"{i}.txt": body(f"m/{i}.txt", 700) for i in range(3)} if completes else {}
            assert local_files(out) == expected, block
        assert SECRET_KEY not in everything_recorded(client, [], ops)


@pytest.mark.system("chromium", "chromium", "chromium-browser")
def test_flow_run_page_shows_the_artifacts_in_chromium(ops, s3, bucket, tmp_path):
    chromium = need_program("chromium", "chromium", "chromium-browser")
    from playwright.sync_api import sync_playwright
    put(s3, bucket, "page/ok.txt", b"ok")
    put(s3, bucket, "page/denied.txt", b"no")
    s3.add_fault(bucket, "page/denied.txt", "status", status=403, code="AccessDenied")
    started = start_run(ops, "object-download/s3-download", {"params": store_params(s3, bucket, "page/", tmp_path)})
    with client_for(ops["api"]) as client:
        wait_final(client, started.id)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{ops['port']}/runs/flow-run/{started.id}", wait_until="networkidle")
        page.get_by_text("Failed").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "flow-run-page.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("download-summary").first.wait_for(timeout=30_000)
        page.get_by_text("download-failed-csv").first.wait_for(timeout=30_000)
        assert "Can't connect" not in page.content()
        page.screenshot(path=str(ARTIFACTS / "flow-run-artifacts.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "flow-run-artifacts.png").stat().st_size > 10_000
