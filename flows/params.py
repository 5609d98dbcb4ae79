"""The flows' parameters (objects, Feishu attachments): one model each for the CLI, the Prefect UI form and
deployments; no Prefect in here, so the command lines can run the core with them alone (--no-prefect)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from core.filters import Filter, filter_of, parse_age, parse_size
from core.model import Job, Plan, Settings
from core.naming import UNCATEGORIZED, clean_segment
from core.paths import parse_suffixes, prefix_folder
from core.sources import StoreConfig

if TYPE_CHECKING:
    from core.sources.feishu import FeishuSpec

MAX_CONCURRENCY = 256


def _readable_bwlimit(value: str | None) -> str | None:
    from core.engine.limits import parse_bwlimit
    parse_bwlimit(value)  # refused with the parameter's name before any run
    return value


BwLimit = Annotated[str | None, AfterValidator(_readable_bwlimit)]


class DownloadParams(BaseModel):
    """Copy every object under a bucket/prefix to a local folder; reruns resume."""
    model_config = ConfigDict(extra="forbid")

    backend: Literal["s3", "oss"] = Field(
        "s3", title="Backend",
        description="s3: any S3-compatible store (SigV4); oss: Aliyun OSS (V1 signatures; V4 with a region).")
    endpoint: str | None = Field(
        None, title="Endpoint URL",
        description="The store's URL, e.g. https://oss-cn-hangzhou.aliyuncs.com or http://127.0.0.1:9000; empty:"
                    " AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL if set, else AWS S3 (s3 only).")
    bucket: str = Field(..., title="Bucket", min_length=1)
    prefix: str = Field("", title="Prefix", description="Only keys starting with this, e.g. data/2024/ (keys rarely"
                                                        " start with '/'); empty: the whole bucket.")
    output: str = Field("./downloads", title="Output folder",
                        description="Local folder; keys land below it without the prefix's folder part.")
    concurrency: int = Field(5, ge=1, le=MAX_CONCURRENCY, title="Concurrency",
                             description="Requests in flight at most, listing included (1-256).")
    include_suffix: list[str] = Field(
        default_factory=list, title="Include suffixes",
        description="Comma-separated suffixes or glob patterns, case-insensitive: .jpg,.png or"
                    " '*.jpg,photos/**/*.png' (* within a folder name, ** across folders); empty: all.")
    exclude: list[str] = Field(
        default_factory=list, title="Exclude",
        description="Comma-separated suffixes or glob patterns, as include: a key matching one is not taken (nor"
                    " deleted locally with delete).")
    min_size: str | None = Field(None, title="Min size", description="Only objects at least this large: 512k, 1M,"
                                                                      " 2G (binary units; a bare number is KiB, as rclone).")
    max_size: str | None = Field(None, title="Max size", description="Only objects at most this large (as min size).")
    min_age: str | None = Field(None, title="Min age", description="Only objects last modified longer ago than this:"
                                                                    " 7d, 12h, 30m, or before a date (2024-01-31).")
    max_age: str | None = Field(None, title="Max age", description="Only objects last modified within this: 7d, 12h,"
                                                                    " or after a date (2024-01-31).")
    delete: bool = Field(False, title="Delete (mirror)",
                         description="Mirror: delete local files below the output that no listed key maps to"
                                     " (within the prefix and the filters), as rclone sync; never when the"
                                     " listing was incomplete or a download failed for a reason another run could"
                                     " change.")
    max_delete: int | None = Field(None, ge=0, title="Max delete",
                                   description="With delete: more files than this to delete, delete none and fail"
                                               " the run (exit 1).")
    backup_dir: str | None = Field(None, title="Backup folder",
                                   description="With delete: move deleted files here instead (their paths kept),"
                                               " and the old copy of every file a download replaces; outside the"
                                               " output.")
    dry_run: bool = Field(False, title="Dry run",
                          description="List and preview (count, size, already present, to fetch, largest, first"
                                      " keys); download and create nothing.")
    max_attempts: int = Field(3, ge=1, le=10, title="Max attempts",
                              description="Attempts per object in all, round 1 + round 2 (1-10).")
    region: str | None = Field(None, title="Region",
                               description="Signing region (S3; OSS: switches to V4 signatures, e.g. cn-hangzhou).")
    profile: str | None = Field(None, title="AWS profile", description="S3: a named profile from ~/.aws/config.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", title="S3 addressing style",
        description="S3 bucket addressing: auto is path style for an endpoint given, virtual-hosted for AWS and"
                    " OSS's S3 API.")
    cname: bool = Field(False, title="OSS custom domain", description="The endpoint is a CNAME bound to the bucket.")
    connect_timeout: float = Field(10, gt=0, title="Connect timeout (s)", description="Per request, seconds.")
    read_timeout: float = Field(60, ge=0, title="Read timeout (s)",
                                description="Seconds without data before a request fails; 0: no limit.")
    low_speed_limit: float = Field(1024, ge=0, title="Low-speed limit (bytes/s)",
                                   description="A download slower than this for the low-speed time fails as too"
                                               " slow and is retried (curl's rule); 0: no limit.")
    low_speed_time: float = Field(60, gt=0, title="Low-speed time (s)",
                                  description="How long a download may stay below the low-speed limit.")
    fsync: bool = Field(False, title="Sync every file",
                        description="Make each file durable before it gets its final name (slower); by default"
                                    " the run syncs the output once before it reports, so exit 0 still means on"
                                    " disk.")
    retry_backoff: float = Field(1.0, ge=0, le=60, title="Retry backoff (s)",
                                 description="First wait of round 2's exponential backoff, seconds.")
    bwlimit: BwLimit = Field(
        None, title="Bandwidth limit",
        description="rclone's --bwlimit for all object downloads of the run together: 10M (MiB/s), 512k, off, or a"
                    " timetable in the worker's local time, \"08:00,4M 19:00,off\"; a sharded run gives each shard"
                    " its share. Empty: no cap.")
    max_requests_per_second: float | None = Field(
        None, gt=0, title="Max requests per second",
        description="For stores that throttle: at most this many request starts per second in this process;"
                    " empty: no cap.")
    credentials_block: str | None = Field(
        None, title="Credentials block",
        description="Name of a Prefect block with the store's keys: AWS Credentials (prefect-aws), OSS Credentials,"
                    " or a Secret holding JSON {access_key_id, secret_access_key, session_token}; 'type/name'"
                    " picks one type. Empty: environment variables / profile of the worker.")
    ca_bundle: str = Field("", title="CA bundle",
                           description="A PEM file (or folder) of the certificates to trust for the store; empty:"
                                       " AWS_CA_BUNDLE (s3), REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE,"
                                       " then the system's.")
    no_verify_ssl: bool = Field(False, title="Do not verify TLS certificates",
                                description="Accept any certificate from the store (never for the Feishu API);"
                                            " insecure, for tests only.")
    proxy_block: str | None = Field(
        None, title="Proxy block",
        description="Name of a Prefect Secret block holding the proxy URL (http://user:password@host:port; '' for"
                    " none). Empty: the worker's environment (OSSDL_PROXY, HTTPS_PROXY, HTTP_PROXY, NO_PROXY).")
    start_after: str = Field("", title="Shard start (exclusive)", description="Only keys after this one.")
    end_before: str = Field("", title="Shard end (exclusive)", description="Only keys before this one.")
    shard: str | None = Field(None, title="Shard name", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                              description="Set by the sharded flow: its own manifest and failure CSV.")
    fail_if_empty: bool = Field(False, title="Fail if nothing is selected",
                                description="Fail the run (command line: exit 3) when the prefix lists no objects"
                                            " or the suffix filter leaves none; otherwise it only warns (exit 0).")

    @field_validator("include_suffix", "exclude", mode="before")
    @classmethod
    def _split_suffixes(cls, value):
        return list(parse_suffixes(value))

    @field_validator("min_size", "max_size")
    @classmethod
    def _size_readable(cls, value, info):
        if value:
            parse_size(value, "")  # refused with its parameter's name, before any run
        return value

    @field_validator("min_age", "max_age")
    @classmethod
    def _age_readable(cls, value, info):
        if value:
            parse_age(value, "", 0.0)
        return value

    def filter(self, now: float | None = None) -> Filter:
        return filter_of(self.include_suffix, self.exclude, self.min_size, self.max_size, self.min_age,
                         self.max_age, now)

    def store_config(self) -> StoreConfig:
        """Where to read from; without its secret (see job() and credentials_block)."""
        return StoreConfig(backend=self.backend, bucket=self.bucket, prefix=self.prefix, endpoint=self.endpoint,
                           region=self.region, profile=self.profile, addressing_style=self.addressing_style,
                           cname=self.cname,
                           connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                           start_after=self.start_after, end_before=self.end_before,
                           ca_bundle=self.ca_bundle, verify_ssl=not self.no_verify_ssl)

    def settings(self) -> Settings:
        return Settings(self.concurrency, self.connect_timeout, self.read_timeout, self.max_requests_per_second,
                        self.low_speed_limit, self.low_speed_time, self.fsync, self.bwlimit)

    def plan(self, run_id: str) -> Plan:
        from core.mirror import check_backup_dir
        output = Path(self.output).expanduser().resolve()
        backup = Path(self.backup_dir).expanduser().resolve() if self.backup_dir else None
        check_backup_dir(backup, output)
        return Plan(output, run_id, prefix_folder(self.prefix), self.filter(), self.max_attempts, self.retry_backoff,
                    self.shard, label=self.prefix, fail_if_empty=self.fail_if_empty, delete=self.delete,
                    max_delete=self.max_delete, backup_dir=backup)

    @property
    def where(self) -> str:
        """What is listed, for people: s3://bucket/prefix."""
        return f"{self.backend}://{self.bucket}/{self.prefix}"

    @property
    def empty_hint(self) -> str:
        """What to suggest when the prefix lists nothing."""
        if self.prefix.startswith("/"):
            return f"keys rarely start with '/': did you mean --prefix {self.prefix.lstrip('/')}?"
        return ""

    def job(self, run_id: str) -> Job:
        """The run as data for the runner and its tasks: no secret, only the name of its block."""
        return Job(self.plan(run_id), self.settings(), self.store_config(), self.credentials_block, self.proxy_block)


def with_deployment_defaults(params: DownloadParams) -> DownloadParams:
    """A deployment run given only some fields of `params` (UI, API, `prefect deployment run --params`) keeps
    the deployment's values for the others: Prefect replaces the whole `params` object, so without this a run
    given only a bucket would lose the deployment's credentials_block, output and concurrency."""
    from prefect.runtime import deployment
    if not deployment.id:
        return params
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        defaults = client.read_deployment(deployment.id).parameters.get("params") or {}
    missing = {k: v for k, v in defaults.items() if k not in params.model_fields_set}
    if not missing:
        return params
    from prefect import get_run_logger
    get_run_logger().info("params not given, the deployment's values kept: %s", ", ".join(sorted(missing)))
    return DownloadParams.model_validate({**missing, **params.model_dump(include=params.model_fields_set)})


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
    connect_timeout: float = Field(10, gt=0, title="Connect timeout (s)", description="Per request, seconds.")
    read_timeout: float = Field(60, ge=0, title="Read timeout (s)", description="0: no limit.")
    dry_run: bool = Field(False, title="Dry run", description="List and preview only.")
    proxy_block: str | None = Field(
        None, title="Proxy block",
        description="Name of a Prefect Secret block holding the proxy URL; empty: the worker's environment.")
    bwlimit: BwLimit = Field(None, title="Bandwidth limit",
                                description="rclone's --bwlimit for the attachment downloads: 10M, 512k, off, or"
                                            " \"08:00,4M 19:00,off\" (local time). Empty: no cap.")
    page_size: int = Field(500, ge=1, le=500, title="Records per page", description="Listing page size (max 500).")

    @property
    def base_url(self) -> str:
        from core.sources.feishu import (
            DOMAINS,  # not imported by object runs (tasks/runs.py)
        )
        return self.api_base_url or DOMAINS[self.domain]

    @property
    def folder_name(self) -> str:
        return clean_segment(self.job_name or self.table_id)

    def spec(self) -> FeishuSpec:
        from core.sources.feishu import BitableTable, FeishuSpec
        table = BitableTable(self.app_token, self.table_id, self.view_id, list(self.attachment_fields), self.page_size)
        return FeishuSpec(table, tuple(self.name_fields), self.name_separator, tuple(self.folder_fields),
                          self.uncategorized_folder, self.base_url, self.api_requests_per_second,
                          self.connect_timeout, self.read_timeout, self.retry_backoff)

    def job(self, run_id: str, output: Path) -> Job:
        """The run as data: the job folder below the output, no token (only the name of its block)."""
        plan = Plan(output / self.folder_name, run_id, max_attempts=self.max_attempts,
                    retry_backoff=self.retry_backoff, path_column=True, label=f"{self.table_id} records")
        settings = Settings(self.concurrency, self.connect_timeout, self.read_timeout, bwlimit=self.bwlimit)
        return Job(plan, settings, self.spec(), self.token_block, self.proxy_block)
