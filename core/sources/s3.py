"""S3-compatible stores through boto3: listing and presigned GET URLs."""
from __future__ import annotations

import re
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bx
from botocore.config import Config

from core.sources import CHECK_ATTEMPTS, PAGE_SIZE, Page, Source, StoreConfig, clip
from core.sources.sigv4 import FastPresigner
from core.errors import ListingError, UsageError, retrying_sync
from core.model import RemoteObject

URL_TTL = 3600
# Aliyun OSS's S3-compatible endpoints: s3.oss-<region>.aliyuncs.com or oss-<region>[-internal].aliyuncs.com
_OSS_S3_HOST = re.compile(r"^(?:s3\.)?(oss-[a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken",
           "ExpiredToken", "AllAccessDisabled"}


def client_settings(config: StoreConfig) -> tuple[dict, Config]:
    """boto3 client arguments for the endpoint; OSS's S3 API needs virtual-hosted style and SigV4."""
    host = urlparse(config.endpoint).hostname if config.endpoint else None
    oss = _OSS_S3_HOST.match(host or "")
    style = config.addressing_style
    region = config.region
    if oss:
        style = "virtual" if style == "auto" else style
        region = region or oss.group(1)
    kwargs = {"endpoint_url": config.endpoint, "region_name": region or "us-east-1"}
    cfg = Config(
        signature_version="s3v4",
        s3={"addressing_style": style},
        # boto3 >= 1.36 adds CRC checksums that third-party stores reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=4,  # boto3 only lists, one page at a time; the engine fetches every byte
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1},  # the product's one retry policy retries
    )
    return kwargs, cfg


class S3Source(Source):
    """Any S3-compatible store: boto3 lists, a lean SigV4 presigner signs each GET."""

    def __init__(self, config: StoreConfig):
        self.config = config
        kwargs, cfg = client_settings(config)
        creds = config.credentials
        keys = {"aws_access_key_id": creds.get("access_key_id"),
                "aws_secret_access_key": creds.get("secret_access_key"),
                "aws_session_token": creds.get("session_token")}
        try:
            session = boto3.Session(profile_name=config.profile, **{k: v for k, v in keys.items() if v})
        except bx.ProfileNotFound:
            raise UsageError(f"AWS profile {config.profile!r} not found") from None
        # Listing never reads LastModified: leave it a string instead of dateutil-parsing 1,000 per page
        # (a tenth of a small-object run's CPU).
        session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        self.client = session.client("s3", config=cfg, **kwargs)
        self._fast: FastPresigner | bool | None = None  # built on first use (needs credentials)

    def _explain(self, exc: Exception) -> Exception:
        where = f"bucket {self.config.bucket!r}"
        if isinstance(exc, bx.NoCredentialsError):
            return UsageError("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --profile")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return UsageError(f"cannot reach endpoint {self.config.endpoint or 'AWS S3'}")
        if isinstance(exc, bx.ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                return UsageError(f"{where} not found")
            if code in _DENIED:
                return UsageError(f"access denied to {where} ({code}): check the credentials and permissions")
            return RuntimeError(f"listing {where} failed: {code or exc}")
        if isinstance(exc, bx.BotoCoreError):
            return RuntimeError(f"listing {where} failed: {exc}")
        return exc

    def check(self) -> None:
        try:
            for attempt in retrying_sync(CHECK_ATTEMPTS, 0.5):
                with attempt:
                    self.list_page(None, limit=1)
        except Exception as exc:  # noqa: BLE001 - translated into one clear line
            raise self._explain(exc) from None

    def list_page(self, token: str | None, limit: int = PAGE_SIZE) -> Page:
        args = {"Bucket": self.config.bucket, "Prefix": self.config.prefix, "MaxKeys": limit}
        if token:
            args["ContinuationToken"] = token
        elif self.config.start_after:
            args["StartAfter"] = self.config.start_after
        resp = self.client.list_objects_v2(**args)
        objects = [RemoteObject(o["Key"], o["Size"], o.get("ETag", "").strip('"'), o.get("StorageClass", ""),
                                modified=o.get("LastModified", "")) for o in resp.get("Contents", ())]
        truncated = bool(resp.get("IsTruncated"))
        page = Page(objects, resp.get("NextContinuationToken") if truncated else None, truncated)
        return clip(page, self.config.end_before)

    def signer(self, obj: RemoteObject, again: bool = False):
        key = obj.key
        if self._fast is None:
            self._fast = self._fast_presigner()
        if self._fast:
            url = self._fast.url
            return lambda refresh: url(key)
        params = {"Bucket": self.config.bucket, "Key": key}
        presign = self.client.generate_presigned_url
        return lambda refresh: presign("get_object", Params=params, ExpiresIn=URL_TTL)

    def _fast_presigner(self):
        try:
            return FastPresigner(self.client, self.config.bucket, URL_TTL)
        except Exception:  # noqa: BLE001 - anything unusual: botocore signs every URL
            return False

    def folders(self) -> list[str]:
        """The common prefixes one '/' level below the prefix, in key order (where a sharded job is cut)."""
        seen: set = set()
        found, token = [], None
        while True:
            args = {"Bucket": self.config.bucket, "Prefix": self.config.prefix, "Delimiter": "/"}
            if token:
                args["ContinuationToken"] = token
            try:
                resp = self.client.list_objects_v2(**args)
            except Exception as exc:  # noqa: BLE001
                raise self._explain(exc) from None
            found += [p["Prefix"] for p in resp.get("CommonPrefixes", ())]
            token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
            if not token:
                return found
            if token in seen:
                raise ListingError("the store repeated a continuation token listing the top folders")
            seen.add(token)
