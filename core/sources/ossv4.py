"""Aliyun OSS with signature V4 (a region given): oss2 lists and signs. Without a region core/sources/oss.py
signs V1 itself and does not import oss2."""
from __future__ import annotations

import logging

import oss2
import oss2.exceptions as ox
from oss2.credentials import StaticCredentialsProvider

from core.sources import PAGE_SIZE, Page, StoreConfig, StoreSource, clip
from core.sources.oss import LISTING_CONNECTIONS, URL_TTL, oss_credentials, refused
from core.errors import ListingError, UsageError
from core.model import RemoteObject

# oss2 logs request headers (the Authorization header among them) at DEBUG.
logging.getLogger("oss2").setLevel(logging.WARNING)


class OssV4Source(StoreSource):
    """Aliyun OSS, signature V4: oss2 lists and signs."""

    def __init__(self, config: StoreConfig):
        self.config = config
        key_id, secret, token = oss_credentials(config)
        auth = oss2.ProviderAuthV4(StaticCredentialsProvider(key_id, secret, token))
        try:
            self.bucket = oss2.Bucket(
                auth, config.endpoint, config.bucket, is_cname=config.cname,
                session=oss2.Session(pool_size=LISTING_CONNECTIONS),
                connect_timeout=(config.connect_timeout, config.read_timeout or None), region=config.region)
        except ox.ClientError as exc:
            raise UsageError(f"invalid OSS settings: {exc.body if hasattr(exc, 'body') else exc}") from None

    def _explain(self, exc: Exception) -> Exception:
        where = f"bucket {self.config.bucket!r}"
        if isinstance(exc, ox.RequestError):
            return UsageError(f"cannot reach endpoint {self.config.endpoint}")
        if isinstance(exc, ox.OssError):
            return refused(where, exc.status, exc.code)
        return exc

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

    def folders(self) -> list[str]:
        """The common prefixes one '/' level below the prefix, in key order (where a sharded job is cut)."""
        seen: set = set()
        found, token = [], ""
        while True:
            try:
                result = self.bucket.list_objects_v2(prefix=self.config.prefix, delimiter="/",
                                                     continuation_token=token, max_keys=PAGE_SIZE)
            except Exception as exc:  # noqa: BLE001
                raise self._explain(exc) from None
            found += list(result.prefix_list)
            token = result.next_continuation_token if result.is_truncated else ""
            if not token:
                return found
            if token in seen:
                raise ListingError("the store repeated a continuation token listing the top folders")
            seen.add(token)
