"""Prefect operations for real: `prefect server start`, deploy from prefect.yaml, process workers,
credentials in a Secret block, a sharded run split over two workers, and the flow-run page in Chromium."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_download import body, local_files, put, read_csv

SECRET = "Sup3r-Secret-Value-9f2c"
ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(api: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "OSS_"))}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on a free loopback port, two process workers, and the deployments."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = clean_env(api, home)
    prefect = str(Path(sys.executable).with_name("prefect"))
    logs = home / "logs"
    logs.mkdir()
    procs = [subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, (logs / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        setup = subprocess.run([sys.executable, "-m", "deployments.setup"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
        assert setup.returncode == 0, setup.stderr[-3000:]
        deploy = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for name in ("worker-a", "worker-b"):
            procs.append(subprocess.Popen(
                [prefect, "worker", "start", "--pool", "downloads", "--name", name, "--limit", "1"],
                cwd=ROOT, env=env, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT))
        yield {"api": api, "env": env, "logs": logs, "port": port}
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def client_for(api: str):
    from prefect.client.orchestration import SyncPrefectClient
    return SyncPrefectClient(api)


def wait_final(client, run_id, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run still {run.state.name if run.state else None}"
        time.sleep(1)


def artifact_rows(client, run_id, key):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    found = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert found, f"no {key} artifact"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def save_credentials(api, env, access_key, secret):
    code = ("from deployments.setup import save_credentials; import sys; "
            "save_credentials('s3-credentials', sys.argv[1], sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, access_key, secret], cwd=ROOT, env=env, check=True, timeout=60)


def test_parameter_form_schema():
    from prefect.utilities.callables import parameter_schema

    from flows.download import download_objects
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


def test_deployed_run_on_a_worker_with_credentials_block(server, s3, bucket, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    keys = [f"nightly/{i:02d}.bin" for i in range(12)]
    for key in keys:
        put(s3, bucket, key, body(key, 4000))
    s3.add_fault(bucket, "nightly/03.bin", "status", status=503, code="SlowDown", times=1)
    s3.add_fault(bucket, "nightly/07.bin", "status", status=403, code="AccessDenied")
    save_credentials(server["api"], server["env"], "test-access-key", SECRET)
    out = tmp_path / "mirror"
    params = {"backend": "s3", "endpoint": s3.endpoint, "bucket": bucket, "prefix": "nightly/",
              "output": str(out), "concurrency": 4, "credentials_block": "s3-credentials", "retry_backoff": 0.05}
    with temporary_settings({PREFECT_API_URL: server["api"]}):
        run = run_deployment("object-download/s3-download", parameters={"params": params}, timeout=0)
    with client_for(server["api"]) as client:
        run = wait_final(client, run.id)
        assert run.state.is_completed(), run.state
        files = local_files(out)
        assert files == {k[len("nightly/"):]: body(k, 4000) for k in keys if k != "nightly/07.bin"}
        summary = {r["metric"]: r["value"] for r in artifact_rows(client, run.id, "download-summary")}
        assert (summary["listed"], summary["downloaded"], summary["failed"]) == ("12", "11", "1")
        failures = artifact_rows(client, run.id, "download-failures")
        assert failures == [{"key": "nightly/07.bin", "last_error": "HTTP 403 AccessDenied: injected fault",
                             "retry_count": 1}]
        assert read_csv(out)[1:] == [["nightly/07.bin", "HTTP 403 AccessDenied: injected fault", "1"]]

        deployment = client.read_deployment_by_name("object-download/s3-download")
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.enforce_parameter_schema
        feishu = client.read_deployment_by_name("feishu-attachments/feishu-attachments")
        feishu_fields = feishu.parameter_openapi_schema["definitions"]["FeishuParams"]["properties"]
        assert {"app_token", "table_id", "token_block", "zip"} <= set(feishu_fields)
        assert not {"token", "personal_base_token"} & set(feishu_fields)  # the token is never a parameter

        # The secret is nowhere: parameters, logs, artifacts, server and worker output.
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        assert logs, "the run wrote no logs"
        everything = json.dumps(run.parameters) + "".join(log.message for log in logs)
        everything += json.dumps([a.data for a in client.read_artifacts()], default=str)
        everything += "".join(p.read_text(errors="replace") for p in server["logs"].iterdir())
        assert SECRET not in everything
    server["last_run"] = str(run.id)


def test_sharded_run_splits_work_over_two_workers(server, s3, bucket, tmp_path):
    folders = ["a", "b", "c", "d"]
    keys = [f"big/{f}/{i:02d}.dat" for f in folders for i in range(6)] + ["big/top-level.dat"]
    for key in keys:
        put(s3, bucket, key, body(key, 3000))
        if key == "big/c/02.dat":
            s3.add_fault(bucket, key, "status", status=404, code="NoSuchKey")
        else:
            s3.add_fault(bucket, key, "delay", seconds=0.3)  # long enough for both workers to take shards
    save_credentials(server["api"], server["env"], "test-access-key", SECRET)
    out = tmp_path / "sharded"
    env = dict(server["env"])
    result = subprocess.run(
        [sys.executable, "-m", "flows.sharded", "--shards", "4", "--endpoint", s3.endpoint, "--bucket", bucket,
         "--prefix", "big/", "--output", str(out), "--credentials-block", "s3-credentials",
         "--retry-backoff", "0.05"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert local_files(out) == {k[len("big/"):]: body(k, 3000) for k in keys if k != "big/c/02.dat"}
    assert read_csv(out) == [["key", "last_error", "retry_count"],
                             ["big/c/02.dat", "HTTP 404 NoSuchKey: injected fault", "1"]]
    assert sorted(p.name for p in out.glob(".oss-manifest-s*.sqlite")) == [
        f".oss-manifest-s{i}.sqlite" for i in range(4)]
    assert "downloaded        24" in result.stdout and "listed            25" in result.stdout

    with client_for(server["api"]) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
        shard_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_="shard-s")))
        ids = {str(r.id) for r in shard_runs if r.parameters["params"]["bucket"] == bucket}
    assert len(ids) == 4
    ran = {name: [i for i in ids if i in (server["logs"] / f"{name}.log").read_text()]
           for name in ("worker-a", "worker-b")}
    assert ran["worker-a"] and ran["worker-b"], ran


def test_flow_run_page_shows_the_artifacts_in_chromium(server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    run_id = server.get("last_run")
    assert run_id, "needs the deployed run of test_deployed_run_on_a_worker_with_credentials_block"
    ARTIFACTS.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{server['port']}/runs/flow-run/{run_id}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="networkidle")
        page.screenshot(path=str(ARTIFACTS / "flow-run-page.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("download-summary").first.wait_for(timeout=30_000)
        page.get_by_text("download-failures").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "flow-run-artifacts.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "flow-run-artifacts.png").stat().st_size > 10_000
