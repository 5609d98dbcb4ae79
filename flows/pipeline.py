"""The download flows' one body, in Prefect: the core's run loop (core/run.py run_job) with its batches as task
runs (tasks/units.py PrefectBatches), the progress artifact, and the report. Orchestration only."""
from __future__ import annotations

from prefect import get_run_logger

from core.model import Job
from core.report import Preview, Summary
from core.run import preview, run_job
from core.sources import Source
from tasks import units
from tasks.progress import Progress
from tasks.runs import held, mark_crashed, source_of

BATCH_WORKERS = 4  # download-batch tasks at once (the flows' thread pool): one engine and concurrency cap for all


def download_all(job: Job, flow_run_id) -> Summary:
    """A whole run of a job in Prefect; the output is held (its lock) from start to end."""
    logger = get_run_logger()
    with held(job, owner={"flow_run_id": str(flow_run_id or "")}) as run:
        mark_crashed(run.out.previous_owner, flow_run_id)
        if run.manifest.warning:
            logger.warning(run.manifest.warning)
        progress = Progress(run.counts, run.engine, logger)
        summary = run_job(run, units.PrefectBatches(job), tick=progress.tick)
        progress.tick(final=True)
    if summary.incomplete:
        logger.error(summary.incomplete)
    return summary


def preview_all(job: Job) -> Preview:
    """A dry run: what the job would download (an artifact too); nothing is written, not even the output."""
    source = source_of(job)
    try:
        result = preview(job.plan, job.settings, source)
    finally:
        if isinstance(source, Source):  # not a source made later from the engine (Deferred): preview closes that
            source.close()
    units.publish_preview(result)
    return result
