"""Backends list a bucket page by page and sign GET URLs; the transfer engine does the rest."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol

from tasks.errors import HTTPStatusError, UsageError
from tasks.keys import RemoteObject
from tasks.transfer import Signer

PAGE_SIZE = 1000
CHECK_ATTEMPTS = 3  # the pre-flight listing request, before a run starts


@dataclass(slots=True)
class Page:
    objects: list[RemoteObject]
    next_token: str | None = None
    truncated: bool = False  # the store says more follows (and then next_token must say from where)


@dataclass(slots=True)
class StoreConfig:
    """Where to read from. Holds no secrets: credentials come from the environment, a profile or a block."""
    backend: str = "s3"
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str = "auto"
    cname: bool = False
    concurrency: int = 5
    connect_timeout: float = 10
    read_timeout: float = 60
    start_after: str = ""   # a shard of the prefix: keys > start_after ...
    end_before: str = ""    # ... and < end_before ('' = no bound)
    # access_key_id, secret_access_key, session_token (from a credentials block); empty: environment.
    credentials: dict = field(default_factory=dict, repr=False)


def clip(page: Page, end_before: str) -> Page:
    """Cut a page at the shard's upper bound; listing is in key order, so nothing after it is ours."""
    if not end_before or not page.objects or page.objects[-1].key < end_before:
        return page
    return Page([o for o in page.objects if o.key < end_before])


class Backend(Protocol):
    ordered: bool  # keys come in strictly increasing order (object stores): the listing guard checks it

    def check(self) -> None:
        """Raise UsageError with one clear line if the bucket cannot be listed."""

    def list_page(self, token: str | None) -> Page:
        """One listing page (at most PAGE_SIZE keys) after `token` (None: the first page), one request:
        failures are raised as they are (tasks/listing.py classifies and retries them)."""

    def signer(self, key: str) -> Signer:
        """A function giving a fresh signed GET URL for the key."""

    def link_expired(self, err: HTTPStatusError) -> bool:
        """Whether a refused GET means the URL expired (so re-sign and try again)."""

    def folders(self) -> list[str]:
        """The common prefixes one '/' level below the prefix, in key order (to split a job into shards)."""


_made: dict[tuple, Backend] = {}


def make_backend(config: StoreConfig) -> Backend:
    """The backend for a config; one per config and process, because a boto3/oss2 client costs ~0.3 s
    of CPU to build and the CLI's pre-flight check and the flow would otherwise build two."""
    if not config.bucket:
        raise UsageError("--bucket is required")
    key = tuple((f.name, tuple(sorted(config.credentials.items())) if f.name == "credentials"
                 else getattr(config, f.name)) for f in fields(config))
    if key not in _made:
        if config.backend == "s3":
            from tasks.backends.s3 import S3Backend
            _made[key] = S3Backend(config)
        elif config.backend == "oss":
            from tasks.backends.oss import OssBackend
            _made[key] = OssBackend(config)
        else:
            raise UsageError(f"unknown backend {config.backend!r} (choose s3 or oss)")
    return _made[key]
