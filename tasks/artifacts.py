"""What a run leaves in Prefect: the summary and failure artifacts (with a link to the full CSV), the dry
run's preview, and the final state a flow run ends in."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.states import Failed

from core.errors import ObjectsFailed
from core.network import Proxies
from core.report import Preview, Summary, md_cell

SUMMARY_KEY = "download-summary"
FAILURES_KEY = "download-failures"
FAILED_CSV_KEY = "download-failed-csv"
CHANGES_KEY = "download-changes"
PREVIEW_KEY = "download-preview"

def publish_summary(summary: Summary, first_rows: list[list], proxies: Proxies | None = None) -> None:
    """`proxies`: the run's (for the CSV's upload to result storage); None: the environment's."""
    create_table_artifact([{"metric": name, "value": value} for name, value in summary.rows()],
                          key=SUMMARY_KEY, description="Download summary")
    if summary.failed_csv:
        create_table_artifact([{"key": k, "last_error": e, "retry_count": n} for k, e, n in first_rows],
                              key=FAILURES_KEY,
                              description=f"First {len(first_rows)} of {summary.failed} failures")
        link, where = failed_csv_link(Path(summary.failed_csv), proxies)
        create_link_artifact(link, link_text=summary.failed_csv, key=FAILED_CSV_KEY,
                             description=f"Full failure list (key,last_error,retry_count), {where}")
    else:
        create_markdown_artifact("No failures.", key=FAILURES_KEY, description="Download failures")
    if summary.changes_csv:
        link, where = failed_csv_link(Path(summary.changes_csv), proxies, "download-changes", "change report")
        rows = "\n".join(f"| {md_cell(k)} | {c} | {s} |" for k, c, s in summary.first_changes)
        create_markdown_artifact(
            f"[All changes (key,change,size), {where}]({link})\n\n| key | change | size |\n|---|---|---|\n{rows}\n",
            key=CHANGES_KEY, description=f"First {len(summary.first_changes)} changes")


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


def failed_csv_link(csv_path: Path, proxies: Proxies | None = None, folder: str = "download-failures",
                    what: str = "failure CSV") -> tuple[str, str]:
    """A link to a full CSV (failures, changes), and where it leads. With Prefect's default result storage
    set to an S3 bucket block (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/NAME, prefect-aws), the CSV is
    uploaded there (`folder`/<flow run id>/) and the link is a presigned HTTPS URL any browser can open;
    otherwise it is the file on the worker's disk (file://, openable on that machine)."""
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
        params = storage.credentials.aws_client_parameters
        params.config = {**(params.config or {}),  # the product's proxy reading, as for every other request
                         "proxies": (proxies or Proxies.from_environment()).botocore(
                             params.endpoint_url or "https://s3.amazonaws.com")}
        key = storage.upload_from_path(csv_path, f"{folder}/{flow_run.id or 'local'}/{csv_path.name}",
                                       ExtraArgs={"ContentType": "text/csv; charset=utf-8"})
        client = storage.credentials.get_s3_client()
        url = client.generate_presigned_url("get_object", Params={"Bucket": storage.bucket_name, "Key": key},
                                            ExpiresIn=LINK_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the run's result stands; only the link is the local file
        get_run_logger().warning("%s not uploaded to %s (%s): the link is the file on the worker", what, slug,
                                 type(exc).__name__)
        return local
    return url, f"in s3://{storage.bucket_name}/{key} (link valid 7 days)"


def publish_preview(preview: Preview) -> None:
    largest = "\n".join(f"- {md_cell(key)} ({size} bytes)" for size, key in sorted(preview.largest, reverse=True))
    create_markdown_artifact(preview.markdown() + ("\nLargest:\n" + largest if largest else ""),
                             key=PREVIEW_KEY, description="Dry run: what would be downloaded")
