"""Backends list a bucket page by page and sign GET URLs; the transfer engine does the rest."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tasks.errors import HTTPStatusError, UsageError
from tasks.keys import RemoteObject
from tasks.transfer import Signer

PAGE_SIZE = 1000


@dataclass(slots=True)
class Page:
    objects: list[RemoteObject]
    next_token: str | None = None


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
    credentials: dict = field(default_factory=dict, repr=False)


class Backend(Protocol):
    def check(self) -> None:
        """Raise UsageError with one clear line if the bucket cannot be listed."""

    def list_page(self, token: str | None) -> Page:
        """One listing page (at most PAGE_SIZE keys) after `token` (None: the first page)."""

    def signer(self, key: str) -> Signer:
        """A function giving a fresh signed GET URL for the key."""

    def link_expired(self, err: HTTPStatusError) -> bool:
        """Whether a refused GET means the URL expired (so re-sign and try again)."""


def make_backend(config: StoreConfig) -> Backend:
    if not config.bucket:
        raise UsageError("--bucket is required")
    if config.backend == "s3":
        from tasks.backends.s3 import S3Backend
        return S3Backend(config)
    if config.backend == "oss":
        from tasks.backends.oss import OssBackend
        return OssBackend(config)
    raise UsageError(f"unknown backend {config.backend!r} (choose s3 or oss)")
