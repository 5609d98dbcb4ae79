"""The Prefect tasks of a download run: one task run per listing page, per batch (a page's objects) and per
chunk of round 2, never one per object. Prefect costs ~3-4 ms of CPU and ~35 KB per task run here: 10,000
one-object tasks took 41 s and 530 MB and lost events; a page of 1,000 objects per task costs nothing
measurable.

Inputs are data — the Job and page descriptors — so Prefect could retry or move a task; each task takes its
run's live objects from tasks/runs.py. A task's state tells the truth: a batch in which objects failed ends
Failed (with its counts), even when round 2 later fetches them."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from core import listing
from core import run as core_run
from core.engine import Stopped
from core.model import Counts, Job, RemoteObject
from core.report import Preview, Summary
from core.sources import Page
from tasks import artifacts
from tasks.runs import open_job

unit = task(cache_policy=NO_CACHE, persist_result=False)


class Batch:
    """A page's objects: picklable, and opaque to Prefect, which walks lists and dataclasses given to a task
    looking for futures (for 1,000 objects, several % of a run's CPU)."""
    __slots__ = ("objects",)

    def __init__(self, objects: list[RemoteObject]):
        self.objects = objects

    def __getstate__(self):
        return self.objects

    def __setstate__(self, objects):
        self.objects = objects

    def __repr__(self) -> str:
        return f"Batch({len(self.objects)} objects)"


def _truthful(counts: Counts, failed: int, of: int, what: str):
    """Completed with the counts, or Failed with them when objects failed."""
    if failed:
        return Failed(message=f"{failed} of {of} objects failed in {what}", data=counts)
    return counts


@unit(name="list-page", task_run_name="list-page-{page_no}")
def list_page(job: Job, token: str | None, page_no: int) -> Page:
    run = open_job(job)
    plan = job.plan
    return listing.list_page(run.source, token, plan.max_attempts, plan.retry_backoff, run.engine.request_slot)


@unit(name="download-batch", task_run_name="download-batch-{page_no}")
def download_batch(job: Job, batch: Batch, page_no: int):
    run = open_job(job)
    counts, items = core_run.prepare(run, batch.objects)
    if items and run.halt.reason is None:
        try:
            counts.add(run.engine.run(core_run.round1(run, items)))
        except Stopped:
            pass  # Ctrl-C: what finished is recorded, the rest resumes next run
    return _truthful(counts, counts.failed, counts.listed - counts.filtered_out, f"round 1 of page {page_no}")


@unit(name="retry-failed", task_run_name="retry-failed-{first}")
def retry_failed(job: Job, first: str, last: str):
    run = open_job(job)
    rows = core_run.retry_rows(run, first, last)
    if not rows or run.halt.reason is not None:
        return Counts()
    try:
        counts = run.engine.run(core_run.round2(run, rows))
    except Stopped:
        return Counts()
    return _truthful(counts, len(rows) - counts.downloaded, len(rows), "round 2")


@unit(name="report")
def report(job: Job, counts: Counts, seconds: float, incomplete: str = "", extra_rows: list[list] = (),
           notes: list[str] = ()) -> Summary:
    run = open_job(job)
    summary, first_rows = core_run.finish(run, counts, seconds, incomplete, list(extra_rows), list(notes))
    artifacts.publish_summary(summary, first_rows, run.engine.network.proxies)
    return summary


@unit(name="publish-preview")
def publish_preview(preview: Preview) -> None:
    artifacts.publish_preview(preview)
