"""End to end against real HTTP servers — moto's S3 server (boto3 backend) and the OSS-protocol server (oss2
backend): the CLI as users run it, and the flow's artifacts.

Tests marked `both` run once per backend, on the core alone (--no-prefect); tests marked `both_ways` run the
S3 case as a Prefect flow run (list-page, download-batch and retry-failed tasks, the flow run's final state)
and the OSS case on the core alone: each backend and each path once."""
from __future__ import annotations

import csv
import json
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import flow_run_states, run_cli

TRICKY = ["space name.txt", "plus+sign.txt", "percent%41.txt", "hash#tag.txt", "ünï/cödé 文件.txt",
          "q?mark.txt", "amp&eq=.txt"]


def body(key: str, size: int | None = None) -> bytes:
    size = size if size is not None else int(hashlib.md5(key.encode()).hexdigest()[:4], 16) % 3000
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def put(store, bucket, key, data=None):
    store.client().put_object(Bucket=bucket, Key=key, Body=body(key) if data is None else data)


def put_many(store, bucket, keys, size=None):
    """Many objects at once (listing tests), each with its `body`."""
    store.put_many(bucket, {key: body(key, size) for key in keys})


both = pytest.mark.parametrize("store", ["s3", "oss"], indirect=True)
both_ways = pytest.mark.parametrize("store, via", [("s3", "prefect"), ("oss", "core")], indirect=True)


def args(store, bucket, out, *extra, prefix="data/"):
    return ["--backend", store.backend, "--endpoint", store.endpoint, "--bucket", bucket, "--prefix", prefix, "--output", str(out),
            "--concurrency", "8", "--retry-backoff", "0.05", "--yes", *extra]


def read_csv(out: Path) -> list[list[str]]:
    with open(out / ".oss-failed.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def local_files(out: Path) -> dict[str, bytes]:
    """The downloaded files: everything but the tool's own (.oss-* files, the .ossdl/ work area)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".oss") for part in p.relative_to(out).parts)}


def leftovers(out: Path) -> list[str]:
    """Temp or partial files left in the work area (the lock file is always there)."""
    work = out / ".ossdl"
    return sorted(p.name for p in work.iterdir() if not p.name.startswith("lock")) if work.exists() else []


@both_ways
def test_pagination_tricky_keys_ranged_object_and_unsafe_keys(store, bucket, tmp_path, cli):
    pages = [f"data/page/{i:04d}.bin" for i in range(1005)]
    put_many(store, bucket, pages)
    expected = {key[len("data/"):]: body(key) for key in pages}
    for key in [f"data/{k}" for k in TRICKY]:
        put(store, bucket, key)
        expected[key[len("data/"):]] = body(key)
    put(store, bucket, "data/empty.txt", b"")
    expected["empty.txt"] = b""
    big = os.urandom(24 * 1024 * 1024)
    put(store, bucket, "data/large/big.bin", big)
    expected["large/big.bin"] = big
    put(store, bucket, "data/folder/", b"")        # folder marker: skipped silently
    put(store, bucket, "data/../escape.txt", b"x")  # never written outside --output
    put(store, bucket, "data/a//b.txt", b"x")
    put(store, bucket, "data/conflict", b"file")    # both a file and a folder: one of them fails
    put(store, bucket, "data/conflict/inner.txt", b"inner")
    put(store, bucket, "other/not-selected.txt", b"x")

    out = tmp_path / "out"
    result = cli(args(store, bucket, out))
    assert result.returncode == 1, result.stderr[-3000:]
    files = local_files(out)
    for rel, data in expected.items():
        assert files[rel] == data, rel
    assert not (tmp_path / "escape.txt").exists() and not any("escape" in k for k in files)
    assert "folder" not in files and (out / "folder").is_dir() is False
    assert store.get_count(bucket, "data/large/big.bin") >= 3  # fetched as parallel ranged parts

    rows = read_csv(out)
    assert rows[0] == ["key", "last_error", "retry_count"]
    by_key = {r[0]: r for r in rows[1:]}
    assert by_key["data/../escape.txt"] == ["data/../escape.txt", "unsafe key: '..' path segment", "1"]
    assert by_key["data/a//b.txt"] == ["data/a//b.txt", "unsafe key: empty path segment", "1"]
    conflict = [k for k in by_key if k.startswith("data/conflict")]
    assert len(conflict) == 1 and "file/folder conflict" in by_key[conflict[0]][1]
    assert by_key[conflict[0]][2] == "1"
    assert len(rows) == 1 + 3
    assert "listed            " in result.stdout and "failures listed in" in result.stdout
    assert leftovers(out) == []


@both_ways
def test_faults_two_rounds_and_exact_csv(store, bucket, tmp_path, cli):
    keys = ["data/f/ok503", "data/f/always500", "data/f/denied", "data/f/reset", "data/f/trunc", "data/f/slow",
            "data/f/fine"]
    for key in keys:
        put(store, bucket, key, body(key, 20000))
    store.add_fault(bucket, "data/f/ok503", "status", status=503, code="SlowDown", times=1)
    store.add_fault(bucket, "data/f/always500", "status", status=500, code="InternalError")
    store.add_fault(bucket, "data/f/denied", "status", status=403, code="AccessDenied")
    store.add_fault(bucket, "data/f/reset", "reset", times=1)
    store.add_fault(bucket, "data/f/trunc", "truncate", times=1)
    store.add_fault(bucket, "data/f/slow", "delay", seconds=1.5, times=1)

    out = tmp_path / "out"
    result = cli(args(store, bucket, out, "--read-timeout", "0.5"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert read_csv(out) == [
        ["key", "last_error", "retry_count"],
        ["data/f/always500", "HTTP 500 InternalError: injected fault", "3"],
        ["data/f/denied", "HTTP 403 AccessDenied: injected fault", "1"],
    ]
    files = local_files(out)
    for key in ["data/f/ok503", "data/f/reset", "data/f/trunc", "data/f/slow", "data/f/fine"]:
        assert files[key[len("data/"):]] == body(key, 20000), key
    assert store.get_count(bucket, "data/f/always500") == 3
    assert store.get_count(bucket, "data/f/denied") == 1
    assert store.get_count(bucket, "data/f/fine") == 1

    # The store recovers: a rerun fetches only what failed and removes the CSV.
    store.clear_faults()
    again = cli(args(store, bucket, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (out / ".oss-failed.csv").exists()
    assert store.get_count(bucket, "data/f/fine") == 0
    assert store.get_count(bucket, "data/f/always500") == 1 and store.get_count(bucket, "data/f/denied") == 1


@both
def test_max_attempts_one_means_no_round_two(store, bucket, tmp_path, cli):
    put(store, bucket, "data/x", b"x" * 100)
    store.add_fault(bucket, "data/x", "status", status=503, code="SlowDown", times=1)
    result = cli(args(store, bucket, tmp_path, "--max-attempts", "1"))
    assert result.returncode == 1
    assert read_csv(tmp_path)[1] == ["data/x", "HTTP 503 SlowDown: injected fault", "1"]


@both_ways
def test_filter_dry_run_and_resume_without_refetch(store, bucket, tmp_path, cli):
    for key in ["data/a.JPG", "data/b.png", "data/c.txt", "data/d/e.jpg"]:
        put(store, bucket, key)
    out = tmp_path / "out"

    preview = cli(args(store, bucket, out, "--dry-run", "--include-suffix", ".jpg,.PNG"))
    assert preview.returncode == 0, preview.stderr[-3000:]
    assert "Preview: 3 objects" in preview.stdout and "1 filtered out" in preview.stdout
    assert "data/d/e.jpg" in preview.stdout
    assert not local_files(out)
    assert store.get_count(bucket, "data/a.JPG") == 0

    first = cli(args(store, bucket, out, "--include-suffix", ".jpg,.PNG"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(local_files(out)) == ["a.JPG", "b.png", "d/e.jpg"]

    # Rerun: nothing refetched; a changed object and a deleted local file are fetched again.
    put(store, bucket, "data/b.png", b"changed")
    (out / "d" / "e.jpg").unlink()
    store.clear_faults()
    second = cli(args(store, bucket, out, "--include-suffix", ".jpg,.png"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert store.get_count(bucket, "data/a.JPG") == 0
    assert store.get_count(bucket, "data/b.png") == 1 and store.get_count(bucket, "data/d/e.jpg") == 1
    assert (out / "b.png").read_bytes() == b"changed"
    assert "already present   1" in second.stdout


@both
def test_kill_9_mid_run_then_rerun_is_byte_identical(store, bucket, tmp_path, cli):
    keys = [f"data/k/{i:03d}.bin" for i in range(60)]
    for key in keys:
        put(store, bucket, key, body(key, 50_000))
        store.add_fault(bucket, key, "delay", seconds=0.15)
    big = os.urandom(20 * 1024 * 1024)
    put(store, bucket, "data/k/big.bin", big)
    out = tmp_path / "out"
    proc = cli.start(args(store, bucket, out, "--concurrency", "3"), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list((out / "k").glob("*.bin"))) < 10:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 10 <= len(list((out / "k").glob("*.bin"))) < 61, "the run was not interrupted mid-way"

    store.clear_faults()
    result = cli(args(store, bucket, out))
    assert result.returncode == 0, result.stderr[-3000:]
    files = local_files(out)
    assert files == {**{k[len("data/"):]: body(k, 50_000) for k in keys}, "k/big.bin": big}
    assert leftovers(out) == []


@both_ways
def test_ctrl_c_exits_130_and_the_same_command_resumes(store, bucket, tmp_path, cli):
    keys = [f"data/c/{i:03d}" for i in range(40)]
    for key in keys:
        put(store, bucket, key, body(key, 1000))
        store.add_fault(bucket, key, "delay", seconds=0.2)
    out = tmp_path / "out"
    proc = cli.start(args(store, bucket, out, "--concurrency", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list(out.glob("c/*"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # a hang guard, not a timing assert (the machine may be loaded)
    assert proc.returncode == 130, err[-3000:]
    assert "resumes" in err and "Traceback" not in err
    if cli.prefect:
        assert flow_run_states(out) == ["CRASHED"]
    store.clear_faults()
    result = cli(args(store, bucket, out))
    assert result.returncode == 0
    assert local_files(out) == {k[len("data/"):]: body(k, 1000) for k in keys}


def test_requests_in_flight_never_exceed_concurrency(store, bucket, tmp_path, cli):
    for i in range(30):
        put(store, bucket, f"data/p/{i}", b"x" * 10)
        store.add_fault(bucket, f"data/p/{i}", "delay", seconds=0.2)
    store.injector.max_in_flight = 0
    result = cli(args(store, bucket, tmp_path, "--concurrency", "4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert store.max_in_flight == 4


@pytest.mark.parametrize("extra, message", [
    (["--backend", "gcs"], "invalid choice"),
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "257"], "--concurrency"),
    (["--concurrency", "many"], "invalid int value"),
    (["--max-attempts", "0"], "--max-attempts"),
])
def test_bad_flags_exit_2(store, bucket, tmp_path, extra, message):
    result = run_cli(args(store, bucket, tmp_path) + extra)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_prefect_api_that_does_not_answer_is_named_in_one_line(s3, bucket, tmp_path):
    """Nothing was tried, so not exit 1 ("some objects failed"): exit 2, naming the setting and the way out."""
    s3.client().put_object(Bucket=bucket, Key="data/a", Body=b"a")
    import socket
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
    result = run_cli(args(s3, bucket, tmp_path), PREFECT_API_URL=url)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the Prefect API at {url} (PREFECT_API_URL) does not"
                                                    " answer") and lines[0].endswith("--no-prefect")
    assert not (tmp_path / "a").exists()


def test_bad_input_gives_one_line_and_exit_2(store, bucket, tmp_path):
    cases = [
        (["--output", str(tmp_path)], "--bucket is required"),
        (["--endpoint", store.endpoint, "--bucket", "no-such-bucket-here", "--output", str(tmp_path)], "not found"),
        (["--endpoint", "http://127.0.0.1:9", "--bucket", bucket, "--output", str(tmp_path)], "cannot reach"),
        (["--endpoint", store.endpoint, "--bucket", bucket, "--output", "/proc/forbidden"], "not writable"),
    ]
    for argv, message in cases:
        result = run_cli(argv + ["--yes"])
        assert result.returncode == 2, (argv, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_flow_publishes_summary_and_failure_artifacts(store, bucket, tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.download import download_objects
    from flows.params import DownloadParams

    for i in range(5):
        put(store, bucket, f"data/{i}.txt", b"x" * 1000)
    store.add_fault(bucket, "data/3.txt", "status", status=404, code="NoSuchKey")
    params = DownloadParams(endpoint=store.endpoint, bucket=bucket, prefix="data/", output=str(tmp_path),
                            retry_backoff=0.01)
    state = download_objects(params, return_state=True)
    assert state.is_failed() and state.message == f"1 of 5 objects failed: see {tmp_path / '.oss-failed.csv'}"
    summary = state.result(raise_on_failure=False).summary
    assert (summary.downloaded, summary.failed, summary.bytes) == (4, 1, 4000)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    assert {"download-summary", "download-failures", "download-failed-csv", "download-progress"} <= set(by_key)
    table = by_key["download-summary"].data
    rows = dict((r["metric"], r["value"]) for r in (json.loads(table) if isinstance(table, str) else table))
    assert rows["downloaded"] == "4" and rows["failed"] == "1" and rows["listed"] == "5"
    failures = by_key["download-failures"].data
    failures = json.loads(failures) if isinstance(failures, str) else failures
    assert failures == [{"key": "data/3.txt", "last_error": "HTTP 404 NoSuchKey: injected fault", "retry_count": 1}]
    assert (tmp_path / ".oss-failed.csv").as_uri() in by_key["download-failed-csv"].data
    assert by_key["download-progress"].data == 100.0


def test_the_work_area_goes_when_nothing_in_it_can_be_resumed(s3, bucket, tmp_path):
    """At the end of a run what cannot be resumed is removed, and the work area with its lock when that leaves it
    empty — after a complete run, and after one whose failures left nothing to resume (a Feishu user's
    attachment folder stays clean); a resumable partial file keeps it."""
    put_many(s3, bucket, ["data/a", "data/b"], size=3000)
    s3.add_fault(bucket, "data/b", "status", status=403, code="AccessDenied")
    out = tmp_path / "out"
    failed = run_cli(args(s3, bucket, out, "--no-prefect"))
    assert failed.returncode == 1 and not (out / ".ossdl").exists()
    s3.clear_faults()
    put_many(s3, bucket, ["data/big"], size=600_000)
    s3.add_fault(bucket, "data/big", "truncate")  # half the body: a partial file the next run resumes
    cut = run_cli(args(s3, bucket, out, "--no-prefect", "--max-attempts", "1"))
    assert cut.returncode == 1 and sorted(p.suffix for p in (out / ".ossdl").iterdir()) == ["", ".meta", ".part"]
    s3.clear_faults()
    done = run_cli(args(s3, bucket, out, "--no-prefect"))
    assert done.returncode == 0 and not (out / ".ossdl").exists()
