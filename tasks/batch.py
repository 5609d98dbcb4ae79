"""Units of work of a download run, free of Prefect: one batch of listed objects, and round 2."""
from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from tasks.backends import Backend
from tasks.errors import DownloadError, as_download_error, is_retryable
from tasks.keys import (FAILED_CSV_NAME, MANIFEST_NAME, RemoteObject, is_folder_marker, local_path, tool_file,
                        wanted)
from tasks.manifest import Manifest, Outcome
from tasks.transfer import Engine, Stopped

RESTORE_REQUIRED = "restore required"
RECORD_EVERY = 256  # outcomes per manifest transaction: few commits, little to redo after a kill


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

    def add(self, done: int = 0, failed: int = 0, listed: int = 0) -> None:
        with self._lock:
            self.done += done
            self.failed += failed
            self.listed += listed


def _present(path: Path, size: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and not os.path.isdir(path)


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


def not_present(manifest: Manifest, todo: list[tuple[RemoteObject, Path]]) -> list[tuple[RemoteObject, Path]]:
    """The objects an earlier run has not already downloaded unchanged (same size and etag, file still there)."""
    done = manifest.done_entries([obj.key for obj, _ in todo])
    return [(obj, dest) for obj, dest in todo
            if done.get(obj.key) != (obj.size, obj.etag) or not _present(dest, obj.size)]


def download_batch(engine: Engine, backend: Backend, manifest: Manifest, plan: Plan,
                   objects: list[RemoteObject], live: Live | None = None) -> Tally:
    """Round 1 for one listing page: one attempt per selected object not already present."""
    live = live or Live()
    tally, chosen = select(objects, plan)
    refused: list[Outcome] = []
    todo: list[tuple[RemoteObject, Path]] = []
    for obj in chosen:
        try:
            dest = local_path(plan.output, obj.key, plan.strip, obj.path)
        except DownloadError as err:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, str(err), False, path=obj.path))
            continue
        if obj.needs_restore:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, RESTORE_REQUIRED, False, path=obj.path))
            tally.restore_required += 1
            continue
        todo.append((obj, dest))
    fresh = not_present(manifest, todo)
    tally.already_present = len(todo) - len(fresh)
    manifest.record(refused, plan.run_id)
    live.add(done=tally.already_present, failed=len(refused), listed=tally.listed)
    outcomes: list[Outcome] = []
    try:
        if fresh:
            engine.run(_fetch_all(engine, backend, manifest, plan, fresh, live, outcomes))
    except Stopped:
        tally.interrupted = True
    for o in refused + outcomes:
        if o.ok:
            tally.downloaded += 1
            tally.bytes += o.bytes_fetched
        else:
            tally.failed += 1
    return tally


async def _fetch_all(engine, backend, manifest, plan, items, live, outcomes: list[Outcome]) -> None:
    """Fetch items concurrently, appending to `outcomes` and recording them as they finish."""
    recorded = 0
    try:
        for next_done in asyncio.as_completed([_attempt_once(engine, backend, obj, dest) for obj, dest in items]):
            outcome = await next_done
            outcomes.append(outcome)
            live.add(done=outcome.ok, failed=not outcome.ok)
            if len(outcomes) - recorded >= RECORD_EVERY:
                manifest.record(outcomes[recorded:], plan.run_id)
                recorded = len(outcomes)
    finally:  # also on Ctrl-C: what finished stays finished
        manifest.record(outcomes[recorded:], plan.run_id)


async def _attempt_once(engine: Engine, backend: Backend, obj: RemoteObject, dest: Path) -> Outcome:
    try:
        got = await engine.fetch(backend.signer(obj.key), dest, obj.size, obj.etag, backend.link_expired)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row in the report
        err = as_download_error(exc)
        return Outcome(obj.key, obj.size, obj.etag, 1, str(err), err.retryable, path=obj.path)
    return Outcome(obj.key, obj.size, obj.etag, 1, bytes_fetched=got.size, path=obj.path)


def retry_failed(engine: Engine, backend: Backend, manifest: Manifest, plan: Plan,
                 live: Live | None = None) -> Tally:
    """Round 2: only this run's retryable failures, with backoff, up to max_attempts in all.

    Returns the change to the run's tally (downloaded up, failed down)."""
    live = live or Live()
    live.phase = "round 2: retrying failed objects"
    change = Tally()
    for rows in manifest.failed(plan.run_id, retryable_only=True):
        rows = [r for r in rows if r.attempts < plan.max_attempts]
        if not rows:
            continue
        live.retrying += len(rows)
        try:
            outcomes = engine.run(_retry_all(engine, backend, plan, rows, live))
        except Stopped:
            change.interrupted = True
            break
        manifest.record(outcomes, plan.run_id)
        for o in outcomes:
            if o.ok:
                change.downloaded += 1
                change.failed -= 1
                change.bytes += o.bytes_fetched
                live.add(done=1, failed=-1)
    return change


async def _retry_all(engine, backend, plan, rows, live: Live) -> list[Outcome]:
    async def counted(row):
        try:
            return await _retry_one(engine, backend, plan, row)
        finally:
            live.retried += 1  # only the engine's loop thread writes it
    return list(await asyncio.gather(*(counted(row) for row in rows)))


async def _retry_one(engine, backend, plan, row) -> Outcome:
    attempts = row.attempts
    dest = local_path(plan.output, row.key, plan.strip, row.path)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(plan.max_attempts - row.attempts),
        wait=wait_exponential_jitter(initial=plan.retry_backoff, max=30 * plan.retry_backoff,
                                     jitter=plan.retry_backoff),
        retry=retry_if_exception(is_retryable),
        reraise=True,  # tenacity's RetryError does not pickle
    )
    try:
        # Round 1 ended a moment ago; give a throttled or flapping store a breath first.
        await asyncio.sleep(plan.retry_backoff)
        async for attempt in retrying:
            with attempt:
                attempts += 1
                got = await engine.fetch(backend.signer(row.key), dest, row.size, row.etag, backend.link_expired)
    except Exception as exc:  # noqa: BLE001
        err = as_download_error(exc)
        return Outcome(row.key, row.size, row.etag, attempts, str(err), err.retryable, path=row.path)
    return Outcome(row.key, row.size, row.etag, attempts, bytes_fetched=got.size, path=row.path)
