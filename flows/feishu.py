"""The Feishu Bitable attachment flow: every attachment of a table to a local folder (optionally one ZIP),
named and foldered by the record's fields; the same batches, manifest, rounds and report as the object flow.

    PERSONAL_BASE_TOKEN=... python -m flows.feishu --app-token APP --table-id TBL --output DIR [--zip]
"""
from __future__ import annotations

import uuid
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from core.paths import prepare_output
from core.report import Preview, Summary
from core.zipper import zip_folder
from flows.params import FeishuParams
from flows.pipeline import BATCH_WORKERS, download_all, preview_all
from tasks.artifacts import final_state

ZIP_KEY = "feishu-zip"


@task(name="zip-job", cache_policy=NO_CACHE, persist_result=False)
def zip_job(folder, zip_path) -> str:
    path = zip_folder(folder, zip_path, folder.name)
    create_markdown_artifact(f"ZIP written: `{path}`", key=ZIP_KEY, description="The job's ZIP")
    return str(path)


@flow(name="feishu-attachments", task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS), persist_result=False)
def download_attachments(params: FeishuParams) -> Summary | Preview:
    job = params.job(str(flow_run.id or uuid.uuid4().hex), Path(params.output).expanduser().resolve())
    if params.dry_run:
        return preview_all(job)
    folder = prepare_output(job.plan.output)
    summary = download_all(job, flow_run.id)
    if params.zip:
        summary.zip_file = zip_job(folder, folder.with_name(folder.name + ".zip"))
    return final_state(summary)


if __name__ == "__main__":
    import sys

    from flows.feishu_cli import main
    sys.exit(main())
