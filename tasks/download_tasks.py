"""Prefect tasks of the download flow: one task run per listing page or batch, never per object."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import batch, listing
from tasks.errors import DownloadError
from tasks.backends import Backend, Page
from tasks.keys import RemoteObject
from tasks.manifest import Manifest
from tasks.report import Preview, Summary, md_cell, write_failed_csv
from tasks.transfer import Engine

SUMMARY_KEY = "download-summary"
FAILURES_KEY = "download-failures"
FAILED_CSV_KEY = "download-failed-csv"
PREVIEW_KEY = "download-preview"

# Inputs are live objects (engine, manifest, clients): nothing to cache or hash.
unit = task(cache_policy=NO_CACHE, persist_result=False)


@unit(name="list-page", task_run_name="list-page-{page_no}")
def list_page(backend: Backend, engine: Engine, plan: batch.Plan, token: str | None, page_no: int) -> Page:
    return listing.list_page(backend, token, plan.max_attempts, plan.retry_backoff, engine.request_slot)


class Listed:
    """A page's objects, opaque to Prefect: it walks lists and dataclasses in task inputs looking for futures,
    which for 1,000 objects per batch cost several % of a run's CPU."""
    __slots__ = ("objects",)

    def __init__(self, objects: list[RemoteObject]):
        self.objects = objects

    def __repr__(self) -> str:
        return f"Listed({len(self.objects)} objects)"


@unit(name="download-batch", task_run_name="download-batch-{page_no}")
def download_batch(run: batch.Run, listed: Listed, page_no: int) -> batch.Tally:
    return batch.download_batch(run, listed.objects)


@unit(name="retry-failed")
def retry_failed(run: batch.Run) -> batch.Tally:
    return batch.retry_failed(run)


@unit(name="report")
def report(run: batch.Run, tally: batch.Tally, seconds: float, incomplete: str = "",
           extra_rows: list[list] = (), notes: list[str] = ()) -> Summary:
    plan = run.plan
    notes = list(notes)
    try:
        csv_path, first_rows = write_failed_csv(run.manifest, plan.run_id, run.out, plan.failed_csv_name,
                                               plan.path_column, list(extra_rows))
    except (OSError, DownloadError) as exc:  # e.g. the disk is full: say so, keep what the summary knows
        csv_path, first_rows = None, []
        notes.append(f"the failure CSV could not be written: {run.out.disk_error(exc)}")
    if run.halt.reason is not None:
        run.out.clear_work_area()  # partial files would only keep the disk full
    elif not tally.failed and not incomplete and not tally.interrupted:
        run.out.clear_work_area()  # leftovers of objects that no longer exist
    summary = Summary.of(tally, seconds, csv_path, incomplete, notes)
    publish_summary(summary, first_rows)
    return summary


def publish_summary(summary: Summary, first_rows: list[list]) -> None:
    create_table_artifact([{"metric": name, "value": value} for name, value in summary.rows()],
                          key=SUMMARY_KEY, description="Download summary")
    if summary.failed_csv:
        create_table_artifact([{"key": k, "last_error": e, "retry_count": n} for k, e, n in first_rows],
                              key=FAILURES_KEY,
                              description=f"First {len(first_rows)} of {summary.failed} failures")
        create_link_artifact(Path(summary.failed_csv).resolve().as_uri(), link_text=summary.failed_csv,
                             key=FAILED_CSV_KEY, description="Full failure list (key,last_error,retry_count)")
    else:
        create_markdown_artifact("No failures.", key=FAILURES_KEY, description="Download failures")


@unit(name="publish-preview")
def publish_preview(preview: Preview) -> None:
    largest = "\n".join(f"- {md_cell(key)} ({size} bytes)" for size, key in sorted(preview.largest, reverse=True))
    create_markdown_artifact(preview.markdown() + ("\nLargest:\n" + largest if largest else ""),
                             key=PREVIEW_KEY, description="Dry run: what would be downloaded")
