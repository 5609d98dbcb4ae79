"""The one run loop, for any source and any door: list page by page, round 1 of each page while listing goes on,
the round-2 decision, round 2, the report. No Prefect here. How a batch is carried out is given to it:

    LocalBatches (here)        on the engine's loop in this process: --no-prefect, the executables, the plugin
                               service (whose pages are the files the plugin pushes)
    PrefectBatches             Prefect tasks, one per page or chunk (tasks/units.py): the flows

    open_run / close_run       a run's live objects (output lock, manifest, engine) and who closes them
    run_job(run, batches)      the loop: look-ahead, halting, the round-2 decision, in one place
    finish(...)                the failure CSV and the summary
    preview(...)               what a run would download (dry run), writing nothing
The work of one batch (select, round 1, round 2) is core/rounds.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import deque
from typing import Callable, Protocol

from core import listing, mirror, rounds
from core.engine import Engine, engine_for
from core.errors import DownloadError, ListingError
from core.manifest import Manifest
from core.model import Counts, Outcome, Plan, RemoteObject, Settings
from core.report import Preview, Summary, earlier_run, write_changes_csv, write_failed_csv
from core.sources import Page, Source
from core.workarea import Output

LOOK_AHEAD = 8  # batches listed ahead of the downloads: memory stays flat at any bucket size (a page ≤ 1,000 keys)


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

    def retrying(self, count: int) -> None:
        """Round 2 starts with `count` objects."""


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
    engine with the settings on the source's network (or share a running engine). `source` may be made from
    the engine (a source that calls APIs on the engine's loop). Whoever opens a run closes it (close_run),
    and with it the engine it started and the source."""
    out = Output(plan.output, plan.shard, owner=owner)
    out.backup_dir = plan.backup_dir
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
    """The source, the engine (cancelled downloads record what finished), the manifest (its last writes),
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
            run.out.close(tidy=True)


# -- the loop --------------------------------------------------------------------------------------------
class Batches(Protocol):
    """How a run's batches are carried out. Each method returns at once with a future-like handle (done(),
    exception(timeout), result(), cancel()) of the batch's Counts, except list_page and report."""

    def list_page(self, token: str | None, page_no: int) -> Page: ...

    def round1(self, objects: list[RemoteObject], page_no: int): ...

    def round2(self) -> list: ...

    def report(self, counts: Counts, seconds: float, incomplete: str, extra_rows: list[list],
               notes: list[str]) -> Summary: ...


def run_job(run: Run, batches: Batches, tick: Callable[[], None] | None = None) -> Summary:
    """A whole run, in the caller's thread: listing page by page, each page's round 1 handed to `batches`
    while listing goes on (at most LOOK_AHEAD waiting), round 2 when it can help, then the report. `tick()` is
    called about ten times a second while it waits (progress). A halt (a full disk) stops the listing and
    round 2; what finished is reported."""
    started = time.monotonic()
    plan = run.plan
    counts, pending = Counts(), deque()
    incomplete, extra_rows = "", []
    notes = [run.manifest.warning] if run.manifest.warning else []
    mirrors = plan.delete and not plan.shard  # a sharded run's parent deletes, once every shard has listed
    if plan.delete:
        run.manifest.start_listing()

    def settle(keep: int) -> None:
        while len(pending) > keep:
            try:
                pending[0].exception(0.1)
            except (concurrent.futures.TimeoutError, TimeoutError):
                pass
            if tick:
                tick()
            while pending and pending[0].done():
                counts.add(pending.popleft().result())
    try:
        try:
            for page_no, page in enumerate(listing.pages(run.source, batches.list_page)):
                if run.halt.reason:
                    break
                pending.append(batches.round1(page.objects, page_no))
                settle(LOOK_AHEAD)
        except ListingError as exc:
            incomplete, extra_rows = listing_failure(plan, exc)
        settle(0)
        if counts.failed and plan.max_attempts > 1 and not run.halt.reason and run.source.retry_possible():
            pending.extend(batches.round2())
            settle(0)
        if mirrors:
            run.counts.phase = "deleting"
            deletion = mirror.mirror(run, incomplete, counts.listed, counts.listed - counts.filtered_out)
            counts.add(deleted=deletion.count if not deletion.refused else 0)
            incomplete = incomplete or deletion.refused
            notes += [deletion.skipped] if deletion.skipped else []
        run.counts.phase = "finished"
    finally:
        for future in pending:
            future.cancel()
    return batches.report(counts, time.monotonic() - started, incomplete, extra_rows, notes)


class LocalBatches:
    """Batches on the run's engine, in this process (--no-prefect, the executables, the plugin service)."""

    def __init__(self, run: Run):
        self.run = run
        self.first_rows: list[list] = []  # the failure CSV's, once reported (for an artifact)
        self._in_order: asyncio.Lock | None = None

    def list_page(self, token: str | None, page_no: int) -> Page:
        run = self.run
        slot = run.engine.request_slot if run.source.lists_by_request else contextlib.nullcontext
        return listing.list_page(run.source, token, run.plan.max_attempts, run.plan.retry_backoff, slot)

    def round1(self, objects: list[RemoteObject], page_no: int):
        return self.run.engine.submit(self._round1(objects))

    async def _round1(self, objects: list[RemoteObject]) -> Counts:
        run = self.run
        loop = asyncio.get_running_loop()
        # Pages are prepared one after another, so their downloads queue for requests in the order listed
        # (sent, for the plugin, whose files wait for links in that order).
        self._in_order = self._in_order or asyncio.Lock()
        async with self._in_order:
            counts, items = await loop.run_in_executor(None, rounds.prepare, run, objects)  # blocking: stat, hash
        if items and run.halt.reason is None:
            counts.add(await rounds.round1(run, items))
        return counts

    def round2(self) -> list:
        return [self.run.engine.submit(self._round2())]

    async def _round2(self) -> Counts:
        run = self.run
        rows = await asyncio.get_running_loop().run_in_executor(None, rounds.retry_rows, run)
        if not rows:
            return Counts()
        run.events.retrying(len(rows))
        return await rounds.round2(run, rows)

    def report(self, counts: Counts, seconds: float, incomplete: str, extra_rows: list[list],
               notes: list[str]) -> Summary:
        summary, self.first_rows = finish(self.run, counts, seconds, incomplete, extra_rows, notes)
        return summary


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
    try:
        changes_csv, first_changes = write_changes_csv(run.manifest, plan.run_id, run.out, plan.changes_csv_name)
    except (OSError, DownloadError) as exc:
        changes_csv, first_changes = None, []
        notes.append(f"the change report could not be written: {run.out.disk_error(exc)}")
    # Partial files would only keep a full disk full; after a run without failures they are leftovers; else
    # the resumable ones stay for the next run.
    run.out.clear_work_area(resumable=run.halt.reason is None and bool(counts.failed or incomplete))
    return Summary.of(counts, seconds, csv_path, incomplete, notes, changes_csv, first_changes), first_rows


def listing_failure(plan: Plan, exc: ListingError) -> tuple[str, list[list]]:
    """An incomplete listing, as the summary and the failure CSV say it (the CSV's key: the listing's label)."""
    incomplete = f"listing incomplete: {exc}"
    return incomplete, [[plan.label or "(listing)", incomplete, plan.max_attempts]]


# -- a preview ------------------------------------------------------------------------------------------
def preview(plan: Plan, settings: Settings, source: Source | Callable[[Engine], Source]) -> Preview:
    """What a run would download (the dry run, the interactive preview): count, size, already here, to
    fetch, largest, first keys. Lists everything; writes nothing, not even the output folder. A source given
    stays open (its owner closes it); one made here from the engine is closed here."""
    result = Preview()
    with engine_for(settings, source.network) as engine, earlier_run(plan) as (manifest, out):
        made = source(engine) if callable(source) and not isinstance(source, Source) else source
        try:
            for page in listing.pages(made, lambda token, _: listing.list_page(
                    made, token, plan.max_attempts, plan.retry_backoff, engine.request_slot)):
                result.add_page(page.objects, plan, manifest, out)
            if plan.delete and out is not None:
                listed = {mirror.folded(rel) for rel in result.listed} if mirror.case_insensitive(out) \
                    else result.listed
                errors: list[str] = []
                doomed = list(mirror.extraneous(out, plan, made.covers, lambda keys, _: listed & set(keys), errors))
                result.deletion = mirror.Deletion(len(doomed), sum(size for _, size in doomed),
                                                  doomed[:mirror.FIRST])
            result.listed = set()
        finally:
            if made is not source:
                made.close()
    return result
