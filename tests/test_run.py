"""The one runner (core/run.py), piece by piece, against the OSS-protocol server (real HTTP, signed URLs, faults
on demand): prepare, round 1, round 2 with the one retry policy, finish, and run_all over a listing. No Prefect
here: these are the pieces the flows' tasks, the plugin service and --no-prefect all call."""
from __future__ import annotations

import csv
import dataclasses
import os
import uuid

import pytest

from core import rounds, run as core_run
from core.errors import DiskFull, ListingError
from core.filters import Filter
from core.model import Plan, Settings
from core.report import CSV_HEADER
from core.sources import StoreConfig
from core.sources.oss import OssSource
from infra import oss_server


def data(key: str, size: int = 3000) -> bytes:
    return (key.encode() * (size // max(1, len(key)) + 1))[:size]


class World:
    """A bucket on the session's OSS-protocol server and runs of one output folder against it."""

    def __init__(self, oss, root):
        self.oss, self.root = oss, root
        self.bucket = "r-" + uuid.uuid4().hex[:10]
        oss.create_bucket(self.bucket)
        self.config = StoreConfig(backend="oss", bucket=self.bucket, prefix="d/", endpoint=oss.endpoint,
                                  credentials={"access_key_id": oss_server.ACCESS_KEY,
                                               "secret_access_key": oss_server.SECRET_KEY})
        self.plan = Plan(root / "out", "run-1", strip="d/", max_attempts=3, retry_backoff=0.01, label="d/")
        self.settings = Settings(concurrency=4, read_timeout=5)
        self.runs = []

    def put(self, key: str, body: bytes | None = None, **kw) -> bytes:
        body = data(key) if body is None else body
        self.oss.put(self.bucket, key, body, **kw)
        return body

    def open(self, **plan_changes) -> core_run.Run:
        (self.root / "out").mkdir(exist_ok=True)
        run = core_run.open_run(dataclasses.replace(self.plan, **plan_changes), self.settings, OssSource(self.config))
        self.runs.append(run)
        return run

    def close(self, run) -> None:
        self.runs.remove(run)
        core_run.close_run(run)

    def listed(self, run):
        return run.source.list_page(None).objects

    def gets(self, key: str) -> int:
        return self.oss.get_count(self.bucket, key)

    def failed(self, run) -> dict:
        return {row.key: row for rows in run.manifest.failed(run.plan.run_id) for row in rows}

    def files(self) -> dict[str, bytes]:
        out = self.root / "out"
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                if p.is_file() and not p.relative_to(out).parts[0].startswith(".oss")}


@pytest.fixture
def world(oss, tmp_path):
    w = World(oss, tmp_path)
    yield w
    for run in list(w.runs):
        core_run.close_run(run)
    oss.clear_faults()


def round1(run, items):
    return run.engine.run(rounds.round1(run, items))


def test_prepare_refuses_unsafe_and_archived_keys_and_skips_what_is_here(world):
    world.put("d/present.txt")
    first = world.open(run_id="run-0")
    counts, items = rounds.prepare(first, world.listed(first))
    round1(first, items)
    world.close(first)

    for key in ("d/a.jpg", "d/b.txt", "d/c/../../escape.jpg", "d/.oss-manifest.sqlite"):
        world.put(key, b"x" * 10)
    world.put("d/frozen.jpg", b"cold", storage_class="Archive")
    world.put("d/folder/", b"")
    world.put("d/skipped.gif", b"gif")
    run = world.open(filter=Filter(include=(".jpg", ".txt", ".sqlite")))
    counts, items = rounds.prepare(run, world.listed(run))
    assert (counts.listed, counts.filtered_out, counts.already_present, counts.failed, counts.restore_required) == \
        (7, 1, 1, 3, 1)
    assert [(obj.key, rel) for obj, rel in items] == [("d/a.jpg", "a.jpg"), ("d/b.txt", "b.txt")]
    refused = world.failed(run)
    assert {k: (r.last_error, r.attempts, r.retryable) for k, r in refused.items()} == {
        "d/.oss-manifest.sqlite": ("reserved name: .oss-manifest.sqlite (names starting with .oss- or .ossdl are the"
                                   " tool's)", 1, False),
        "d/c/../../escape.jpg": ("unsafe key: '..' path segment", 1, False),
        "d/frozen.jpg": ("restore required", 1, False)}
    assert run.counts.already_present == 1 and run.counts.failed == 3       # the live counts too
    assert world.gets("d/present.txt") == 1 and world.gets("d/frozen.jpg") == 0   # nothing fetched by prepare


def test_round1_tries_each_object_once_and_records_every_outcome(world):
    bodies = {key: world.put(key) for key in ("d/ok1", "d/ok2", "d/flaky", "d/denied", "d/gone")}
    world.oss.add_fault(world.bucket, "d/flaky", "status", status=503, code="SlowDown", times=1)
    world.oss.add_fault(world.bucket, "d/denied", "status", status=403, code="AccessDenied")
    world.oss.add_fault(world.bucket, "d/gone", "status", status=404, code="NoSuchKey")
    run = world.open()
    _, items = rounds.prepare(run, world.listed(run))
    counts = round1(run, items)
    assert (counts.downloaded, counts.failed, counts.bytes) == (2, 3, 6000)
    assert world.files() == {"ok1": bodies["d/ok1"], "ok2": bodies["d/ok2"]}
    assert {key: world.gets(key) for key in bodies} == dict.fromkeys(bodies, 1)
    failed = world.failed(run)
    assert {k: (r.last_error, r.attempts, r.retryable) for k, r in failed.items()} == {
        "d/denied": ("HTTP 403 AccessDenied: injected fault", 1, False),
        "d/flaky": ("HTTP 503 SlowDown: injected fault", 1, True),
        "d/gone": ("HTTP 404 NoSuchKey: injected fault", 1, False)}
    assert run.manifest.done_entries(list(bodies)).keys() == {"d/ok1", "d/ok2"}


def test_round2_takes_only_retryable_failures_with_attempts_left(world):
    for key in ("d/a-flaky", "d/b-flaky", "d/c-denied", "d/d-flaky", "d/e-ok"):
        world.put(key)
    for key in ("d/a-flaky", "d/b-flaky", "d/d-flaky"):
        world.oss.add_fault(world.bucket, key, "status", status=500, times=1)
    world.oss.add_fault(world.bucket, "d/c-denied", "status", status=403, code="AccessDenied")
    run = world.open()
    _, items = rounds.prepare(run, world.listed(run))
    round1(run, items)
    assert [row.key for row in rounds.retry_rows(run)] == ["d/a-flaky", "d/b-flaky", "d/d-flaky"]
    assert [row.key for row in rounds.retry_rows(run, "d/b", "d/c")] == ["d/b-flaky"]
    assert rounds.retry_chunks(run, size=2) == [("d/a-flaky", "d/b-flaky"), ("d/d-flaky", "d/d-flaky")]
    world.close(run)
    once = world.open(max_attempts=1)                  # the same run's rows, with no attempts left
    assert rounds.retry_rows(once) == []


def test_round2_retries_by_the_one_policy_until_success_or_max_attempts(world):
    bodies = {key: world.put(key) for key in ("d/twice", "d/always", "d/then-404", "d/denied")}
    world.oss.add_fault(world.bucket, "d/twice", "status", status=503, code="SlowDown", times=2)
    world.oss.add_fault(world.bucket, "d/always", "status", status=500, code="InternalError")
    world.oss.add_fault(world.bucket, "d/then-404", "status", status=503, code="SlowDown", times=1)
    world.oss.add_fault(world.bucket, "d/then-404", "status", status=404, code="NoSuchKey", times=1)
    world.oss.add_fault(world.bucket, "d/denied", "status", status=403, code="AccessDenied")
    run = world.open()
    _, items = rounds.prepare(run, world.listed(run))
    assert round1(run, items).failed == 4
    counts = run.engine.run(rounds.round2(run, rounds.retry_rows(run)))
    # Round 2 counts what came right out of round 1's failures: one fewer failed for each.
    assert (counts.downloaded, counts.failed, counts.retried) == (1, -1, 3)
    assert run.counts.retrying == 3 and run.counts.retried == 3
    assert world.files() == {"twice": bodies["d/twice"]}
    # 3 attempts in all for a retryable failure; a refusal that is not retryable ends the retries at once.
    assert {key: world.gets(key) for key in bodies} == {"d/twice": 3, "d/always": 3, "d/then-404": 2, "d/denied": 1}
    assert {k: (r.last_error, r.attempts) for k, r in world.failed(run).items()} == {
        "d/always": ("HTTP 500 InternalError: injected fault", 3),
        "d/denied": ("HTTP 403 AccessDenied: injected fault", 1),
        "d/then-404": ("HTTP 404 NoSuchKey: injected fault", 2)}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_finish_writes_the_csv_and_the_summary_and_keeps_partials_only_when_useful(world):
    world.put("d/ok")
    world.put("d/denied")
    world.oss.add_fault(world.bucket, "d/denied", "status", status=403, code="AccessDenied")
    run = world.open()
    counts, items = rounds.prepare(run, world.listed(run))
    counts.add(round1(run, items))
    partial, meta, ranged = (run.out.temp_name(rel, kind) for rel, kind in (("elsewhere", "part"),
                                                                           ("elsewhere", "meta"), ("big", "parts")))
    for name in (partial, meta, ranged):
        os.close(run.out.create_temp(name))
    incomplete, extra = core_run.listing_failure(run.plan, ListingError("listing failed: HTTP 500"))
    summary, first = core_run.finish(run, counts, 2.0, incomplete, extra)
    assert (summary.listed, summary.downloaded, summary.failed, summary.ok) == (2, 1, 1, False)
    assert summary.incomplete == "listing incomplete: listing failed: HTTP 500"
    assert read_csv(summary.failed_csv) == [CSV_HEADER, ["d/", "listing incomplete: listing failed: HTTP 500", "3"],
                                            ["d/denied", "HTTP 403 AccessDenied: injected fault", "1"]]
    assert first[1] == ["d/denied", "HTTP 403 AccessDenied: injected fault", 1]
    work = world.root / "out" / ".ossdl"
    assert (work / partial).exists() and (work / meta).exists()  # failures left: a partial may be resumed ...
    assert not (work / ranged).exists()                          # ... ranged parts never are

    world.oss.clear_faults()
    world.close(run)
    again = world.open(run_id="run-2")
    counts, items = rounds.prepare(again, world.listed(again))
    counts.add(round1(again, items))
    summary, first = core_run.finish(again, counts, 1.0)
    assert (summary.already_present, summary.downloaded, summary.failed, summary.ok) == (1, 1, 0, True)
    assert summary.failed_csv is None and first == [] and not (world.root / "out" / ".oss-failed.csv").exists()
    assert sorted(os.listdir(world.root / "out" / ".ossdl")) == ["lock"]    # complete: the work area cleared


def test_run_all_lists_downloads_retries_and_reports(world):
    bodies = {f"d/{i:02d}": world.put(f"d/{i:02d}", data(f"d/{i:02d}", 100 + i)) for i in range(12)}
    world.oss.add_fault(world.bucket, "d/03", "status", status=503, code="SlowDown", times=2)
    world.oss.add_fault(world.bucket, "d/07", "reset", times=1)
    world.oss.add_list_fault(world.bucket, "status", page=0, times=1, status=500, code="InternalError")
    run = world.open()
    ticks = []
    summary = core_run.run_job(run, core_run.LocalBatches(run), tick=lambda: ticks.append(run.counts.done))
    assert summary.ok and (summary.listed, summary.downloaded, summary.failed) == (12, 12, 0)
    assert world.files() == {k[2:]: v for k, v in bodies.items()}
    assert world.gets("d/03") == 3 and world.gets("d/07") == 2 and world.oss.list_count(world.bucket) == 2
    assert ticks and ticks[-1] == 12                                      # the last tick sees the end


def test_run_all_reports_an_incomplete_listing_and_keeps_what_it_got(world):
    for i in range(3):
        world.put(f"d/{i}")
    world.oss.add_list_fault(world.bucket, "status", page=None, status=503, code="SlowDown")
    run = world.open()
    summary = core_run.run_job(run, core_run.LocalBatches(run))
    assert not summary.ok and summary.incomplete.startswith("listing incomplete: listing failed after 3 attempts")
    assert read_csv(summary.failed_csv)[1:] == [["d/", summary.incomplete, "3"]]
    assert world.oss.list_count(world.bucket) == 3 and world.files() == {}


def test_a_halt_stops_every_download_of_the_run(world):
    """A full disk in one download stops the others at once: what is in flight is cancelled, nothing new
    starts (not even in a batch that comes later), and the report says why."""
    for i in range(12):
        world.put(f"d/{i:02d}")
    world.put("d/a/../unsafe")                                          # a failure: partials would be kept...
    run = world.open()
    counts, items = rounds.prepare(run, world.listed(run))
    assert counts.failed == 1

    class FullAfterTheFirst(core_run.Events):
        def outcome(self, obj, outcome):
            run.halt.trip(DiskFull(str(world.root / "out")))
    run.events = FullAfterTheFirst()
    got = round1(run, items[:10])
    run.manifest.flush()
    assert got.downloaded == 1 and len(run.manifest.done_entries([obj.key for obj, _ in items])) == 1
    # What was in flight was cancelled (a file whose bytes were already verified may still get its name,
    # unrecorded: the next run recognises it); nothing new started. In flight: the round's workers, twice
    # the concurrency (a worker whose file is being committed holds no request slot), fewer than 10.
    assert sum(world.gets(f"d/{i:02d}") for i in range(12)) <= 2 * run.engine.concurrency < 10
    assert all(body == data("d/" + rel) for rel, body in world.files().items())
    later = round1(run, items[10:])
    assert later.downloaded == later.failed == 0 and sum(world.gets(f"d/{i:02d}") for i in range(10, 12)) == 0

    partial, meta, ranged = (run.out.temp_name(rel, kind) for rel, kind in (("elsewhere", "part"),
                                                                           ("elsewhere", "meta"), ("big", "parts")))
    for name in (partial, meta, ranged):
        os.close(run.out.create_temp(name))
    summary, _ = core_run.finish(run, counts.add(got), 1.0)
    assert summary.incomplete.startswith(f"stopped: no space left on device in {world.root / 'out'}")
    assert sorted(os.listdir(world.root / "out" / ".ossdl")) == ["lock"]  # ...but not on a full disk
