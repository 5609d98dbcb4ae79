"""The one runner, for any source: round 1 (every selected object once), round 2 (the retryable failures,
by the product's one retry policy), and the report. No Prefect here.

    prepare(run, objects)      select, refuse unsafe keys, recognise what is already here   (blocking I/O)
    round1(run, items)         one attempt each, `concurrency` at a time                     (on the loop)
    round2(run, rows)          the retryable failures again, with backoff, up to max_attempts (on the loop)
    finish(run, counts, ...)   the failure CSV and the summary                                (blocking I/O)
    run_all(run)               the four above over a whole listing (executables, --no-prefect)

The flows call the same pieces through thin Prefect tasks (tasks/units.py); the plugin service feeds
round 1 from its WebSocket messages (bridge/service.py).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

from core import listing
from core.engine import Engine, engine_for
from core.errors import DiskFull, DownloadError, ListingError, as_download_error, retrying
from core.manifest import FailedRow, Manifest
from core.model import UNKNOWN_SIZE, Counts, Outcome, Plan, RemoteObject, Settings
from core.paths import target
from core.report import Preview, Summary, earlier_run, write_failed_csv
from core.selection import Item, not_present, select
from core.sources import Source
from core.workarea import Output

RESTORE_REQUIRED = "restore required"
MAX_PENDING_PAGES = 8  # listed ahead of the downloads: bounds memory (a page is at most 1,000 keys)

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


class Events:
    """What a caller hears of a run as it goes (the plugin service: per-file acks, counters, log lines).
    Every method is called on the engine's loop; the defaults do nothing."""

    def outcome(self, obj: RemoteObject, outcome: Outcome) -> None:
        pass

    def progress(self, obj: RemoteObject) -> Callable[[int], None] | None:
        """`on_bytes` for one attempt at `obj` (see Engine.fetch), or None."""
        return None


class Run:
    """One run's live objects, made once per process (open_run) and shared by all its batches. A plain
    class: Prefect walks dataclasses given to tasks, and there is nothing in here for it to find."""

    __slots__ = ("plan", "engine", "source", "manifest", "out", "counts", "halt", "events", "own_engine")

    def __init__(self, plan: Plan, engine: Engine, source: Source, manifest: Manifest, out: Output,
                 events: Events | None = None, own_engine: bool = True):
        self.plan, self.engine, self.source, self.manifest, self.out = plan, engine, source, manifest, out
        self.counts = Counts()  # live, for progress displays
        self.halt = Halt()
        self.events = events or Events()
        self.own_engine = own_engine  # closed with the run; else shared (the plugin service's jobs)

    def __repr__(self) -> str:
        return f"Run({self.plan.output})"


def open_run(plan: Plan, settings: Settings | Engine, source: Source | Callable[[Engine], Source],
             owner: dict | None = None, events: Events | None = None) -> Run:
    """Take the output (its lock: UsageError when another run holds it), open its manifest, start an
    engine with the settings (or share a running one). `source` may be made from the engine (a source
    that calls APIs on the engine's loop). The engine reaches servers through the source's network."""
    out = Output(plan.output, plan.shard, owner=owner)
    try:
        manifest = Manifest(plan.output, plan.manifest_name)
    except BaseException:
        out.close()
        raise
    shared = isinstance(settings, Engine)
    engine = settings if shared else engine_for(settings, source.network).__enter__()
    try:
        made = source(engine) if callable(source) and not isinstance(source, Source) else source
    except BaseException:
        if not shared:
            engine.close()
        manifest.close()
        out.close()
        raise
    return Run(plan, engine, made, manifest, out, events, own_engine=not shared)


def close_run(run: Run) -> None:
    """The engine first (cancelled downloads record what finished), then the manifest (its last writes),
    then the output (the lock is released last)."""
    try:
        try:
            run.source.close()
        finally:
            if run.own_engine:
                run.engine.close()
    finally:
        try:
            run.manifest.close()
        finally:
            run.out.close()


# -- round 1 ---------------------------------------------------------------------------------------
def prepare(run: Run, objects: list[RemoteObject]) -> tuple[Counts, list[Item]]:
    """A listing page's selection, minus what is refused (unsafe keys, archived objects: recorded failed)
    and what is already here (recorded done). Blocking (stat, hashing, the manifest): not on the loop."""
    plan = run.plan
    counts, chosen = select(objects, plan)
    refused: list[Outcome] = []
    todo: list[Item] = []
    for obj in chosen:
        try:
            rel = target(obj, plan.strip)
        except DownloadError as err:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, str(err), False, path=obj.path))
            continue
        if obj.needs_restore:
            refused.append(Outcome(obj.key, obj.size, obj.etag, 1, RESTORE_REQUIRED, False, path=obj.path))
            counts.restore_required += 1
            continue
        todo.append((obj, rel))
    fresh, adopted = not_present(run.manifest, run.out, todo)
    counts.already_present = len(todo) - len(fresh)
    counts.failed = len(refused)
    run.manifest.add(refused + adopted, plan.run_id)
    run.counts.add(counts)
    return counts, fresh


async def round1(run: Run, items: list[Item] | asyncio.Queue) -> Counts:
    """One attempt at each item, `concurrency` at a time, in the order given. `items`: a list, or a queue
    fed as items become known (the plugin service) and closed with None. Returns what it counted; every
    outcome is recorded as it comes (the manifest writes it within a second)."""
    counts = Counts()
    if isinstance(items, list):
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
        return Outcome(obj.key, obj.size, obj.etag, attempts, str(err), err.retryable, path=obj.path)
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


async def _pool(run: Run, items: Iterable | asyncio.Queue, work) -> None:
    """`concurrency` workers taking items in order until none are left. A halt cancels them; what was in
    flight is not counted (it resumes next run). Cancelled from outside (Ctrl-C, closing): cancelled."""
    if isinstance(items, asyncio.Queue):
        queue = items
    else:
        queue = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        queue.put_nowait(None)
        if queue.qsize() == 1:
            return

    async def worker() -> None:
        while run.halt.reason is None:
            item = await queue.get()
            if item is None:
                queue.put_nowait(None)  # the end, for the other workers too
                return
            await work(item)
    # Twice the engine's concurrency: a worker whose file is being committed holds no request slot, and
    # the engine's semaphore still caps the requests in flight.
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
    of work, small and serialisable."""
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


# -- the report ------------------------------------------------------------------------------------
def finish(run: Run, counts: Counts, seconds: float, incomplete: str = "", extra_rows: list[list] = (),
           notes: list[str] = ()) -> tuple[Summary, list[list]]:
    """The failure CSV (or none) and the summary; the work area cleared when nothing in it can be of use.
    Returns the summary and the CSV's first rows (for an artifact)."""
    plan = run.plan
    notes = list(notes)
    if counts.downloaded:  # exit 0 means on disk (files are not synced one by one: README "Integrity")
        try:
            run.out.sync()
        except OSError as exc:
            notes.append(f"the output could not be synced to disk: {exc.strerror or exc}")
    if run.halt.reason is not None:
        incomplete = incomplete or (f"stopped: {run.halt.reason}; the objects not yet fetched were not attempted"
                                    " (free some space and run again)")
    try:
        csv_path, first_rows = write_failed_csv(run.manifest, plan.run_id, run.out, plan.failed_csv_name,
                                               plan.path_column, list(extra_rows))
    except (OSError, DownloadError) as exc:  # e.g. the disk is full: say so, keep what the summary knows
        csv_path, first_rows = None, []
        notes.append(f"the failure CSV could not be written: {run.out.disk_error(exc)}")
    if run.halt.reason is not None or (not counts.failed and not incomplete):
        run.out.clear_work_area()  # partial files would only keep the disk full; or: leftovers
    return Summary.of(counts, seconds, csv_path, incomplete, notes), first_rows


def listing_failure(plan: Plan, exc: ListingError) -> tuple[str, list[list]]:
    """An incomplete listing, as the summary and the failure CSV say it."""
    incomplete = f"listing incomplete: {exc}"
    return incomplete, [[plan.prefix or "(listing)", incomplete, plan.max_attempts]]


# -- a preview ------------------------------------------------------------------------------------------
def preview(plan: Plan, settings: Settings, source: Source | Callable[[Engine], Source]) -> Preview:
    """What a run would download (the dry run, the interactive preview): count, size, already here, to
    fetch, largest, first keys. Lists everything; writes nothing, not even the output folder."""
    result = Preview()
    with engine_for(settings, source.network) as engine, earlier_run(plan) as (manifest, out):
        made = source(engine) if callable(source) and not isinstance(source, Source) else source
        try:
            for page in listing.pages(made, lambda token, _: listing.list_page(
                    made, token, plan.max_attempts, plan.retry_backoff, engine.request_slot)):
                result.add_page(page.objects, plan, manifest, out)
        finally:
            made.close()
    return result


# -- all of it, without Prefect -----------------------------------------------------------------------
async def run_all(run: Run, tick: Callable[[], None] | None = None, tick_every: float = 0.1) -> Summary:
    """List, round 1 page by page while listing goes on, round 2, report: a whole run on the engine's loop.
    `tick()` is called every `tick_every` seconds (progress displays)."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    plan = run.plan
    counts, pending = Counts(), set()
    incomplete, extra_rows = "", []
    notes = [run.manifest.warning] if run.manifest.warning else []
    ticker = asyncio.ensure_future(_tick(tick, tick_every)) if tick else None

    def fetch_page(token, page_no):
        return listing.list_page(run.source, token, plan.max_attempts, plan.retry_backoff, run.engine.request_slot)
    try:
        try:
            async for page in listing.apages(run.source, fetch_page):
                if run.halt.reason:
                    break
                prepared, items = await loop.run_in_executor(None, prepare, run, page.objects)
                counts.add(prepared)
                pending.add(asyncio.ensure_future(round1(run, items)))
                while len(pending) >= MAX_PENDING_PAGES:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        counts.add(task.result())
        except ListingError as exc:
            incomplete, extra_rows = listing_failure(plan, exc)
        for task in pending:
            counts.add(await task)
        pending = set()
        if counts.failed and plan.max_attempts > 1 and not run.halt.reason:
            rows = await loop.run_in_executor(None, retry_rows, run)
            if rows:
                counts.add(await round2(run, rows))
        run.counts.phase = "finished"
    finally:
        for task in pending:
            task.cancel()
        if ticker:
            ticker.cancel()
            tick()
    summary, _ = await loop.run_in_executor(None, finish, run, counts, time.monotonic() - started, incomplete,
                                            extra_rows, notes)
    return summary


async def _tick(tick: Callable[[], None], every: float) -> None:
    while True:
        tick()
        await asyncio.sleep(every)
