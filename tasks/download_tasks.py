"""Prefect tasks of the download flow: one task run per listing page or batch, never per object."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from tasks import batch, listing
from tasks.errors import DownloadError
from tasks.backends import Backend, Page
from tasks.errors import ObjectsFailed
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
        link, where = failed_csv_link(Path(summary.failed_csv))
        create_link_artifact(link, link_text=summary.failed_csv, key=FAILED_CSV_KEY,
                             description=f"Full failure list (key,last_error,retry_count), {where}")
    else:
        create_markdown_artifact("No failures.", key=FAILURES_KEY, description="Download failures")


def final_state(result):
    """How a download flow ends: with its result when every selected object is present (or for a preview);
    Failed otherwise, so Prefect's UI filters, automations and `run_deployment` callers see it. The summary
    and failure artifacts are already published; a caller of the flow gets the summary in ObjectsFailed."""
    if getattr(result, "ok", True):
        return result
    error = ObjectsFailed(result)
    return Failed(message=str(error), data=error)


# Presigned links to a report last as long as SigV4 allows.
LINK_SECONDS = 7 * 24 * 3600


def failed_csv_link(csv_path: Path) -> tuple[str, str]:
    """A link to the full failure CSV, and where it leads. With Prefect's default result storage set to an
    S3 bucket block (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/NAME, prefect-aws), the CSV is uploaded
    there and the link is a presigned HTTPS URL any browser can open; otherwise it is the file on the
    worker's disk (file://, openable on that machine)."""
    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings
    slug = get_current_settings().results.default_storage_block
    local = csv_path.resolve().as_uri(), "on the worker's disk"
    if not slug:
        return local
    from prefect.blocks.core import Block
    storage = Block.load(slug)
    if not hasattr(storage, "upload_from_path") or not hasattr(storage, "credentials"):
        get_run_logger().warning("result storage %s is not an S3 bucket block: the failure CSV link is a"
                                 " file on the worker", slug)
        return local
    try:
        key = storage.upload_from_path(csv_path, f"download-failures/{flow_run.id or 'local'}/{csv_path.name}",
                                       ExtraArgs={"ContentType": "text/csv; charset=utf-8"})
        client = storage.credentials.get_s3_client()
        url = client.generate_presigned_url("get_object", Params={"Bucket": storage.bucket_name, "Key": key},
                                            ExpiresIn=LINK_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the run's result stands; only the link is the local file
        get_run_logger().warning("failure CSV not uploaded to %s (%s): the link is the file on the worker",
                                 slug, type(exc).__name__)
        return local
    return url, f"in s3://{storage.bucket_name}/{key} (link valid 7 days)"


@unit(name="publish-preview")
def publish_preview(preview: Preview) -> None:
    largest = "\n".join(f"- {md_cell(key)} ({size} bytes)" for size, key in sorted(preview.largest, reverse=True))
    create_markdown_artifact(preview.markdown() + ("\nLargest:\n" + largest if largest else ""),
                             key=PREVIEW_KEY, description="Dry run: what would be downloaded")
