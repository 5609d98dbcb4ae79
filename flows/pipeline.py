"""The shape every download flow shares: list page by page, download each page as a batch task while
listing goes on (bounded), retry what failed, report. Orchestration only; the work is in tasks/."""
from __future__ import annotations

import time
from collections import deque

from prefect import get_run_logger
from prefect.futures import wait

from tasks import download_tasks as units
from tasks.backends import Backend
from tasks.batch import Plan, Run, Tally
from tasks.errors import ListingError
from tasks.listing import pages
from tasks.progress import Progress
from tasks.report import Preview, Summary, earlier_run
from tasks.transfer import Engine

BATCH_WORKERS = 4
# Pages listed ahead of the downloads: bounds memory (each page is at most 1,000 keys) at any bucket size.
MAX_PENDING = 2 * BATCH_WORKERS


def _settle(pending: deque, keep: int, tally: Tally, progress: Progress) -> None:
    """Wait until at most `keep` batches are pending, adding finished ones to the tally."""
    while len(pending) > keep:
        wait([pending[0]], timeout=0.1)
        progress.tick()
        while pending and pending[0].state.is_final():
            tally.add(pending.popleft().result())


def download_all(run: Run) -> Summary:
    started = time.monotonic()
    plan, logger = run.plan, get_run_logger()
    tally, pending = Tally(), deque()
    progress = Progress(run.live, run.engine, logger)
    incomplete, listing_rows = "", []
    notes = [run.manifest.warning] if run.manifest.warning else []
    for note in notes:
        logger.warning(note)

    def fetch(token, page_no):
        return units.list_page(run.backend, run.engine, plan, token, page_no)
    try:
        for page_no, page in enumerate(pages(run.backend, fetch)):
            if run.halt.reason:
                break
            pending.append(units.download_batch.submit(run, units.Listed(page.objects), page_no))
            _settle(pending, MAX_PENDING, tally, progress)
    except ListingError as exc:
        incomplete = f"listing incomplete: {exc}"
        listing_rows = [[plan.prefix or "(listing)", incomplete, plan.max_attempts]]
        logger.error(incomplete)
    _settle(pending, 0, tally, progress)
    if tally.failed and plan.max_attempts > 1 and not run.halt.reason:
        pending.append(units.retry_failed.submit(run))
        _settle(pending, 0, tally, progress)
    if run.halt.reason:
        incomplete = (f"stopped: {run.halt.reason}; the objects not yet fetched were not attempted"
                      " (free some space and run again)")
        logger.error(incomplete)
    run.live.phase = "finished"
    progress.tick(final=True)
    return units.report(run, tally, time.monotonic() - started, incomplete, listing_rows, notes)


def preview_all(backend: Backend, engine: Engine, plan: Plan) -> Preview:
    preview = Preview()
    with earlier_run(plan) as (manifest, out):
        for page in pages(backend, lambda token, page_no: units.list_page(backend, engine, plan, token, page_no)):
            preview.add_page(page.objects, plan, manifest, out)
    units.publish_preview(preview)
    return preview
