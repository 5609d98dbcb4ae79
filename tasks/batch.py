"""Units of work of a download run, free of Prefect: one batch of listed objects, and round 2."""
from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

from tasks.backends import Backend
from tasks.errors import DiskFull, DownloadError, as_download_error, retrying
from tasks.keys import (FAILED_CSV_NAME, MANIFEST_NAME, RemoteObject, is_folder_marker, listed_seconds, target,
                        tool_file, wanted)
from tasks.manifest import Manifest, Outcome
from tasks.transfer import UNKNOWN_SIZE, Engine, Stopped, is_md5_etag
from tasks.workarea import Output

RESTORE_REQUIRED = "restore required"


@dataclass(slots=True)
class Plan:
    """What a run selects and where it writes; shared by all batches of the run."""
    output: Path
    strip: str
    suffixes: tuple[str, ...]
    run_id: str
    max_attempts: int = 3
    retry_backoff: float = 1.0
    shard: str | None = None
    path_column: bool = False  # failure CSV also names the local path (items keyed by id)
    prefix: str = ""           # what is listed: the failure CSV's key for an incomplete listing

    @property
    def manifest_name(self) -> str:
        return tool_file(MANIFEST_NAME, self.shard)

    @property
    def failed_csv_name(self) -> str:
        return tool_file(FAILED_CSV_NAME, self.shard)


@dataclass(slots=True)
class Tally:
    """Counts of one batch, or of a whole run when added up."""
    listed: int = 0
    filtered_out: int = 0
    already_present: int = 0
    downloaded: int = 0
    failed: int = 0
    restore_required: int = 0
    bytes: int = 0
    interrupted: bool = False

    def add(self, other: "Tally") -> "Tally":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass
class Live:
    """Objects finished so far in this run, for progress displays; updated from several threads."""
    done: int = 0
    failed: int = 0
    listed: int = 0
    phase: str = "listing and downloading"
    retrying: int = 0  # round 2: objects it retries, and how many of them it has finished (either way)
    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, done: int = 0, failed: int = 0, listed: int = 0, retried: int = 0) -> None:
        with self._lock:
            self.done += done
            self.failed += failed
            self.listed += listed
            self.retried += retried


class Halt:
    """Stops every download of a run at once, from whichever batch hits the reason (a full disk): what is
    in flight is cancelled, nothing new starts."""

    def __init__(self):
        self.reason: DownloadError | None = None
        self.tasks: set[asyncio.Future] = set()

    def trip(self, reason: DownloadError) -> None:
        if self.reason is None:
            self.reason = reason
        for task in list(self.tasks):
            task.cancel()


class Run:
    """What every batch of one run shares: built once by the flow (or the plugin service). A plain class:
    Prefect walks dataclasses given to tasks, and there is nothing in here for it to find."""

    __slots__ = ("plan", "engine", "backend", "manifest", "out", "live", "halt")

    def __init__(self, plan: Plan, engine: Engine, backend: Backend, manifest: Manifest, out: Output,
                 live: Live | None = None):
        self.plan, self.engine, self.backend, self.manifest, self.out = plan, engine, backend, manifest, out
        self.live = live or Live()
        self.halt = Halt()

    def __repr__(self) -> str:
        return f"Run({self.plan.output})"


def select(objects: list[RemoteObject], plan: Plan) -> tuple[Tally, list[RemoteObject]]:
    """Drop folder markers and filtered-out keys; what is left is this run's selection."""
    tally = Tally()
    chosen = []
    for obj in objects:
        if is_folder_marker(obj.key):
            continue
        tally.listed += 1
        if wanted(obj.key, plan.suffixes):
            chosen.append(obj)
        else:
            tally.filtered_out += 1
    return tally, chosen


def not_present(manifest: Manifest, out: Output, todo: list[tuple[RemoteObject, str]]
                ) -> tuple[list[tuple[RemoteObject, str]], list[Outcome]]:
    """Split objects into those to fetch and those already here. Here means: an earlier run recorded the
    same listed version done and the local file still has the size and modification time it was left
    with (rclone's size + mtime rule); or — no record (a lost manifest, a run killed before it wrote) —
    the file has the listed size and either the store's time (we set it on every file) or its MD5.
    Returns (to fetch, outcomes recording what was recognised without a record)."""
    done = manifest.done_entries([obj.key for obj, _ in todo])
    fetch, adopted = [], []
    for obj, rel in todo:
        row = done.get(obj.key)
        st = out.stat(rel)
        size = row.size if obj.size == UNKNOWN_SIZE and row is not None else obj.size
        if st is None or st.st_size != size:
            fetch.append((obj, rel))
        elif row is not None and (row.size, row.etag) == (size, obj.etag):
            if row.mtime_ns is None or row.mtime_ns == st.st_mtime_ns:
                continue
            fetch.append((obj, rel))  # changed here since it was downloaded
        elif _same_bytes(out, rel, obj, st):
            adopted.append(Outcome(obj.key, obj.size, obj.etag, 0, path=obj.path, mtime_ns=st.st_mtime_ns))
        else:
            fetch.append((obj, rel))
    return fetch, adopted


def _same_bytes(out: Output, rel: str, obj: RemoteObject, st) -> bool:
    seconds = listed_seconds(obj.modified)
    if seconds is not None and st.st_mtime_ns // 1_000_000_000 == seconds:
        return True
    if not is_md5_etag(obj.etag):
        return False
    md5 = hashlib.md5()
    try:
        with out.open_final(rel) as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
    except (OSError, DownloadError):
        return False
    return md5.hexdigest() == obj.etag.lower()


def download_batch(run: Run, objects: list[RemoteObject]) -> Tally:
    """Round 1 for one listing page: one attempt per selected object not already present."""
    plan, live = run.plan, run.live
    tally, chosen = select(objects, plan)
    refused: list[Outcome] = []
    todo: list[tuple[RemoteObject, str]] = []
    for obj in chosen:
        try:
            rel = target(obj, plan.strip)
        except DownloadError as err:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, str(err), False, path=obj.path))
            continue
        if obj.needs_restore:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, RESTORE_REQUIRED, False, path=obj.path))
            tally.restore_required += 1
            continue
        todo.append((obj, rel))
    fresh, adopted = not_present(run.manifest, run.out, todo)
    tally.already_present = len(todo) - len(fresh)
    run.manifest.add(refused + adopted, plan.run_id)
    live.add(done=tally.already_present, failed=len(refused), listed=tally.listed)
    outcomes: list[Outcome] = []
    try:
        if fresh and run.halt.reason is None:
            run.engine.run(_fetch_all(run, fresh, outcomes))
    except Stopped:
        tally.interrupted = True
    for o in refused + outcomes:
        if o.ok:
            tally.downloaded += 1
            tally.bytes += o.bytes_fetched
        else:
            tally.failed += 1
    return tally


async def _fetch_all(run: Run, items: list[tuple[RemoteObject, str]], outcomes: list[Outcome]) -> None:
    """Fetch items concurrently, recording each outcome as it comes (the manifest writes it within a
    second). A full disk stops the whole run: in-flight downloads are cancelled, not counted as failed."""
    tasks = [asyncio.ensure_future(_attempt_once(run, obj, rel)) for obj, rel in items]
    run.halt.tasks.update(tasks)
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                outcome = await next_done
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling() or run.halt.reason is None:
                    raise  # Ctrl-C / the engine closing: what finished stays finished
                continue   # cancelled by the halt: resumes next run
            _settle(run, outcome)
            outcomes.append(outcome)
    finally:
        run.halt.tasks.difference_update(tasks)
        for task in tasks:
            task.cancel()


def _settle(run: Run, outcome: Outcome, retried: bool = False) -> None:
    run.manifest.add([outcome], run.plan.run_id)
    if retried:
        run.live.add(done=int(outcome.ok), failed=-int(outcome.ok), retried=1)
    else:
        run.live.add(done=int(outcome.ok), failed=int(not outcome.ok))


def _failure(run: Run, obj_key: str, size: int, etag: str, path: str, attempts: int, exc: BaseException) -> Outcome:
    err = as_download_error(exc, str(run.plan.output))
    if isinstance(err, DiskFull):
        run.halt.trip(err)
    return Outcome(obj_key, size, etag, attempts, str(err), err.retryable, path=path)


async def _attempt_once(run: Run, obj: RemoteObject, rel: str) -> Outcome:
    backend = run.backend
    try:
        got = await run.engine.fetch(backend.signer(obj.key), run.out, rel, obj.size, obj.etag, backend.link_expired)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row in the report
        return _failure(run, obj.key, obj.size, obj.etag, obj.path, 1, exc)
    size = got.size if obj.size == UNKNOWN_SIZE else obj.size  # a later run compares with what came
    return Outcome(obj.key, size, obj.etag, 1, bytes_fetched=got.size, path=obj.path, mtime_ns=got.mtime_ns)


def retry_failed(run: Run) -> Tally:
    """Round 2: only this run's retryable failures, with backoff, up to max_attempts in all.

    Returns the change to the run's tally (downloaded up, failed down)."""
    plan = run.plan
    run.live.phase = "round 2: retrying failed objects"
    change = Tally()
    for rows in run.manifest.failed(plan.run_id, retryable_only=True):
        rows = [r for r in rows if r.attempts < plan.max_attempts]
        if not rows or run.halt.reason is not None:
            continue
        run.live.retrying += len(rows)
        outcomes: list[Outcome] = []
        try:
            run.engine.run(_retry_all(run, rows, outcomes))
        except Stopped:
            change.interrupted = True
            break
        finally:
            for o in outcomes:
                if o.ok:
                    change.downloaded += 1
                    change.failed -= 1
                    change.bytes += o.bytes_fetched
    return change


async def _retry_all(run: Run, rows, outcomes: list[Outcome]) -> None:
    tasks = [asyncio.ensure_future(_retry_one(run, row)) for row in rows]
    run.halt.tasks.update(tasks)
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                outcome = await next_done
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling() or run.halt.reason is None:
                    raise
                continue
            _settle(run, outcome, retried=True)
            outcomes.append(outcome)
    finally:
        run.halt.tasks.difference_update(tasks)
        for task in tasks:
            task.cancel()


async def _retry_one(run: Run, row) -> Outcome:
    plan, backend = run.plan, run.backend
    attempts = row.attempts
    size = row.size
    try:
        rel = target(RemoteObject(row.key, size, row.etag, path=row.path), plan.strip)
        # Round 1 ended a moment ago; give a throttled or flapping store a breath first.
        await asyncio.sleep(plan.retry_backoff)
        async for attempt in retrying(plan.max_attempts - row.attempts, plan.retry_backoff):
            with attempt:
                attempts += 1
                got = await run.engine.fetch(backend.signer(row.key), run.out, rel, size, row.etag,
                                             backend.link_expired)
    except Exception as exc:  # noqa: BLE001
        return _failure(run, row.key, size, row.etag, row.path, attempts, exc)
    return Outcome(row.key, size, row.etag, attempts, bytes_fetched=got.size, path=row.path, mtime_ns=got.mtime_ns)


__all__ = ["Plan", "Tally", "Live", "Halt", "Run", "select", "not_present", "download_batch", "retry_failed",
           "RESTORE_REQUIRED", "UNKNOWN_SIZE"]
