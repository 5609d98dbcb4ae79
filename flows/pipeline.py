"""The shape every download flow shares: list page by page, download each page as a batch task while
listing goes on (bounded), retry what failed, report. Orchestration only; the work is in tasks/."""
from __future__ import annotations

import time
from collections import deque

from prefect import get_run_logger
from prefect.futures import wait

from tasks import download_tasks as units
from tasks.backends import Backend
from tasks.batch import Live, Plan, Tally
from tasks.manifest import Manifest
from tasks.progress import Progress
from tasks.report import Preview, Summary, earlier_manifest
from tasks.transfer import Engine

BATCH_WORKERS = 4
# Pages listed ahead of the downloads: bounds memory (each page is at most 1,000 keys) at any bucket size.
MAX_PENDING = 2 * BATCH_WORKERS


def pages(backend: Backend, engine: Engine):
    token, page_no = None, 0
    while True:
        page = units.list_page(backend, engine, token, page_no)
        yield page_no, page
        if not page.next_token:
            return
        token, page_no = page.next_token, page_no + 1


def _settle(pending: deque, keep: int, tally: Tally, progress: Progress) -> None:
    """Wait until at most `keep` batches are pending, adding finished ones to the tally."""
    while len(pending) > keep:
        wait([pending[0]], timeout=0.1)
        progress.tick()
        while pending and pending[0].state.is_final():
            tally.add(pending.popleft().result())


def download_all(backend: Backend, engine: Engine, manifest: Manifest, plan: Plan) -> Summary:
    started = time.monotonic()
    live, tally, pending = Live(), Tally(), deque()
    progress = Progress(live, engine, get_run_logger())
    for page_no, page in pages(backend, engine):
        pending.append(units.download_batch.submit(engine, backend, manifest, plan, units.Listed(page.objects),
                                                   live, page_no))
        _settle(pending, MAX_PENDING, tally, progress)
    _settle(pending, 0, tally, progress)
    if tally.failed and plan.max_attempts > 1:
        pending.append(units.retry_failed.submit(engine, backend, manifest, plan, live))
        _settle(pending, 0, tally, progress)
    live.phase = "finished"
    progress.tick(final=True)
    return units.report(manifest, plan, tally, time.monotonic() - started)


def preview_all(backend: Backend, engine: Engine, plan: Plan) -> Preview:
    preview = Preview()
    with earlier_manifest(plan) as manifest:
        for _, page in pages(backend, engine):
            preview.add_page(page.objects, plan, manifest)
    units.publish_preview(preview)
    return preview
