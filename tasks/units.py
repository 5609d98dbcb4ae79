"""The Prefect tasks of a download run: one task run per listing page, per batch (a page's objects) and per
chunk of round 2, never one per object. Prefect costs ~3-4 ms of CPU and ~35 KB per task run here: 10,000
one-object tasks took 41 s and 530 MB and lost events; a page of 1,000 objects per task costs nothing
measurable.

Inputs are data — the Job and page descriptors, never live clients; each task finds its run's live objects,
which its flow holds in the same process, through tasks/runs.py. A task's state tells the truth: a batch in which objects failed ends
Failed (with its counts), even when round 2 later fetches them."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from core import rounds
from core import run as core_run
from core.engine import Stopped
from core.model import Counts, Job, RemoteObject
from core.report import Preview, Summary
from core.sources import Page
from tasks import artifacts
from tasks.runs import run_of

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
    return core_run.LocalBatches(run_of(job)).list_page(token, page_no)


@unit(name="download-batch", task_run_name="download-batch-{page_no}")
def download_batch(job: Job, batch: Batch, page_no: int):
    run = run_of(job)
    counts, items = rounds.prepare(run, batch.objects)
    if items and run.halt.reason is None:
        try:
            counts.add(run.engine.run(rounds.round1(run, items)))
        except Stopped:
            pass  # Ctrl-C: what finished is recorded, the rest resumes next run
    return _truthful(counts, counts.failed, counts.listed - counts.filtered_out, f"round 1 of page {page_no}")


@unit(name="retry-failed", task_run_name="retry-failed-{first}")
def retry_failed(job: Job, first: str, last: str):
    run = run_of(job)
    rows = rounds.retry_rows(run, first, last)
    if not rows or run.halt.reason is not None:
        return Counts()
    try:
        counts = run.engine.run(rounds.round2(run, rows))
    except Stopped:
        return Counts()
    return _truthful(counts, len(rows) - counts.downloaded, len(rows), "round 2")


@unit(name="report")
def report(job: Job, counts: Counts, seconds: float, incomplete: str = "", extra_rows: list[list] = (),
           notes: list[str] = ()) -> Summary:
    run = run_of(job)
    summary, first_rows = core_run.finish(run, counts, seconds, incomplete, list(extra_rows), list(notes))
    artifacts.publish_summary(summary, first_rows, run.engine.network.proxies)
    return summary


@unit(name="publish-preview")
def publish_preview(preview: Preview) -> None:
    artifacts.publish_preview(preview)


class PrefectBatches:
    """The one run loop's batches (core/run.py run_job) as task runs of the flow: a list-page task per page, a
    download-batch per page (up to the flow's task runner's threads at once), retry-failed per chunk of round 2,
    and the report task."""

    def __init__(self, job: Job):
        self.job = job

    def list_page(self, token: str | None, page_no: int) -> Page:
        return list_page(self.job, token, page_no)

    def round1(self, objects: list[RemoteObject], page_no: int):
        return _Counted(download_batch.submit(self.job, Batch(objects), page_no))

    def round2(self) -> list:
        chunks = rounds.retry_chunks(run_of(self.job))
        if not chunks:
            return []
        return [_Counted(f) for f in retry_failed.map(self.job, [a for a, _ in chunks], [b for _, b in chunks])]

    def report(self, counts: Counts, seconds: float, incomplete: str, extra_rows: list[list],
               notes: list[str]) -> Summary:
        return report(self.job, counts, seconds, incomplete, extra_rows, notes)


class _Counted:
    """A task's future as the loop waits for it: done in this process, its Counts whatever its state. The
    API learns of task runs from events, which can come late or never (a flow that waited for its copy hung
    forever); a task that ended Failed (objects failed) still carries its counts as the state's data."""

    def __init__(self, future):
        self.future = future

    def done(self) -> bool:
        return self.future.wrapped_future.done()

    def exception(self, timeout: float | None = None):
        return self.future.wrapped_future.exception(timeout)

    def result(self) -> Counts:
        result = self.future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            raise result
        return result

    def cancel(self) -> bool:
        return self.future.wrapped_future.cancel()
