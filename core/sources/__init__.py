"""Where objects come from: the Source protocol, and the stores behind it (S3, OSS). Sources only list and
sign; the engine fetches every byte."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
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
    network: Network | None = None  # the proxies and certificates of its requests; None: the environment's

    def check(self) -> bool | None:
        """Raise UsageError with one clear line when nothing can be listed (before a run starts). Returns
        whether anything is listed under the prefix (None: not known)."""
        return None

    def list_page(self, token: str | None) -> Page:
        """One listing page after `token` (None: the first page), one request: failures are raised as they
        are (core/listing.py classifies and retries them)."""
        raise NotImplementedError

    def upcoming(self, objects: list[RemoteObject]) -> None:
        """The objects about to be fetched, in order (a source may prepare their links in batches)."""

    def signer(self, obj: RemoteObject, again: bool = False) -> Signer:
        """Gives a signed GET URL for the object; `again`: a later attempt (a source may want a fresh link
        from the start)."""
        raise NotImplementedError

    def link_expired(self, err: HTTPStatusError) -> bool:
        """Whether a refused GET means the URL expired (so re-sign and try again)."""
        return err.expired

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

    def _explain(self, exc: Exception) -> Exception:
        """The one line a failed check means (UsageError), or the exception itself."""
        if isinstance(exc, UsageError):
            return exc
        if isinstance(exc, HTTPStatusError) and not isinstance(exc, ProxyRefused):
            return clock_off(exc) or self._refused(exc)
        if isinstance(exc, DownloadError) and exc.retryable or isinstance(exc, (ProxyRefused, TLSError)):
            proxy = self.network.proxy_for(self.origin)
            via = f" through the proxy {proxy}" if proxy and str(proxy) not in str(exc) else ""
            return UsageError(f"cannot reach endpoint {self.endpoint}{via}: {exc}")
        return exc

    def _refused(self, exc: HTTPStatusError) -> Exception:
        """What the store's refusal of the check's listing means."""
        return RuntimeError(f"listing bucket {getattr(self, 'config', None) and self.config.bucket!r} failed: {exc}")


def store_network(config: StoreConfig) -> Network:
    """The proxies and certificates of a store's requests: its config's, over the environment's."""
    return Network.for_store(config.ca_bundle, config.verify_ssl, config.backend, proxy=config.proxy,
                             proxy_source="the proxy block")


_made: dict[tuple, Source] = {}


def make_source(config: StoreConfig) -> Source:
    """The store for a config; one per config, network and process, because a boto3/oss2 client costs ~0.3 s
    of CPU to build and the CLI's pre-flight check and the flow would otherwise build two."""
    if not config.bucket:
        raise UsageError("--bucket is required")
    if config.backend == "oss" and not config.endpoint:
        raise UsageError("--endpoint is required for --backend oss (e.g. https://oss-cn-hangzhou.aliyuncs.com)")
    network = store_network(config)
    key = tuple((f.name, tuple(sorted(config.credentials.items())) if f.name == "credentials"
                 else getattr(config, f.name)) for f in fields(config)) + (network,)
    if key not in _made:
        if config.backend == "s3":
            from core.sources.s3 import S3Source
            _made[key] = S3Source(config, network)
        elif config.backend == "oss" and config.region:  # signature V4: through oss2
            from core.sources.ossv4 import OssV4Source
            _made[key] = OssV4Source(config, network)
        elif config.backend == "oss":
            from core.sources.oss import OssSource
            _made[key] = OssSource(config, network)
        else:
            raise UsageError(f"unknown backend {config.backend!r} (choose s3 or oss)")
    return _made[key]
