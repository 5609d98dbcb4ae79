"""Where objects come from: the Source protocol, and the stores behind it (S3, OSS). Sources only list and
sign; the engine fetches every byte."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

from core.errors import DownloadError, HTTPStatusError, ProxyRefused, TLSError, UsageError, clock_off
from core.model import RemoteObject
from core.engine import Signer
from core.network import Network

if TYPE_CHECKING:
    from core.engine import Engine

PAGE_SIZE = 1000
CHECK_ATTEMPTS = 3  # the pre-flight listing request, before a run starts


@dataclass(slots=True)
class Page:
    objects: list[RemoteObject]
    next_token: str | None = None
    truncated: bool = False  # the store says more follows (and then next_token must say from where)
    folders: list[str] = field(default_factory=list)  # common prefixes, when listed with a delimiter


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
    connect_timeout: float = 10
    read_timeout: float = 60
    start_after: str = ""   # a shard of the prefix: keys > start_after ...
    end_before: str = ""    # ... and < end_before ('' = no bound)
    ca_bundle: str = ""     # certificates to trust for the store (core/network.py: and after it, the environment's)
    verify_ssl: bool = True
    # access_key_id, secret_access_key, session_token (from a credentials block); empty: environment.
    credentials: dict = field(default_factory=dict, repr=False)
    # a proxy URL from a proxy block (None: the environment's; '': none); like credentials, only in live copies
    proxy: str | None = field(default=None, repr=False)


def clip(page: Page, end_before: str) -> Page:
    """Cut a page at the shard's upper bound; listing is in key order, so nothing after it is ours."""
    if not end_before or not page.objects or page.objects[-1].key < end_before:
        return page
    return Page([o for o in page.objects if o.key < end_before])


class Source:
    """What the runner needs of a place to download from: pages of listed objects, one request each
    (core/listing.py pages, guards and retries them), a signer per object, and which refusals mean an
    expired link. Stores (S3, OSS), Feishu Bitable records, and the files the plugin pushes."""

    ordered = True  # keys come in strictly increasing order (object stores): the listing guard checks it
    lists_by_request = True  # a page is a request (it takes one of the engine's slots); not a pushed batch
    network: Network | None = None  # the proxies and certificates of its requests; None: the environment's

    def check(self) -> bool | None:
        """Raise UsageError with one clear line when nothing can be listed (before a run starts). Returns
        whether anything is listed under the prefix (None: not known)."""
        return None

    def list_page(self, token: str | None) -> Page:
        """One listing page after `token` (None: the first page), one request: failures are raised as they
        are (core/listing.py classifies and retries them)."""
        raise NotImplementedError

    def folders_page(self, token: str | None) -> Page:
        """One page of the listing one '/' level below the prefix: its `folders` are where a sharded job is
        cut (core/listing.py folders()). Stores only."""
        raise UsageError("this source has no folders to shard by")

    def upcoming(self, objects: list[RemoteObject]) -> None:
        """The objects about to be fetched, in order (a source may prepare their links in batches)."""

    def signer(self, obj: RemoteObject, again: bool = False) -> Signer:
        """Gives a signed GET URL for the object; `again`: a later attempt (a source may want a fresh link
        from the start)."""
        raise NotImplementedError

    def link_expired(self, err: HTTPStatusError) -> bool:
        """Whether a refused GET means the URL expired (so re-sign and try again)."""
        return err.expired

    def covers(self, key: str) -> bool:
        """Whether the listing takes in this key (a mirror deletes only local files within it)."""
        return False

    def retry_possible(self) -> bool:
        """Whether round 2 can get anywhere now (the plugin's url mode: only while the plugin is there)."""
        return True

    def close(self) -> None:
        """Release what the source holds open (API sessions); the engine is still running."""


@dataclass(frozen=True)
class Deferred:
    """A source made once the run's engine is started (one that calls an API on the engine's loop), and the
    network that engine needs."""
    make: Callable[[Engine], Source]
    network: Network | None = None

    def __call__(self, engine: Engine) -> Source:
        return self.make(engine)


def within(config: StoreConfig, key: str) -> bool:
    """Whether a config's listing takes in the key: its prefix, its shard's key range."""
    return key.startswith(config.prefix) and (not config.start_after or key > config.start_after) and \
        (not config.end_before or key < config.end_before)


def listing_params(config: StoreConfig, token: str | None, limit: int, delimiter: str = "") -> list[tuple[str, str]]:
    """The query of one ListObjectsV2 page (S3 and OSS ask it the same way), keys URL-encoded in the answer."""
    params = [("list-type", "2"), ("prefix", config.prefix), ("max-keys", str(limit)), ("encoding-type", "url")]
    if delimiter:
        params.append(("delimiter", delimiter))
    if token:
        params.append(("continuation-token", token))
    elif config.start_after:
        params.append(("start-after", config.start_after))
    return params


class StoreSource(Source):
    """A bucket's source (S3, OSS): checked before a run by listing one key; failures explained in one line.
    `network`: the proxies and certificates of the store's requests, its listings' and the engine's GETs."""

    network: Network

    def check(self) -> bool:
        from core.errors import retrying_sync
        try:
            for attempt in retrying_sync(CHECK_ATTEMPTS, 0.5):
                with attempt:
                    page = self.list_page(None, limit=1)
            return bool(page.objects or page.truncated)
        except Exception as exc:  # noqa: BLE001 - translated into one clear line
            raise self._explain(exc) from None

    endpoint = ""    # the store as the person named it, for messages
    origin = ""      # a URL of the store's requests (which proxy they take)

    def close(self) -> None:
        """The listing connections."""
        listing = getattr(self, "_get", None)
        if listing is not None:
            listing.close()

    def _explain(self, exc: Exception) -> Exception:
        """The one line a failed check means (UsageError), or the exception itself."""
        if isinstance(exc, UsageError):
            return exc
        if isinstance(exc, HTTPStatusError) and not isinstance(exc, ProxyRefused):
            return clock_off(exc) or self._refused(exc)
        if isinstance(exc, DownloadError) and exc.retryable or isinstance(exc, (ProxyRefused, TLSError)):
            return self.network.unreachable(f"endpoint {self.endpoint}", self.origin, exc)
        return exc

    def covers(self, key: str) -> bool:
        return within(self.config, key)

    def _refused(self, exc: HTTPStatusError) -> Exception:
        """What the store's refusal of the check's listing means."""
        return RuntimeError(f"listing bucket {getattr(self, 'config', None) and self.config.bucket!r} failed: {exc}")


def store_network(config: StoreConfig) -> Network:
    """The proxies and certificates of a store's requests: its config's, over the environment's."""
    return Network.for_store(config.ca_bundle, config.verify_ssl, config.backend, proxy=config.proxy,
                             proxy_source="the proxy block")


def make_source(config: StoreConfig) -> Source:
    """A new source of the store (its caller owns it and closes it)."""
    if not config.bucket:
        raise UsageError("--bucket is required")
    if config.backend == "oss" and not config.endpoint:
        raise UsageError("--endpoint is required for --backend oss (e.g. https://oss-cn-hangzhou.aliyuncs.com)")
    network = store_network(config)
    if config.backend == "s3":
        from core.sources.s3 import S3Source
        return S3Source(config, network)
    if config.backend == "oss" and config.region:  # signature V4: through oss2
        from core.sources.ossv4 import OssV4Source
        return OssV4Source(config, network)
    if config.backend == "oss":
        from core.sources.oss import OssSource
        return OssSource(config, network)
    raise UsageError(f"unknown backend {config.backend!r} (choose s3 or oss)")


def open_source(job, credentials: dict | None = None, token: str | None = None, proxy: str | None = None,
                proxy_source: str = "--proxy"):
    """A job's live source from its data (core/model.py Job) and the secrets its blocks hold, when it names
    any (tasks/runs.py reads them): a store's credentials, Feishu's token (else PERSONAL_BASE_TOKEN), the
    proxy. For a Feishu job, a Deferred source: it is made on the run's engine."""
    spec = job.source
    if isinstance(spec, StoreConfig):
        return make_source(replace(spec, credentials=credentials or {}, proxy=proxy))
    # A FeishuSpec exists only once its module is imported (by whoever made the job, or by unpickling it), so an
    # S3 or OSS run does not import the Feishu source (~8 ms of an empty prefix's start-up).
    feishu = sys.modules.get("core.sources.feishu")
    if feishu is not None and isinstance(spec, feishu.FeishuSpec):
        token = token or feishu.token_from_env()
        if not token:
            raise UsageError("no personal base token: set PERSONAL_BASE_TOKEN (environment or .env)"
                             " or name a Prefect Secret block")
        return Deferred(lambda engine: spec.source(token, engine), Network.for_api(proxy, proxy_source))
    raise TypeError(f"no source for {type(spec).__name__}")
