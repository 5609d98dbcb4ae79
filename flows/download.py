"""The object download flow: list page by page, download in batches while listing goes on, retry, report.

    python -m flows.download --backend s3 --endpoint URL --bucket B --prefix P --output DIR
"""
from __future__ import annotations

import time
import uuid
from collections import deque

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params import DownloadParams
from tasks import download_tasks as units
from tasks.backends import make_backend
from tasks.batch import Live, Plan, Tally, select
from tasks.keys import parse_suffixes, prefix_folder, prepare_output
from tasks.manifest import Manifest
from tasks.progress import Progress
from tasks.report import Preview, Summary
from tasks.transfer import Engine

BATCH_WORKERS = 4
# Pages listed ahead of the downloads: bounds memory (each page is at most 1,000 keys) at any bucket size.
MAX_PENDING = 2 * BATCH_WORKERS


def _pages(backend, engine):
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


@flow(name="object-download", task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS), persist_result=False)
def download_objects(params: DownloadParams) -> Summary | Preview:
    logger = get_run_logger()
    started = time.monotonic()
    backend = make_backend(params.store_config())
    output = prepare_output(params.output)
    plan = Plan(output, prefix_folder(params.prefix), parse_suffixes(params.include_suffix),
                run_id=flow_run.id or uuid.uuid4().hex, max_attempts=params.max_attempts,
                retry_backoff=params.retry_backoff, shard=params.shard)
    manifest = None if params.dry_run else Manifest(output, plan.manifest_name)
    try:
        with Engine(params.concurrency, params.connect_timeout, params.read_timeout,
                    max_requests_per_second=params.max_requests_per_second) as engine:
            if manifest is None:
                preview = Preview()
                for _, page in _pages(backend, engine):
                    preview.add(*select(page.objects, plan))
                units.publish_preview(preview)
                return preview

            live, tally, pending = Live(), Tally(), deque()
            progress = Progress(live, engine, logger)
            for page_no, page in _pages(backend, engine):
                pending.append(units.download_batch.submit(engine, backend, manifest, plan, page.objects, live,
                                                           page_no))
                _settle(pending, MAX_PENDING, tally, progress)
            _settle(pending, 0, tally, progress)
            if tally.failed and plan.max_attempts > 1:
                pending.append(units.retry_failed.submit(engine, backend, manifest, plan, live))
                _settle(pending, 0, tally, progress)
            live.phase = "finished"
            progress.tick(final=True)
            return units.report(manifest, plan, tally, time.monotonic() - started)
    finally:
        # After the engine: its cancelled downloads record what they finished on the way out.
        if manifest:
            manifest.close()

if __name__ == "__main__":
    import sys

    from flows.cli import main
    sys.exit(main())
