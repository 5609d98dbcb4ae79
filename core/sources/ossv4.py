"""Aliyun OSS with signature V4 (a region given): oss2 lists and signs. Without a region core/sources/oss.py
signs V1 itself and does not import oss2."""
from __future__ import annotations

import logging

import oss2
import oss2.exceptions as ox
import requests.adapters
from oss2.credentials import StaticCredentialsProvider

from core.sources import PAGE_SIZE, Page, StoreConfig, StoreSource, store_network, clip
from core.sources.oss import LISTING_CONNECTIONS, URL_TTL, oss_credentials, refused
from core.errors import HTTPStatusError, UsageError, as_download_error
from core.model import RemoteObject
from core.network import Network

# oss2 logs request headers (the Authorization header among them) at DEBUG.
logging.getLogger("oss2").setLevel(logging.WARNING)


class OssV4Source(StoreSource):
    """Aliyun OSS, signature V4: oss2 lists and signs."""

    def __init__(self, config: StoreConfig, network: Network | None = None):
        self.config, self.network, self.endpoint = config, network or store_network(config), config.endpoint
        key_id, secret, token = oss_credentials(config)
        auth = oss2.ProviderAuthV4(StaticCredentialsProvider(key_id, secret, token))
        session = oss2.Session(adapter=_NetworkAdapter(self.network.tls.context, LISTING_CONNECTIONS))
        session.session.trust_env = False  # requests' own reading of the environment: core/network.py decides
        try:
            self.bucket = oss2.Bucket(
                auth, config.endpoint, config.bucket, is_cname=config.cname, session=session,
                connect_timeout=(config.connect_timeout, config.read_timeout or None), region=config.region)
        except ox.ClientError as exc:
            raise UsageError(f"invalid OSS settings: {exc.body if hasattr(exc, 'body') else exc}") from None
        self.origin = self.bucket._make_url(config.bucket, "")
        proxy = self.network.proxy_for(self.origin)
        self.bucket.proxies = {"http": proxy.url, "https": proxy.url} if proxy else None

    def close(self) -> None:
        self.bucket.session.session.close()

    def _explain(self, exc: Exception) -> Exception:
        error = as_download_error(exc)  # oss2's exceptions in the product's terms
        return super()._explain(error if isinstance(error, HTTPStatusError) or error.retryable else exc)

    def _refused(self, exc: HTTPStatusError) -> Exception:
        return refused(f"bucket {self.config.bucket!r}", exc.status, exc.code)

    def list_page(self, token: str | None, limit: int = PAGE_SIZE) -> Page:
        result = self.bucket.list_objects_v2(prefix=self.config.prefix, continuation_token=token or "",
                                             start_after="" if token else self.config.start_after,
                                             max_keys=limit)
        objects = [RemoteObject(o.key, o.size, (o.etag or "").strip('"'), o.storage_class or "",
                                modified=o.last_modified or "") for o in result.object_list]
        truncated = bool(result.is_truncated)
        page = Page(objects, (result.next_continuation_token or None) if truncated else None, truncated)
        return clip(page, self.config.end_before)

    def signer(self, obj: RemoteObject, again: bool = False):
        sign, key = self.bucket.sign_url, obj.key
        return lambda refresh: sign("GET", key, URL_TTL, slash_safe=True)

    def folders_page(self, token: str | None) -> Page:
        result = self.bucket.list_objects_v2(prefix=self.config.prefix, delimiter="/", continuation_token=token or "",
                                             max_keys=PAGE_SIZE)
        truncated = bool(result.is_truncated)
        objects = [RemoteObject(o.key, o.size, (o.etag or "").strip('"')) for o in result.object_list]
        return Page(objects, (result.next_continuation_token or None) if truncated else None, truncated,
                    list(result.prefix_list))


class _NetworkAdapter(requests.adapters.HTTPAdapter):
    """requests with the run's SSLContext (core/network.py) instead of certifi's bundle, so oss2's listings
    trust exactly what the engine's GETs trust."""

    def __init__(self, context, pool_size: int):
        self._context = context
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        return host, {"ssl_context": self._context}

    def cert_verify(self, conn, url, verify, cert) -> None:
        pass  # the context decides (requests would add certifi's bundle to it)
