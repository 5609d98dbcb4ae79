"""The work of one batch of a run, for any source: round 1 (every selected object once) and round 2 (the
retryable failures again, by the product's one retry policy). Called by the one run loop (core/run.py) through
whichever carries its batches: the engine's loop here, Prefect's tasks (tasks/units.py).

    prepare(run, objects)      select, refuse unsafe keys, recognise what is already here   (blocking I/O)
    round1(run, items)         one attempt each, on the engine's loop
    round2(run, rows)          the retryable failures again, with backoff, up to max_attempts (on the loop)
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Iterable

from core.errors import DiskFull, DownloadError, KeyClash, LocalPathError, as_download_error, retrying
from core.manifest import FailedRow
from core.model import CHANGED_IN_STORE, CHANGED_LOCALLY, NEW, UNKNOWN_SIZE, Counts, Outcome, RemoteObject
from core.paths import target
from core.selection import Item, listed_paths, not_present, select

if TYPE_CHECKING:
    from core.run import Run

RESTORE_REQUIRED = "restore required"
_COUNTER = {NEW: "new", CHANGED_IN_STORE: "changed_in_store", CHANGED_LOCALLY: "changed_locally"}


# -- round 1 ---------------------------------------------------------------------------------------
def prepare(run: Run, objects: list[RemoteObject]) -> tuple[Counts, list[Item]]:
    """A listing page's selection, minus what is refused (unsafe keys, archived objects: recorded failed)
    and what is already here (recorded done). Blocking (stat, hashing, the manifest): not on the loop."""
    plan = run.plan
    counts, chosen = select(objects, plan)
    refused: list[Outcome] = []
    todo: list[Item] = []
    listed: list[str] = []  # a mirror's: every path a listed key maps to stays, whether the filter takes it or not
    for obj in chosen:
        try:
            rel = target(obj, plan.strip)
        except DownloadError as err:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, str(err), False, path=obj.path))
            continue
        listed.append(rel)
        if obj.needs_restore:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, RESTORE_REQUIRED, False, path=obj.path))
            counts.restore_required += 1
            continue
        todo.append((obj, rel))
    if plan.delete:
        taken = {id(obj) for obj in chosen}
        run.manifest.add_listed(listed + listed_paths([o for o in objects if id(o) not in taken], plan))
    fresh, adopted, changes = not_present(run.manifest, run.out, todo)
    counts.already_present = len(todo) - len(fresh)
    for _, change, _ in changes:
        setattr(counts, _COUNTER[change], getattr(counts, _COUNTER[change]) + 1)
    if plan.report_changes:
        run.manifest.add_changes(changes, plan.run_id)
    counts.failed = len(refused)
    run.manifest.add(refused + adopted, plan.run_id)
    run.counts.add(counts)
    return counts, fresh


async def round1(run: Run, items: list[Item]) -> Counts:
    """One attempt at each item, in the order given, as many at once as the engine has requests. Returns what
    it counted; every outcome is recorded as it comes (the manifest writes it within a second)."""
    counts = Counts()
    run.source.upcoming([obj for obj, _ in items])

    async def attempt(item: Item) -> None:
        obj, rel = item
        _settle(run, counts, obj, await _attempt(run, obj, rel, 1, again=False))
    await _pool(run, items, attempt)
    return counts


async def _attempt(run: Run, obj: RemoteObject, rel: str, attempts: int, again: bool) -> Outcome:
    source = run.source
    try:
        got = await run.engine.fetch(source.signer(obj, again), run.out, rel, obj.size, obj.etag,
                                     source.link_expired, run.events.progress(obj))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row in the report
        err = as_download_error(exc, str(run.plan.output))
        if isinstance(err, DiskFull):
            run.halt.trip(err)
        local = isinstance(err, (LocalPathError, DiskFull)) and not isinstance(err, KeyClash)
        return Outcome(obj.key, obj.size, obj.etag, attempts, str(err), err.retryable, local, path=obj.path)
    size = got.size if obj.size == UNKNOWN_SIZE else obj.size  # a later run compares with what came
    return Outcome(obj.key, size, obj.etag, attempts, bytes_fetched=got.size, path=obj.path, mtime_ns=got.mtime_ns)


def _settle(run: Run, counts: Counts, obj: RemoteObject, outcome: Outcome, retried: bool = False) -> None:
    run.manifest.add([outcome], run.plan.run_id)
    ok = int(outcome.ok)
    if retried:  # a failure of round 1 came out right: one fewer failed
        change = dict(downloaded=ok, failed=-ok, bytes=outcome.bytes_fetched, retried=1)
    else:
        change = dict(downloaded=ok, failed=1 - ok, bytes=outcome.bytes_fetched)
    counts.add(**change)
    run.counts.add(**change)
    run.events.outcome(obj, outcome)


async def _pool(run: Run, items: Iterable, work) -> None:
    """Workers taking items in order until none are left. A halt cancels them; what was in flight is not
    counted (it resumes next run). Cancelled from outside (Ctrl-C, closing): cancelled."""
    todo = iter(items)

    async def worker() -> None:
        for item in todo:  # one iterator shared by the workers: each item goes to one of them
            if run.halt.reason is not None:
                return
            await work(item)
    # Twice the engine's requests in flight: a worker whose file is being committed holds no request slot,
    # and the engine's semaphore still caps the requests in flight.
    workers = [asyncio.ensure_future(worker()) for _ in range(2 * run.engine.concurrency)]
    run.halt.tasks.update(workers)
    try:
        await asyncio.gather(*workers)
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling() or run.halt.reason is None:
            raise
    finally:
        run.halt.tasks.difference_update(workers)
        for w in workers:
            w.cancel()


# -- round 2 ---------------------------------------------------------------------------------------
def retry_chunks(run: Run, size: int = 1000) -> list[tuple[str, str]]:
    """This run's retryable failures as key ranges [first, last] of at most `size` objects: round 2's units
    of work, small and serialisable (Prefect's tasks)."""
    return [(rows[0].key, rows[-1].key)
            for rows in run.manifest.failed(run.plan.run_id, retryable_only=True, chunk=size)]


def retry_rows(run: Run, first: str = "", last: str | None = None) -> list[FailedRow]:
    """The retryable failures of this run in [first, last] that have attempts left."""
    rows = []
    for chunk in run.manifest.failed(run.plan.run_id, retryable_only=True, first=first):
        for row in chunk:
            if last is not None and row.key > last:
                return rows
            if row.attempts < run.plan.max_attempts:
                rows.append(row)
    return rows


async def round2(run: Run, rows: list[FailedRow]) -> Counts:
    """The retryable failures again, each by the product's one retry policy (backoff with jitter) until it
    succeeds, fails for good, or has used max_attempts in all."""
    counts = Counts()
    run.counts.add(retrying=len(rows))
    run.counts.phase = "round 2: retrying failed objects"
    plan = run.plan
    run.source.upcoming([RemoteObject(row.key, row.size, row.etag, path=row.path) for row in rows])

    async def retry(row: FailedRow) -> None:
        obj = RemoteObject(row.key, row.size, row.etag, path=row.path)
        attempts = row.attempts
        try:
            rel = target(obj, plan.strip)
        except DownloadError as err:  # cannot happen for a row round 1 made, but never a crash
            outcome = Outcome(row.key, row.size, row.etag, attempts, str(err), False, path=row.path)
        else:
            await asyncio.sleep(plan.retry_backoff)  # round 1 ended a moment ago: give the store a breath
            try:
                async for attempt in retrying(plan.max_attempts - row.attempts, plan.retry_backoff):
                    with attempt:
                        attempts += 1
                        outcome = await _attempt(run, obj, rel, attempts, again=True)
                        if not outcome.ok and outcome.retryable and not run.halt.reason:
                            raise _Retry(outcome)
            except _Retry as last:
                outcome = last.outcome
        _settle(run, counts, obj, outcome, retried=True)
    await _pool(run, rows, retry)
    return counts


class _Retry(DownloadError):
    """An attempt of round 2 that may succeed next time (the retry policy decides on its `retryable`)."""

    retryable = True

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.error or "")
        self.outcome = outcome
