"""The shape every download flow shares, in Prefect: list page by page (list-page tasks), download the pages
in mapped batches while listing goes on (download-batch), retry the failures in mapped chunks (retry-failed),
report. Orchestration only: the work is the runner's (core/run.py), reached through tasks/units.py."""
from __future__ import annotations

import time
from collections import deque

from prefect import get_run_logger

from core import listing
from core.errors import ListingError
from core.model import Counts, Job
from core.report import Preview, Summary
from core.run import listing_failure, retry_chunks
from tasks import units
from tasks.progress import Progress
from tasks.runs import close_job, mark_crashed, open_job

BATCH_WORKERS = 4
MAX_PENDING = 2 * BATCH_WORKERS  # batches listed ahead of the downloads: memory stays flat at any size


def _settle(pending: deque, keep: int, counts: Counts, progress: Progress) -> None:
    """Wait until at most `keep` tasks are pending, adding what finished ones counted (a task that ended
    Failed — objects failed — still carries its counts). Finished means finished in this process: the API learns
    of task runs from events, which can come late or never, and a flow that waited for its copy hung forever."""
    while len(pending) > keep:
        pending[0].wait(0.1)
        progress.tick()
        while pending and pending[0].wrapped_future.done():
            # The future's own result: the API's copy of a Failed state does not carry the counts.
            result = pending.popleft().result(raise_on_failure=False)
            if isinstance(result, BaseException):
                raise result
            counts.add(result)


def download_all(job: Job, flow_run_id) -> Summary:
    """A whole run of a job in Prefect; the output is held (its lock) from start to end."""
    started = time.monotonic()
    run = open_job(job, owner={"flow_run_id": str(flow_run_id or "")})
    try:
        mark_crashed(run.out.previous_owner, flow_run_id)
        return _download(job, run, started)
    finally:
        close_job(job)


def _download(job: Job, run, started: float) -> Summary:
    plan, logger = job.plan, get_run_logger()
    counts, pending, window = Counts(), deque(), []
    progress = Progress(run.counts, run.engine, logger)
    incomplete, extra_rows = "", []
    notes = [run.manifest.warning] if run.manifest.warning else []
    for note in notes:
        logger.warning(note)

    def submit(window: list) -> None:
        pending.extend(units.download_batch.map(job, [batch for _, batch in window], [n for n, _ in window]))
        window.clear()
    try:
        for page_no, page in enumerate(listing.pages(run.source, lambda token, n: units.list_page(job, token, n))):
            if run.halt.reason:
                break
            window.append((page_no, units.Batch(page.objects)))
            if len(window) == BATCH_WORKERS:
                submit(window)
                _settle(pending, MAX_PENDING, counts, progress)
    except ListingError as exc:
        incomplete, extra_rows = listing_failure(plan, exc)
        logger.error(incomplete)
    submit(window)
    _settle(pending, 0, counts, progress)
    if counts.failed and plan.max_attempts > 1 and not run.halt.reason:
        chunks = retry_chunks(run)
        if chunks:
            pending.extend(units.retry_failed.map(job, [a for a, _ in chunks], [b for _, b in chunks]))
            _settle(pending, 0, counts, progress)
    run.counts.phase = "finished"
    progress.tick(final=True)
    summary = units.report(job, counts, time.monotonic() - started, incomplete, extra_rows, notes)
    if summary.incomplete:
        logger.error(summary.incomplete)
    return summary


def preview_all(job: Job) -> Preview:
    """A dry run: what the job would download (an artifact too); nothing is written, not even the output."""
    from core.run import preview
    from tasks.runs import source_of
    result = preview(job.plan, job.settings, source_of(job))
    units.publish_preview(result)
    return result
