"""The object download flow: list page by page, download in batches while listing goes on, retry, report.

    python -m flows.download --backend s3 --endpoint URL --bucket B --prefix P --output DIR
"""
from __future__ import annotations

if __name__ == "__main__":  # before Prefect is imported: the CLI sets its environment up first
    import sys

    from flows.cli import main
    sys.exit(main())

import uuid

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from core.network import NO_VERIFY_WARNING
from core.paths import prepare_output
from core.report import Preview, Summary, nothing_selected
from flows.params import DownloadParams, with_deployment_defaults
from flows.pipeline import BATCH_WORKERS, download_all, preview_all
from tasks.artifacts import final_state


@flow(name="object-download", task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS), persist_result=False)
def download_objects(params: DownloadParams) -> Summary | Preview:
    params = with_deployment_defaults(params)
    if params.no_verify_ssl:
        get_run_logger().warning(NO_VERIFY_WARNING)
    job = params.job(str(flow_run.id or uuid.uuid4().hex))
    if params.dry_run:  # a dry run creates nothing, not even the output folder
        result = preview_all(job)
    else:
        prepare_output(params.output)
        result = download_all(job, flow_run.id)
    why = nothing_selected(result, job.plan, params.where, params.empty_hint)  # fail_if_empty: raises
    if why:
        get_run_logger().warning(why)
    return result if params.dry_run else final_state(result)
