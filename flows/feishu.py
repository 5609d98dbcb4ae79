"""The Feishu Bitable attachment flow: every attachment of a table to a local folder (optionally one ZIP),
named and foldered by the record's fields; the same batches, manifest, rounds and report as the object flow.

    PERSONAL_BASE_TOKEN=... python -m flows.feishu --app-token APP --table-id TBL --output DIR [--zip]
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from core.model import Job, Plan, Settings
from core.naming import UNCATEGORIZED, clean_segment
from core.paths import prepare_output
from core.report import Preview, Summary
from core.sources.feishu import DOMAINS, BitableTable, FeishuSpec
from core.zipper import zip_folder
from flows.pipeline import BATCH_WORKERS, download_all, preview_all
from tasks.artifacts import final_state

ZIP_KEY = "feishu-zip"


class FeishuParams(BaseModel):
    """Download every attachment of a Bitable table; reruns resume. The token is never a parameter."""
    model_config = ConfigDict(extra="forbid")

    app_token: str = Field(..., min_length=1, title="Base (app token)",
                           description="The base's app token (from its URL: /base/<app_token>).")
    table_id: str = Field(..., min_length=1, title="Table ID", description="tbl… (from the URL: ?table=…).")
    view_id: str | None = Field(None, title="View ID", description="Only records of this view; empty: all.")
    attachment_fields: list[str] = Field(default_factory=list, title="Attachment fields",
                                         description="Names or ids; empty: every attachment field.")
    domain: Literal["feishu", "lark"] = Field("feishu", title="Domain",
                                              description="feishu: base-api.feishu.cn; lark: base-api.larksuite.com.")
    api_base_url: str | None = Field(None, title="API base URL",
                                     description="Overrides the domain (private deployments, tests).")
    token_block: str | None = Field(None, title="Token block",
                                    description="Prefect Secret block with the personal base token;"
                                                " empty: PERSONAL_BASE_TOKEN from the environment or .env.")
    output: str = Field("./downloads", title="Output folder")
    job_name: str | None = Field(None, title="Job folder",
                                 description="Folder (and ZIP) name below the output; empty: the table ID.")
    concurrency: int = Field(5, ge=1, le=64, title="Concurrency", description="Downloads at once.")
    zip: bool = Field(False, title="ZIP", description="Also pack the job folder into <job>.zip beside it.")
    name_fields: list[str] = Field(default_factory=list, title="Name from fields",
                                   description="File name = these fields' values joined (extension kept);"
                                               " empty: the attachment's own name.")
    name_separator: str = Field("-", max_length=8, title="Name separator")
    folder_fields: list[str] = Field(default_factory=list, max_length=2, title="Folders from fields",
                                     description="First and second folder level from these fields.")
    uncategorized_folder: str = Field(UNCATEGORIZED, min_length=1, title="Folder for empty values")
    max_attempts: int = Field(3, ge=1, le=10, title="Max attempts")
    retry_backoff: float = Field(1.0, ge=0, le=60, title="Retry backoff (s)")
    api_requests_per_second: float = Field(2.0, gt=0, le=100, title="API requests per second",
                                           description="The base token's limit (2/s per base).")
    connect_timeout: float = Field(10, gt=0, title="Connect timeout (s)")
    read_timeout: float = Field(60, ge=0, title="Read timeout (s)", description="0: no limit.")
    dry_run: bool = Field(False, title="Dry run", description="List and preview only.")
    page_size: int = Field(500, ge=1, le=500, title="Records per page", description="Listing page size (max 500).")

    @property
    def base_url(self) -> str:
        return self.api_base_url or DOMAINS[self.domain]

    @property
    def folder_name(self) -> str:
        return clean_segment(self.job_name or self.table_id)

    def spec(self) -> FeishuSpec:
        table = BitableTable(self.app_token, self.table_id, self.view_id, list(self.attachment_fields), self.page_size)
        return FeishuSpec(table, tuple(self.name_fields), self.name_separator, tuple(self.folder_fields),
                          self.uncategorized_folder, self.base_url, self.api_requests_per_second,
                          self.connect_timeout, self.read_timeout, self.retry_backoff)

    def job(self, run_id: str, output: Path) -> Job:
        """The run as data: the job folder below the output, no token (only the name of its block)."""
        plan = Plan(output / self.folder_name, run_id, max_attempts=self.max_attempts,
                    retry_backoff=self.retry_backoff, path_column=True, prefix=f"{self.table_id} records")
        settings = Settings(self.concurrency, self.connect_timeout, self.read_timeout)
        return Job(plan, settings, self.spec(), self.token_block)


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
