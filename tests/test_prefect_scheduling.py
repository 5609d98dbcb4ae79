"""Prefect operations the README's way, continued (tests/test_prefect_ops.py has the rest): shipped and resumed
schedules that fire, parameters a run leaves out, shards spread over two workers, a pool too small for a sharded
run, and refused parameters. On a server of its own: `ops` (`make server`, `make deploy`, two `make worker`s) is
module-scoped, so this file and test_prefect_ops.py can run side by side under pytest-xdist. Every test makes its
own objects and runs; none relies on another's."""
from __future__ import annotations

import sys
import uuid
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.conftest import ROOT
from tests.prefect_ops import artifacts_of, client_for, logs_of, run, server_errors, wait_final, wait_for
from tests.test_download import body, local_files, put, read_csv
from tests.test_prefect_ops import (SECRET, everything_recorded, ops_server, runs_of, schedule, schedule_ids,
                                    start_run, store_params)


@pytest.fixture(scope="module")
def ops(tmp_path_factory, s3):
    """The ops server, deployed from a copy of prefect.yaml with one entry more: `scheduled-e2e`, the s3-download
    entry with its parameters set (the README's first step) and its schedule every 10 s instead of nightly, still
    paused (one `make deploy PREFECT_FILE=...` for the whole file: each costs seconds of Prefect's imports)."""
    bucket = "sched-" + uuid.uuid4().hex[:8]
    s3.client().create_bucket(Bucket=bucket)
    out = tmp_path_factory.mktemp("scheduled") / "out"
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (entry,) = [dict(d) for d in config["deployments"] if d["name"] == "s3-download"]
    entry.update(name="scheduled-e2e", parameters={"params": store_params(s3, bucket, "sched/", out)},
                 schedules=[{"interval": 10, "active": False}])
    config["deployments"].append(entry)
    copy = out.parent / "prefect.yaml"
    copy.write_text(yaml.safe_dump(config))
    with ops_server(tmp_path_factory, s3, prefect_file=copy) as found:
        yield dict(found, scheduled={"bucket": bucket, "out": out})


def test_shipped_schedule_resumed_creates_runs_without_server_errors(ops):
    deployment = "object-download/s3-download"
    with client_for(ops["api"]) as client:
        assert runs_of(client, deployment) == []  # shipped paused: nothing mirrors the placeholder bucket
        (schedule_id,) = schedule_ids(ops, deployment)
        schedule(ops, "resume", deployment, schedule_id)
        try:
            created = wait_for("the scheduler to create runs", lambda: runs_of(client, deployment), timeout=60)
            shanghai = [r.expected_start_time.astimezone(ZoneInfo("Asia/Shanghai")) for r in created]
            assert all(r.auto_scheduled and r.state.is_scheduled() for r in created)
            assert all((t.hour, t.minute) == (2, 0) for t in shanghai), shanghai
            print(f"scheduler: {len(created)} runs of the nightly cron created")
        finally:
            schedule(ops, "pause", deployment, schedule_id)
        wait_for("pausing to remove the scheduled runs", lambda: not runs_of(client, deployment), timeout=30)
    server_log = (ops["logs"] / "server.log").read_text(errors="replace")
    assert "Can't evaluate bulk DML" not in server_log and not server_errors(server_log), server_errors(server_log)


def test_a_scheduled_run_executes_on_a_worker(ops, s3):
    """`scheduled-e2e` (see `ops`), resumed the README's way: its first run downloads the prefix on a worker."""
    bucket, out = ops["scheduled"]["bucket"], ops["scheduled"]["out"]
    keys = [f"sched/{i}.bin" for i in range(5)]
    for key in keys:
        put(s3, bucket, key, body(key, 2000))
    deployment = "object-download/scheduled-e2e"
    (schedule_id,) = schedule_ids(ops, deployment)
    schedule(ops, "resume", deployment, schedule_id)
    with client_for(ops["api"]) as client:
        try:  # paused once a run has left Scheduled: a run every 10 s would pile up behind a slow first one
            started = wait_for("a scheduled run to start", lambda: [
                r for r in runs_of(client, deployment) if not r.state.is_scheduled()], timeout=240, every=1)
        finally:
            schedule(ops, "pause", deployment, schedule_id)
        done = wait_final(client, started[0].id)
    assert done.auto_scheduled and done.state.is_completed(), done.state
    assert local_files(out) == {k[len("sched/"):]: body(k, 2000) for k in keys}


def test_partial_params_keep_the_deployments_other_values(ops, s3, bucket, tmp_path):
    """Only some fields of `params` (as from `prefect deployment run --params` or the API): the deployment's
    credentials_block and concurrency stay. The workers have no store credentials of their own."""
    keys = [f"partial/{i}.txt" for i in range(3)]
    for key in keys:
        put(s3, bucket, key, body(key, 500))
    out = tmp_path / "partial"
    params = {"endpoint": s3.endpoint, "bucket": bucket, "prefix": "partial/", "output": str(out)}
    started = start_run(ops, "object-download/s3-download", {"params": params})
    with client_for(ops["api"]) as client:
        done = wait_final(client, started.id)
        assert done.state.is_completed(), done.state
        assert done.parameters == {"params": params}
        kept = wait_for("the run's log line", lambda: [
            m for m in logs_of(client, done.id) if "the deployment's values kept" in m], timeout=30)
        assert "concurrency" in kept[0] and "credentials_block" in kept[0], kept
        assert SECRET not in everything_recorded(client, [done.id], ops)
    assert local_files(out) == {k[len("partial/"):]: body(k, 500) for k in keys}


def test_sharded_deployment_spreads_shards_over_two_workers(ops, s3, bucket, tmp_path):
    folders = ["a", "b", "c", "d"]
    keys = [f"big/{f}/{i:02d}.dat" for f in folders for i in range(6)] + ["big/top-level.dat"]
    for key in keys:
        put(s3, bucket, key, body(key, 3000))
        if key == "big/c/02.dat":
            s3.add_fault(bucket, key, "status", status=404, code="NoSuchKey")
        else:
            s3.add_fault(bucket, key, "delay", seconds=0.3)  # shards long enough for both workers to take some
    out = tmp_path / "sharded"
    started = start_run(ops, "sharded-download/sharded", {"params": store_params(s3, bucket, "big/", out),
                                                          "shards": 4, "poll_seconds": 1})
    with client_for(ops["api"]) as client:
        done = wait_final(client, started.id, timeout=400)
        assert done.state.is_failed() and done.state.message.startswith("1 of 25 objects failed"), done.state
        summary = {r["metric"]: r["value"] for r in artifacts_of(client, done.id)["download-summary"]}
        assert (summary["listed"], summary["downloaded"], summary["failed"]) == ("25", "24", "1")
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
        shards = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[done.id])))
    assert sorted(r.name for r in shards) == ["shard-s0", "shard-s1", "shard-s2", "shard-s3"]
    assert local_files(out) == {k[len("big/"):]: body(k, 3000) for k in keys if k != "big/c/02.dat"}
    assert read_csv(out) == [["key", "last_error", "retry_count"],
                             ["big/c/02.dat", "HTTP 404 NoSuchKey: injected fault", "1"]]
    assert sorted(p.name for p in out.glob(".oss-manifest-s*.sqlite")) == [
        f".oss-manifest-s{i}.sqlite" for i in range(4)]
    ran = {name: [str(r.id) for r in shards if str(r.id) in (ops["logs"] / f"{name}.log").read_text()]
           for name in ("worker-a", "worker-b")}
    assert ran["worker-a"] and ran["worker-b"], ran


def test_sharded_run_on_a_pool_limited_to_one_run_fails_at_once(ops, s3, bucket, tmp_path):
    """The parent runs on the pool and takes its only slot: its shards could never start, so it fails at
    once instead of waiting forever."""
    from prefect.client.schemas.actions import WorkPoolUpdate
    put(s3, bucket, "one/a/1", b"x")
    with client_for(ops["api"]) as client:
        client.update_work_pool("downloads", WorkPoolUpdate(concurrency_limit=1))
        try:
            started = start_run(ops, "sharded-download/sharded", {
                "params": store_params(s3, bucket, "one/", tmp_path / "one"), "shards": 2})
            done = wait_final(client, started.id)
        finally:
            client.update_work_pool("downloads", WorkPoolUpdate(concurrency_limit=None))
        assert done.state.is_failed(), done.state
        assert done.state.message == (
            "work pool 'downloads' runs at most 1 flow run(s) at once (this sharded run holds one of them): shards"
            " could never start; raise it (prefect work-pool set-concurrency-limit downloads N) or clear it")
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
        assert not client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[done.id])))


def test_bad_parameters_are_refused_naming_the_parameter(ops):
    prefect = [sys.executable, "-m", "prefect", "deployment", "run"]
    cases = [
        (["sharded-download/sharded", "-p", "shards=-3"],
         "Validation failed for field 'shards'. Failure reason: -3 is less than the minimum of 1"),
        (["sharded-download/sharded", "--params", '{"poll_seconds": -1}'],
         "Validation failed for field 'poll_seconds'. Failure reason: -1 is less than the minimum of 0.5"),
        (["object-download/s3-download", "--params", '{"params": {"bucket": "b", "concurrency": 0}}'],
         "Validation failed for field 'params.concurrency'. Failure reason: 0 is less than the minimum of 1"),
    ]
    with client_for(ops["api"]) as client:
        # Counted per deployment named above: other tests' runs (a shard, a scheduled run) may come and go meanwhile.
        before = {name: len(runs_of(client, name)) for name in ("sharded-download/sharded", "object-download/s3-download")}
        for argv, message in cases:
            result = run(prefect + argv, ops["env"])
            assert result.returncode == 1 and message in result.stdout + result.stderr, (argv, result.stdout)
        assert {name: len(runs_of(client, name)) for name in before} == before  # refused before any run exists
    cli = run([sys.executable, "-m", "flows.sharded", "--shards", "-3", "--bucket", "b"], ops["env"])
    assert cli.returncode == 2 and "argument --shards: invalid int from 1 to 64 value: '-3'" in cli.stderr, cli.stderr
