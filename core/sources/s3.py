"""Any S3-compatible store (AWS S3, Aliyun OSS's S3 API, MinIO, SeaweedFS, Ceph…): listing pages and object
GETs, both presigned by core/sources/sigv4.py; listing pages are fetched here (one at a time, plain
http.client: core/sources/keepalive.py) and parsed with ElementTree, object GETs by the engine.

No boto3 on this path: its import and client cost ~0.4 s, and its listing parser ~30 µs per object. botocore
is imported only to find credentials that are not given directly (a profile, SSO, an instance role).
"""
from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from urllib.parse import unquote_plus, urlsplit

from core.errors import DownloadError, HTTPStatusError, UsageError, http_error
from core.model import RemoteObject
from core.network import Network
from core.sources import PAGE_SIZE, Page, StoreConfig, StoreSource, store_network, clip, listing_params
from core.sources.keepalive import KeepAliveGet
from core.sources.sigv4 import Credentials, SigV4Signer

URL_TTL = 3600
# Aliyun OSS's S3-compatible endpoints: s3.oss-<region>.aliyuncs.com or oss-<region>[-internal].aliyuncs.com
_OSS_S3_HOST = re.compile(r"^(?:s3\.)?(oss-[a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
           "AllAccessDisabled"}


def addressing(config: StoreConfig, region: str) -> tuple[str, str]:
    """(origin, bucket path) of the bucket: path style (http://host:9000, /bucket) or virtual-hosted
    (https://bucket.host, ''). Aliyun OSS's S3 API needs virtual-hosted; AWS uses it for DNS-safe names;
    other stores (any endpoint given) path style, unless asked otherwise."""
    style = config.addressing_style
    if config.endpoint:
        parts = urlsplit(config.endpoint)
        scheme, netloc = parts.scheme or "https", parts.netloc
        if style == "auto":
            style = "virtual" if _OSS_S3_HOST.match(parts.hostname or "") else "path"
    else:
        scheme, netloc = "https", f"s3.{region}.amazonaws.com"
        if style == "auto":
            style = "virtual" if _DNS_BUCKET.match(config.bucket) else "path"
    if style == "virtual":
        return f"{scheme}://{config.bucket}.{netloc}", ""
    return f"{scheme}://{netloc}", "/" + config.bucket


def signing_region(config: StoreConfig) -> str:
    host = urlsplit(config.endpoint).hostname if config.endpoint else ""
    oss = _OSS_S3_HOST.match(host or "")
    return (config.region or (oss.group(1) if oss else "") or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


def credentials(config: StoreConfig, network: Network) -> Credentials | object:
    """The store's keys: given (a credentials block), from the environment, or botocore's chain (profile,
    SSO, an assumed role, instance role: refreshable, so a function), whose own requests (STS, SSO) take the
    run's proxy; not the store's certificates nor --no-verify-ssl (they carry secrets, to AWS's endpoints:
    botocore's own reading, AWS_CA_BUNDLE included). UsageError when there are none."""
    given = config.credentials
    if given.get("access_key_id") and given.get("secret_access_key"):
        return given["access_key_id"], given["secret_access_key"], given.get("session_token", "")
    env = os.environ
    if not config.profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN", "")
    import botocore.config
    import botocore.exceptions
    import botocore.session
    try:
        session = botocore.session.Session(profile=config.profile)
        session.set_default_client_config(botocore.config.Config(
            proxies=network.proxies.botocore(os.environ.get("AWS_ENDPOINT_URL_STS") or "https://sts.amazonaws.com")))
        found = session.get_credentials()
    except botocore.exceptions.ProfileNotFound:
        raise UsageError(f"AWS profile {config.profile!r} not found") from None
    if found is None:
        raise UsageError("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --profile")

    def current() -> Credentials:
        frozen = found.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token or ""
    return current


def configured_endpoint(config: StoreConfig) -> str | None:
    """The endpoint given, else the AWS SDKs' environment variables (AWS_ENDPOINT_URL_S3, then
    AWS_ENDPOINT_URL, unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS), as boto3 and the AWS CLI read them."""
    if config.endpoint:
        return config.endpoint
    env = os.environ
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


class S3Source(StoreSource):
    """Any S3-compatible store: presigned listing pages and object GETs."""

    def __init__(self, config: StoreConfig, network: Network | None = None):
        endpoint = configured_endpoint(config)
        if endpoint != config.endpoint:
            config = dataclasses.replace(config, endpoint=endpoint)
        self.config, self.network = config, network or store_network(config)
        self.endpoint = config.endpoint or "AWS S3"
        self.region = signing_region(config)
        self._credentials = credentials(config, self.network)
        self._address(self.region)
        self._get = KeepAliveGet(config.read_timeout or None, self.network)

    def _address(self, region: str) -> None:
        self.region = region
        self.origin, self.bucket_path = addressing(self.config, region)
        self.sign = SigV4Signer(self._credentials, region, URL_TTL)

    # -- listing ---------------------------------------------------------------------------------------
    def _refused(self, exc: HTTPStatusError) -> Exception:
        where = f"bucket {self.config.bucket!r}"
        if exc.code == "NoSuchBucket" or (exc.status == 404 and not exc.code):
            return UsageError(f"{where} not found")
        if exc.code in _DENIED or exc.status == 403:
            return UsageError(f"access denied to {where} ({exc.code or exc.status}): check the credentials"
                              " and permissions")
        return RuntimeError(f"listing {where} failed: {exc}")

    def list_page(self, token: str | None, limit: int = PAGE_SIZE, delimiter: str = "") -> Page:
        root = self._get_xml(listing_params(self.config, token, limit, delimiter))
        page = _page(root)
        return page if delimiter else clip(page, self.config.end_before)

    def _get_xml(self, params: list[tuple[str, str]]) -> ET.Element:
        for redirected in (False, True):
            status, headers, body = self._get(self.sign.url(self.origin, self.bucket_path or "/", params))
            if status == 200:
                try:
                    return ET.fromstring(body)
                except ET.ParseError:
                    raise DownloadError("the store sent a listing that cannot be parsed", retryable=True) from None
            region = headers.get("x-amz-bucket-region") or _xml_text(body, "Region")
            if not redirected and not self.config.endpoint and region and region != self.region:
                self._address(region)  # AWS: the bucket lives in another region; its URLs change with it
                continue
            raise http_error(status, body, headers.get("date", ""))
        raise AssertionError("unreachable")

    def folders_page(self, token: str | None) -> Page:
        return self.list_page(token, delimiter="/")

    # -- objects ---------------------------------------------------------------------------------------
    def signer(self, obj: RemoteObject, again: bool = False):
        url, origin, path = self.sign.url, self.origin, self.bucket_path + "/" + obj.key
        return lambda refresh: url(origin, path)


def _ns(root: ET.Element) -> str:
    return root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _page(root: ET.Element) -> Page:
    """A ListObjectsV2 answer: keys URL-decoded (encoding-type=url), LastModified kept as its text."""
    ns = _ns(root)
    decode = root.findtext(f"{ns}EncodingType") == "url"
    k, s, e, c, m = (f"{ns}Key", f"{ns}Size", f"{ns}ETag", f"{ns}StorageClass", f"{ns}LastModified")
    objects = []
    for item in root.iter(f"{ns}Contents"):
        key = item.findtext(k) or ""
        objects.append(RemoteObject(unquote_plus(key) if decode else key, int(item.findtext(s) or 0),
                                    (item.findtext(e) or "").strip('"'), item.findtext(c) or "",
                                    modified=item.findtext(m) or ""))
    truncated = root.findtext(f"{ns}IsTruncated") == "true"
    folders = [unquote_plus(p.findtext(f"{ns}Prefix") or "") if decode else p.findtext(f"{ns}Prefix") or ""
               for p in root.iter(f"{ns}CommonPrefixes")]
    return Page(objects, (root.findtext(f"{ns}NextContinuationToken") or None) if truncated else None, truncated,
                folders)


def _xml_text(body: bytes, tag: str) -> str:
    found = re.search(rb"<" + tag.encode() + rb">([^<]{1,64})</", body or b"")
    return found.group(1).decode(errors="replace") if found else ""
