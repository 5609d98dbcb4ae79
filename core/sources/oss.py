"""Aliyun OSS: listing pages and object GETs, both presigned with signature V1 (core/sources/ossv1.py);
listing pages are fetched one at a time over plain http.client and parsed with ElementTree, as the S3
source does. With a region (signature V4) core/sources/ossv4.py lists and signs through oss2 instead.

No oss2 on this path: its import costs ~0.25 s (requests, its crypto), its listing parser ~12 µs per object
and its sign_url ~30 µs per URL. The URLs are oss2's, byte for byte (tests/test_ossv1.py).
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import xml.etree.ElementTree as ET
from urllib.parse import unquote, urlsplit

from core.errors import DownloadError, HTTPStatusError, UsageError, http_error
from core.model import RemoteObject
from core.network import Network
from core.sources import PAGE_SIZE, Page, StoreConfig, StoreSource, store_network, clip, listing_params
from core.sources.keepalive import KeepAliveGet
from core.sources.ossv1 import OssV1Signer

URL_TTL = 3600
LISTING_CONNECTIONS = 4  # oss2 (V4) only lists (one page at a time) and signs; the engine fetches every byte
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken",
          "SecurityTokenExpired"}
_ENDPOINT = re.compile(r"^([a-zA-Z]+://)?[\w.-]+(:\d+)?$")  # what oss2 accepts
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")  # oss2's rule


def oss_credentials(config: StoreConfig) -> tuple[str, str, str]:
    """Key id, secret and optional STS token: from a credentials block, else the environment variables
    that ossutil and oss2's EnvironmentVariableCredentialsProvider read."""
    creds = config.credentials
    key_id = creds.get("access_key_id") or os.environ.get("OSS_ACCESS_KEY_ID", "")
    secret = creds.get("secret_access_key") or os.environ.get("OSS_ACCESS_KEY_SECRET", "")
    token = creds.get("session_token") or os.environ.get("OSS_SESSION_TOKEN", "")
    if not key_id or not secret:
        raise UsageError("no OSS credentials found: set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET"
                         " (and OSS_SESSION_TOKEN for STS)")
    return key_id, secret, token


def _is_ip_or_localhost(host: str) -> bool:
    """oss2's rule for path-style addressing (an IPv6 literal included)."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        try:
            return bool(socket.inet_aton(host))  # oss2 also takes what inet_aton takes ("127.1")
        except OSError:
            return False


def bucket_url(endpoint: str, bucket: str, cname: bool) -> str:
    """The bucket's URL ending in '/', as oss2 builds it: path style for an IP or localhost, the CNAME itself,
    else virtual-hosted (https://bucket.oss-cn-hangzhou.aliyuncs.com/). UsageError for what oss2 refuses."""
    endpoint = endpoint.strip()
    parts = urlsplit(endpoint if endpoint.startswith(("http://", "https://")) else "http://" + endpoint)
    try:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except (TypeError, ValueError):
        host = port = ""
    v6 = ":" in host and _is_ip_or_localhost(host)
    netloc = f"[{host}]{port}" if v6 else host + port
    if not (v6 or _ENDPOINT.match(netloc)):
        raise UsageError(f"invalid OSS settings: the endpoint is not valid: {endpoint}")
    if not _BUCKET_NAME.match(bucket):
        raise UsageError(f"invalid OSS settings: the bucket name is not valid: {bucket!r}")
    if _is_ip_or_localhost(host):
        return f"{parts.scheme}://{netloc}/{bucket}/"
    if cname:
        return f"{parts.scheme}://{netloc}/"
    return f"{parts.scheme}://{bucket}.{netloc}/"


def refused(where: str, status: int, code: str) -> Exception:
    """What OSS's refusal of a listing means to the person (either signature's answer)."""
    if code == "NoSuchBucket":
        return UsageError(f"{where} not found")
    if status == 403 and (code in DENIED or not code):
        return UsageError(f"access denied to {where} ({code or status}): check the credentials and permissions")
    return RuntimeError(f"listing {where} failed: HTTP {status} {code}")


class OssSource(StoreSource):
    """Aliyun OSS, signature V1: presigned listing pages and object GETs."""

    def __init__(self, config: StoreConfig, network: Network | None = None):
        self.config, self.network, self.endpoint = config, network or store_network(config), config.endpoint
        key_id, secret, token = oss_credentials(config)
        if not token:  # as oss2.Auth (StsAuth keeps them as given)
            key_id, secret = key_id.strip(), secret.strip()
        bucket = config.bucket.strip()
        self.origin = bucket_url(config.endpoint, bucket, config.cname)
        self.sign = OssV1Signer(key_id, secret, token, bucket, self.origin, URL_TTL)
        self._get = KeepAliveGet(config.read_timeout or None, self.network)

    def _refused(self, exc: HTTPStatusError) -> Exception:
        return refused(f"bucket {self.config.bucket!r}", exc.status, exc.code)

    def _list(self, token: str | None, limit: int, delimiter: str = "") -> ET.Element:
        status, headers, body = self._get(self.sign.bucket_url(listing_params(self.config, token, limit, delimiter)))
        if status != 200:
            raise http_error(status, body, headers.get("date", ""))
        try:
            return ET.fromstring(body)
        except ET.ParseError:
            raise DownloadError("the store sent a listing that cannot be parsed", retryable=True) from None

    def list_page(self, token: str | None, limit: int = PAGE_SIZE) -> Page:
        return clip(_page(self._list(token, limit)), self.config.end_before)

    def signer(self, obj: RemoteObject, again: bool = False):
        url, key = self.sign.url, obj.key
        return lambda refresh: url(key)

    def folders_page(self, token: str | None) -> Page:
        return _page(self._list(token, PAGE_SIZE, delimiter="/"))


def _decoder(root: ET.Element):
    """encoding-type=url: keys, prefixes and tokens come percent-encoded (decoded as oss2 does: unquote)."""
    return unquote if root.findtext("EncodingType") == "url" else str


def _next_token(root: ET.Element, decode) -> str | None:
    if root.findtext("IsTruncated") != "true":
        return None
    return decode(root.findtext("NextContinuationToken") or "") or None


def _page(root: ET.Element) -> Page:
    """A ListObjectsV2 answer (no XML namespace on OSS); LastModified kept as its text."""
    decode = _decoder(root)
    objects = [RemoteObject(decode(item.findtext("Key") or ""), int(item.findtext("Size") or 0),
                            (item.findtext("ETag") or "").strip('"'), item.findtext("StorageClass") or "",
                            modified=item.findtext("LastModified") or "")
               for item in root.iter("Contents")]
    truncated = root.findtext("IsTruncated") == "true"
    return Page(objects, _next_token(root, decode), truncated,
                [decode(p.findtext("Prefix") or "") for p in root.iter("CommonPrefixes")])
