"""The words the runner speaks: what a listing gives (RemoteObject), what a run plans (Plan, Settings), what
one attempt came to (Outcome) and what a run counts (Counts). Plain data: picklable, no live objects."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.filters import Filter

ARCHIVE_CLASSES = {"archive", "coldarchive", "deepcoldarchive", "glacier", "deep_archive"}
UNKNOWN_SIZE = -1  # a source that gives no size (some plugin links): the response's length is checked
MANIFEST_NAME = ".oss-manifest.sqlite"
FAILED_CSV_NAME = ".oss-failed.csv"
CHANGES_CSV_NAME = ".oss-changes.csv"
NEW, CHANGED_IN_STORE, CHANGED_LOCALLY, DELETED = "new", "changed in store", "changed locally", "deleted"


@dataclass(slots=True, frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str = ""
    storage_class: str = ""
    path: str = ""  # relative local path chosen by the source (Feishu naming rules); '' = from the key
    modified: str | float = ""  # the listing's LastModified, as the store wrote it (parsed only when needed)

    @property
    def needs_restore(self) -> bool:
        return self.storage_class.lower() in ARCHIVE_CLASSES


@dataclass(slots=True)
class Outcome:
    """The result of trying one object in this run."""
    key: str
    size: int
    etag: str
    attempts: int
    error: str | None = None
    retryable: bool = False
    local: bool = False  # failed here (the local file system), not at the store: a mirror then deletes nothing
    bytes_fetched: int = 0
    path: str = ""
    mtime_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def tool_file(name: str, shard: str | None) -> str:
    """The tool's own file name, per shard when the job is split: .oss-manifest.sqlite → .oss-manifest-s1.sqlite."""
    if not shard:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{shard}{dot}{ext}"


@dataclass(frozen=True)
class Plan:
    """What a run selects and where it writes."""
    output: Path
    run_id: str
    strip: str = ""                      # the part of each key not reproduced below the output
    filter: Filter = Filter()            # which listed objects are taken (core/filters.py); empty: all
    max_attempts: int = 3
    retry_backoff: float = 1.0
    shard: str | None = None
    path_column: bool = False            # failure CSV also names the local path (items keyed by id)
    label: str = ""                      # the listing's name: the failure CSV's key for an incomplete listing
                                         # (a store's: the prefix listed; Feishu's: "tbl… records")
    fail_if_empty: bool = False          # nothing selected is a failure (exit 3), not a warning
    delete: bool = False                 # a mirror: local files no listed key maps to go (core/mirror.py)
    max_delete: int | None = None        # more to delete than this: nothing is deleted, the run fails
    backup_dir: Path | None = None       # deleted and replaced files are moved here instead
    report_changes: bool = True          # .oss-changes.csv (not for the plugin's jobs: each is a new folder)

    @property
    def manifest_name(self) -> str:
        return tool_file(MANIFEST_NAME, self.shard)

    @property
    def failed_csv_name(self) -> str:
        return tool_file(FAILED_CSV_NAME, self.shard)

    @property
    def changes_csv_name(self) -> str:
        return tool_file(CHANGES_CSV_NAME, self.shard)


@dataclass(frozen=True)
class Settings:
    """How hard the engine may push: the one place concurrency and the limits are given to it.
    `concurrency`: requests in flight at most (the engine's semaphore and connection pool); everything else
    that runs at once derives from it there (core/rounds.py: twice as many workers, so a worker whose file is
    being committed leaves its request slot to another)."""
    concurrency: int = 5
    connect_timeout: float = 10
    read_timeout: float = 60
    max_requests_per_second: float | None = None
    low_speed_limit: float = 1024
    low_speed_time: float = 60
    fsync: bool = False  # each file durable before its final name (default: one sync before the report)
    bwlimit: str | None = None  # rclone's --bwlimit for all object GETs of the process (core/engine/limits.py)


@dataclass(frozen=True)
class Job:
    """A whole run as data — picklable, and without secrets: what to read (a source spec: StoreConfig, or
    FeishuSpec), what to plan, how hard to push. `secret` names where the source's secret is kept (a Prefect
    block) when it is not in the process's environment; `proxy_block` where the proxy URL is (it may hold a
    password), when the environment's is not the one."""
    plan: Plan
    settings: Settings
    source: object
    secret: str | None = None
    proxy_block: str | None = None


_COUNTED = ("listed", "filtered_out", "already_present", "downloaded", "failed", "restore_required", "bytes",
            "retrying", "retried", "new", "changed_in_store", "changed_locally", "deleted")


@dataclass
class Counts:
    """What a run (or one batch of it) counted: for the summary, and live, from several threads, for progress.
    `retrying`/`retried`: round 2's own count, so its progress has a total and an end."""
    listed: int = 0
    filtered_out: int = 0
    already_present: int = 0
    downloaded: int = 0
    failed: int = 0
    restore_required: int = 0
    bytes: int = 0
    retrying: int = 0
    retried: int = 0
    new: int = 0               # the change report (README "Mirroring"): never here before
    changed_in_store: int = 0  # its listed size or ETag differs from what was downloaded before
    changed_locally: int = 0   # the local file's size or time differs from what was left (or it is gone)
    deleted: int = 0           # local files no listed key maps to, removed (or moved to the backup folder)
    phase: str = "listing and downloading"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def done(self) -> int:
        """Objects that are here: fetched now or already present."""
        return self.downloaded + self.already_present

    def add(self, other: "Counts | None" = None, **deltas: int) -> "Counts":
        with self._lock:
            for name in _COUNTED:
                setattr(self, name, getattr(self, name) + (getattr(other, name) if other else 0)
                        + deltas.get(name, 0))
        return self

    def __getstate__(self):  # a batch's counts cross process boundaries in Prefect; locks do not
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())
