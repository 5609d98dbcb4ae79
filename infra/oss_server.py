"""A small Aliyun OSS look-alike on 127.0.0.1 (or ::1) for end-to-end tests, speaking what the `oss2` SDK uses.

Why not a mock: the downloader talks to OSS through oss2 (and through plain HTTP clients with signed
URLs), so the tests want a real socket, real HTTP/1.1 keep-alive, real signatures and real failures.
This server implements, in memory:

* ListObjects (v1) and ListObjectsV2 with prefix / delimiter / marker / continuation-token /
  start-after / max-keys / encoding-type=url, answering the un-namespaced XML oss2 parses;
* GetObject (whole, or one `Range: bytes=...`) and HeadObject with OSS's headers, including
  x-oss-hash-crc64ecma (CRC-64/ECMA of the whole object, which oss2 checks when enable_crc=True);
* signature checks for every request: V1 header (`OSS id:sig`), V1 query (OSSAccessKeyId/Expires/
  Signature), V4 header (`OSS4-HMAC-SHA256 ...`) and V4 query (x-oss-signature-version=...), with STS
  security tokens. The strings to sign mirror oss2/auth.py, so a client signing bug fails a test;
* OSS's error XML, archive-class objects that refuse GETs, multipart and KMS-encrypted objects
  (whose ETags are not MD5s), and injected faults on object GETs and on listings (infra.faults);
* path-style addressing (`/bucket/key`), a CNAME bucket, or, with `endpoint_host`, virtual-hosted
  addressing (`Host: <bucket>.<endpoint_host>`); and a clock that may be off (`clock_offset`).

Only GET and HEAD are served; objects are added from Python with `put()` / `put_multipart()`.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote_to_bytes
from xml.sax.saxutils import escape

import crcmod

from infra.faults import (LIST_FAULTS, OBJECT_FAULTS, RANGE_ONLY, Fault, FaultBook, shifted_range, short_length,
                          wait_unless_hung_up)

ACCESS_KEY, SECRET_KEY = "oss-test-key-id", "oss-test-key-secret"

# Same CRC-64/ECMA parameters as oss2/utils.py (Crc64), so oss2's enable_crc check agrees with us.
_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)

# Query parameters that V1 signatures include in the canonicalized resource: a copy of
# oss2.auth.ProviderAuth._subresource_key_set (copied, not imported, so the server stays an
# independent judge of what the client signed).
_SUBRESOURCES = frozenset([
    'response-content-type', 'response-content-language', 'response-cache-control', 'logging',
    'response-content-encoding', 'acl', 'uploadId', 'uploads', 'partNumber', 'group', 'link', 'delete',
    'website', 'location', 'objectInfo', 'objectMeta', 'response-expires', 'response-content-disposition',
    'cors', 'lifecycle', 'restore', 'qos', 'referer', 'stat', 'bucketInfo', 'append', 'position',
    'security-token', 'live', 'comp', 'status', 'vod', 'startTime', 'endTime', 'x-oss-process', 'symlink',
    'callback', 'callback-var', 'tagging', 'encryption', 'versions', 'versioning', 'versionId', 'policy',
    'requestPayment', 'x-oss-traffic-limit', 'qosInfo', 'asyncFetch', 'x-oss-request-payer', 'sequential',
    'inventory', 'inventoryId', 'continuation-token', 'worm', 'wormId', 'wormExtend', 'replication',
    'replicationLocation', 'replicationProgress', 'transferAcceleration', 'cname', 'metaQuery',
    'x-oss-ac-source-ip', 'x-oss-ac-subnet-mask', 'x-oss-ac-vpc-id', 'x-oss-ac-forward-allow',
    'resourceGroup', 'style', 'styleName', 'x-oss-async-process', 'regionList',
    'x-oss-write-get-object-response', 'bucketArchiveDirectRead', 'httpsConfig', 'redundancyTransition',
    'x-oss-target-redundancy-type', 'x-oss-redundancy-transition-taskid', 'accessPoint', 'accessPointPolicy',
    'publicAccessBlock', 'x-oss-access-point-name', 'requesterQosInfo', 'qosRequester', 'resourcePoolInfo',
    'resourcePool', 'resourcePoolBuckets',
])

STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive")
# Unrestored objects of these classes cannot be read: OSS answers GET with 403 InvalidObjectState.
_ARCHIVED = frozenset(("Archive", "ColdArchive", "DeepColdArchive"))
# The shared object faults, plus a wrong x-oss-hash-crc64ecma (the client's CRC check must fail).
FAULT_KINDS = {**OBJECT_FAULTS, "bad_crc": {}}
SSE_MODES = ("AES256", "KMS")
_KMS_KEY_ID = "9468da86-3509-4f8d-a61e-6eab1eac2d2c"   # reported for KMS objects, like a real CMK id
_OWNER_ID = "1283641064516515"
# OSS rejects header-signed requests whose date is >15 min off (RequestTimeTooSkewed), and V4 URLs whose
# x-oss-date is >15 min in its future (EC 0002-00000235).
_MAX_SKEW = 15 * 60


@dataclass
class _Object:
    data: bytes
    etag: str                 # quoted: upper-case MD5 hex for simple uploads, "<HEX>-N" for multipart, random for KMS
    last_modified: float
    storage_class: str
    object_type: str = "Normal"   # "Multipart" after a multipart upload
    sse: str | None = None        # x-oss-server-side-encryption
    _crc: int | None = None   # computed on first use; objects may be large and never read

    @property
    def crc(self) -> int:
        if self._crc is None:
            self._crc = _crc64(self.data)
        return self._crc


@dataclass
class _Bucket:
    objects: dict[str, _Object] = field(default_factory=dict)
    keys: list[bytes] = field(default_factory=list)   # UTF-8 keys, sorted: the listing order of OSS


class _OssError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.extra = status, code, message, extra


class OssServer:
    """An in-memory OSS endpoint on <host>:<free port>. Use as a context manager (or start/stop).

    With `cname_bucket`, every request path is a key of that bucket, as for a custom domain bound to it.
    Note oss2 ignores is_cname=True for IP/localhost endpoints (it builds path-style URLs for them), so
    point oss2 at a host name and route it here through a proxy, e.g.
    oss2.Bucket(auth, "http://cdn.example.com", cname_bucket, is_cname=True, proxies=server.proxies);
    plain HTTP clients can use f"{server.endpoint}/{key}" directly.

    With `endpoint_host` (a host name such as "oss-cn-hangzhou.aliyuncs.test"), a request whose Host is
    `<bucket>.<endpoint_host>[:port]` addresses that bucket and its whole path is the key, as on real OSS;
    Host `<endpoint_host>` is path style. Other hosts (IPs, localhost, ...) keep path style (or the CNAME
    bucket). oss2.Bucket(auth, server.named_endpoint, bucket, proxies=server.proxies) builds such URLs.

    `clock_offset` (seconds, settable at any time): the server's clock is time.time() + clock_offset, for
    every expiry and skew check and for the Date header of every answer. `host`: the address to listen
    on, "127.0.0.1" or e.g. "::1".
    """

    def __init__(self, cname_bucket: str | None = None, *, endpoint_host: str | None = None,
                 clock_offset: float = 0.0, host: str = "127.0.0.1"):
        self.cname_bucket = cname_bucket
        self.endpoint_host = endpoint_host.lower().rstrip(".") if endpoint_host else None
        self.clock_offset = clock_offset
        self.host = host
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        # key id -> (secret, STS token or None)
        self._credentials: dict[str, tuple[str, str | None]] = {ACCESS_KEY: (SECRET_KEY, None)}
        self._object_faults = FaultBook(FAULT_KINDS)   # keyed by (bucket, key)
        self._list_faults = FaultBook(LIST_FAULTS)      # keyed by bucket
        self._stopping = threading.Event()               # ends trickles when the server stops
        self._in_flight = 0
        self._max_in_flight = 0
        self.starts: list[float] = []               # time.monotonic() of every request
        self.requests: list[tuple[str, str]] = []   # (method, raw path + query) of every request
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if cname_bucket:
            self.create_bucket(cname_bucket)

    # ----- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "OssServer":
        if self._httpd is None:
            self._stopping.clear()
            httpd = (_QuietServer6 if ":" in self.host else _QuietServer)((self.host, 0), _Handler)
            httpd.daemon_threads = True   # idle keep-alive connections must not block shutdown
            httpd.oss = self              # type: ignore[attr-defined]
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="oss-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._stopping.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "OssServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("OssServer is not started")
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    @property
    def named_endpoint(self) -> str:
        """http://<endpoint_host>:<port>, for oss2 (virtual-hosted URLs) together with `proxies`."""
        if not self.endpoint_host:
            raise RuntimeError("OssServer has no endpoint_host")
        return f"http://{self.endpoint_host}:{self.port}"

    def now(self) -> float:
        """The server's clock."""
        return time.time() + self.clock_offset

    @property
    def proxies(self) -> dict[str, str]:
        """requests/oss2 `proxies` that send requests for any http:// host name to this server."""
        return {"http": self.endpoint}

    # ----- data ----------------------------------------------------------------------------------
    def create_bucket(self, name: str) -> None:
        with self._lock:
            self._buckets.setdefault(name, _Bucket())

    def put(self, bucket: str, key: str, data: bytes, storage_class: str = "Standard", *,
            multipart_parts: int | None = None, sse: str | None = None) -> str:
        """Store an object; return its quoted ETag.

        multipart_parts=N: as if uploaded in N parts of ceil(len/N) bytes (the last shorter): object type
        Multipart and OSS's multipart ETag, "<HEX>-N" (the MD5 of the parts' binary MD5s, then the count).
        sse="KMS": x-oss-server-side-encryption: KMS (and a key id) on GET/HEAD, and an ETag that is not
        the MD5 of the data, as OSS gives KMS-encrypted objects; sse="AES256" keeps the MD5 ETag.
        Overwriting a key always moves its Last-Modified on by at least a second (HTTP dates have
        one-second resolution), so a changed object is visible by date as well as by ETag.
        """
        data = bytes(data)
        if multipart_parts is None:
            return self._store(bucket, key, data, storage_class, None, sse)
        if not isinstance(multipart_parts, int) or multipart_parts < 1:
            raise ValueError("multipart_parts must be an integer >= 1")
        part_size = max(1, -(-len(data) // multipart_parts))
        if multipart_parts > 1 and (multipart_parts - 1) * part_size >= len(data):
            raise ValueError(f"{len(data)} bytes cannot be cut into {multipart_parts} parts of equal size "
                             "(but the last); use put_multipart(part_size=...)")
        return self._store(bucket, key, data, storage_class, part_size, sse)

    def put_multipart(self, bucket: str, key: str, data: bytes, part_size: int = 5 * 1024 * 1024, *,
                      storage_class: str = "Standard", sse: str | None = None) -> str:
        """Store an object as if uploaded in parts of `part_size` bytes (the last shorter), like
        MotoS3.put_multipart; return its quoted ETag, "<HEX>-N"."""
        if not isinstance(part_size, int) or part_size < 1:
            raise ValueError("part_size must be an integer >= 1")
        return self._store(bucket, key, bytes(data), storage_class, part_size, sse)

    def _store(self, bucket: str, key: str, data: bytes, storage_class: str, part_size: int | None,
               sse: str | None) -> str:
        if storage_class not in STORAGE_CLASSES:
            raise ValueError(f"unknown storage class {storage_class!r}; one of {STORAGE_CLASSES}")
        if sse is not None and sse not in SSE_MODES:
            raise ValueError(f"unknown server-side encryption {sse!r}; one of {SSE_MODES}")
        if not key:
            raise ValueError("an object key must not be empty")
        if part_size is not None:
            parts = [data[i: i + part_size] for i in range(0, len(data), part_size)] or [b""]
            digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
            etag, object_type = f"{digest.upper()}-{len(parts)}", "Multipart"
        elif sse == "KMS":
            # Not derived from the data at all, as a client must not assume anything about it.
            etag, object_type = secrets.token_hex(16).upper(), "Normal"
        else:
            etag, object_type = hashlib.md5(data).hexdigest().upper(), "Normal"
        with self._lock:
            if bucket not in self._buckets:
                raise KeyError(f"no bucket {bucket!r}; call create_bucket first")
            b = self._buckets[bucket]
            now, old = self.now(), b.objects.get(key)
            if old is not None and int(now) <= int(old.last_modified):
                now = int(old.last_modified) + 1.0
            if old is None:
                bisect.insort(b.keys, key.encode("utf-8"))
            b.objects[key] = _Object(data, f'"{etag}"', now, storage_class, object_type, sse)
        return f'"{etag}"'

    def add_sts(self, key_id: str, secret: str, token: str) -> None:
        """Accept temporary credentials: requests signed with key_id must carry this security token."""
        with self._lock:
            self._credentials[key_id] = (secret, token)

    # ----- faults and counters -------------------------------------------------------------------
    def add_fault(self, bucket: str, key: str, kind: str, times: int | None = None, **params) -> None:
        """Fault GETs of one object: infra.faults.OBJECT_FAULTS (status, reset, truncate, delay, short,
        wrong_range, ignore_range, trickle) and bad_crc, with their parameters.

        times=None: every GET; else only the first `times` GETs it applies to. The first fault (in the
        order added) that applies and still has uses left wins. wrong_range and ignore_range apply only
        to GETs with a Range header; body faults leave error answers alone. HEADs are never faulted.
        """
        self._object_faults.add((bucket, key), kind, times, **params)

    def add_list_fault(self, bucket: str, kind: str, page: int | None = None, times: int | None = None,
                       **params) -> None:
        """Fault ListObjects (v1 and v2) of a bucket: infra.faults.LIST_FAULTS.

        page: only the list request with this 0-based index since the last clear (see list_count);
        None: any. truncated_no_token and repeat_token always answer IsTruncated=true; repeat_token on
        a first page (no marker/token sent) answers the first item minus its last character as the
        marker (v2: as the token), which lists that first page again.
        """
        self._list_faults.add(bucket, kind, times, page, **params)

    def clear_faults(self) -> None:
        """Drop all faults and reset the counters (GET and list counts, max_in_flight, starts, requests)."""
        self._object_faults.clear()
        self._list_faults.clear()
        with self._lock:
            self._max_in_flight = self._in_flight
            self.starts.clear()
            self.requests.clear()

    def get_count(self, bucket: str, key: str) -> int:
        """Object GETs seen for bucket/key, faulted ones included."""
        return self._object_faults.count((bucket, key))

    def list_count(self, bucket: str) -> int:
        """ListObjects (v1 and v2) requests seen for the bucket, faulted ones included."""
        return self._list_faults.count(bucket)

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The highest number of requests being served at the same time."""
        return self._max_in_flight

    # ----- used by the handler ---------------------------------------------------------------------
    def _begin(self, method: str, path: str) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self.starts.append(time.monotonic())
            self.requests.append((method, path))

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _bucket(self, name: str) -> _Bucket:
        with self._lock:
            b = self._buckets.get(name)
        if b is None:
            raise _OssError(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=name)
        return b

    def _object(self, bucket: _Bucket, key: str) -> _Object | None:
        with self._lock:
            return bucket.objects.get(key)

    def _credential(self, key_id: str) -> tuple[str, str | None]:
        with self._lock:
            cred = self._credentials.get(key_id)
        if cred is None:
            raise _OssError(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.",
                            OSSAccessKeyId=key_id)
        return cred

    def _list(self, bucket: _Bucket, prefix: str, delimiter: str, after: str, max_keys: int):
        """One page of keys > `after` under `prefix`, with keys rolled up into common prefixes.

        Returns (items, truncated) with items [(is_prefix, name)] in UTF-8 byte order. A common prefix
        that sorts <= `after` was returned on an earlier page (a marker/token is the last item of a
        page, which may be a prefix), so its keys are skipped.
        """
        pb, ab, db = prefix.encode(), after.encode(), delimiter.encode()
        items: list[tuple[bool, str]] = []
        last_prefix = None
        with self._lock:
            keys = bucket.keys
            i = bisect.bisect_right(keys, ab) if ab >= pb else bisect.bisect_left(keys, pb)
            while i < len(keys):
                k = keys[i]
                if not k.startswith(pb):
                    break
                j = k.find(db, len(pb)) if db else -1
                if j >= 0:
                    cp = k[: j + len(db)]
                    # UTF-8 never contains 0xff, so cp + b"\xff" sorts after every key starting with cp.
                    i = bisect.bisect_left(keys, cp + b"\xff", i)
                    if cp == last_prefix or cp <= ab:
                        continue
                    if len(items) == max_keys:
                        return items, True
                    items.append((True, cp.decode()))
                    last_prefix = cp
                    continue
                i += 1
                if len(items) == max_keys:
                    return items, True
                items.append((False, k.decode()))
        return items, False


def _v4_encode(text: str, keep_slash: bool) -> str:
    """oss2.auth.ProviderAuthV4.__v4_uri_encode: RFC 3986 unreserved kept, the rest %XX upper-case."""
    return quote(text.encode("utf-8"), safe="-_.~" + ("/" if keep_slash else ""))


def _iso8601(ts: float) -> str:
    # Clamped: a client may send any Expires, and an error answer must not become a 500.
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(min(max(ts, 0), 253402300799)))


def _parse_query(query: bytes) -> list[tuple[str, str]]:
    """Decode `a=1&b&c=x+y` as oss2's clients send it: requests uses `+` for spaces, sign_url `%20`."""
    pairs = []
    for part in query.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        pairs.append((unquote_to_bytes(k.replace(b"+", b" ")).decode("utf-8"),
                      unquote_to_bytes(v.replace(b"+", b" ")).decode("utf-8")))
    return pairs


def _parse_range(value: str | None, size: int, standard: bool) -> tuple[int, int] | None:
    """Resolve a `Range` header to (first, last) inclusive, or None for the whole object.

    OSS's default behaviour: a malformed, multi-part or unsatisfiable range is ignored and the whole
    object is served with 200, and so is a range whose end is past the object's end. With
    `x-oss-range-behavior: standard` an end past the object is clamped and an unsatisfiable start
    answers 416 InvalidRange.
    """
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first_s, sep, last_s = value[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first_s == "":                        # suffix range: the last N bytes
            n = int(last_s)
            if n <= 0:
                return None
            if n > size and not standard:
                return None
            return (max(size - n, 0), size - 1) if size else None
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first < 0 or last < first:
        return None
    if first >= size:
        if standard:
            raise _OssError(416, "InvalidRange", "The requested range cannot be satisfied.")
        return None
    if last >= size:
        if not standard:
            return None
        last = size - 1
    return first, last


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # Clients hanging up mid-response (and our own injected resets) are normal here: no tracebacks.
        pass


class _QuietServer6(_QuietServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, like OSS; every response carries Content-Length

    def version_string(self) -> str:
        return "AliyunOSS"

    def date_time_string(self, timestamp=None) -> str:
        # send_response's Date header: on every answer, errors included, by the server's (offset) clock.
        return formatdate(self.server.oss.now() if timestamp is None else timestamp, usegmt=True)

    def log_message(self, format, *args) -> None:   # quiet: tests read stderr
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    # ----- plumbing --------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        oss: OssServer = self.server.oss  # type: ignore[attr-defined]
        oss._begin(self.command, self.path)
        self.request_id = secrets.token_hex(12).upper()
        try:
            self._drain_body()
            try:
                self._handle(oss)
            except _OssError as e:
                self._send_error(e)
            except (ConnectionError, TimeoutError):
                self.close_connection = True      # the client went away; nothing to answer
            except Exception as e:                # a server bug: answer like OSS would, keep serving
                self.close_connection = True
                self._send_error(_OssError(500, "InternalError", f"{type(e).__name__}: {e}"))
        finally:
            oss._end()

    def _drain_body(self) -> None:
        # Keep the keep-alive stream aligned when a client sends a body we do not use.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
        elif int(self.headers.get("Content-Length") or 0) > 0:
            self.rfile.read(int(self.headers["Content-Length"]))

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("x-oss-request-id", self.request_id)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_error(self, e: _OssError) -> None:
        extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in e.extra.items())
        xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
               f"<Code>{escape(e.code)}</Code><Message>{escape(e.message)}</Message>"
               f"<RequestId>{self.request_id}</RequestId>"
               f"<HostId>{escape(self.headers.get('Host', '127.0.0.1'))}</HostId>{extra}</Error>").encode()
        if self.command == "HEAD":
            # HEAD responses have no body; OSS carries the error XML base64-encoded in x-oss-err,
            # which oss2.exceptions.make_exception decodes.
            self._send(e.status, {"Content-Type": "application/xml", "Content-Length": "0",
                                  "x-oss-err": base64.b64encode(xml).decode()})
        else:
            self._send(e.status, {"Content-Type": "application/xml", "Content-Length": str(len(xml))}, xml)

    def _reset(self) -> None:
        # SO_LINGER(on, 0) makes close() send RST instead of FIN: the client sees "connection reset".
        # The fd only really closes once rfile (a makefile() reference) is closed too.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.connection.close()

    # ----- routing ---------------------------------------------------------------------------------
    def _handle(self, oss: OssServer) -> None:
        # http.server decoded the request line as latin-1; get the bytes back to decode keys as UTF-8.
        raw_path, _, raw_query = self.path.encode("latin-1").partition(b"?")
        if raw_path.lower().startswith((b"http://", b"https://")):
            # Absolute-form target, as sent through an HTTP proxy: how a test points oss2 at a CNAME
            # host name (oss2 ignores is_cname for IP endpoints) without any DNS.
            raw_path = b"/" + raw_path.split(b"/", 3)[3] if raw_path.count(b"/") >= 3 else b"/"
        try:
            pairs = _parse_query(raw_query)
        except UnicodeDecodeError:
            raise _OssError(400, "InvalidArgument", "A query parameter is not valid UTF-8.")
        params = dict(pairs)
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise _OssError(400, "InvalidObjectName", "The object name is not valid UTF-8.")
        if not path.startswith("/"):
            raise _OssError(400, "InvalidURI", "Couldn't parse the specified URI.")
        bucket_name, key = self._address(oss, path)
        if not bucket_name:
            raise _OssError(501, "NotImplemented", "Service-level operations are not implemented by this test server.")
        bucket = oss._bucket(bucket_name)
        _Auth(self, oss, bucket_name, key, pairs, params).check()
        if self.command not in ("GET", "HEAD"):
            raise _OssError(405, "MethodNotAllowed", "The specified method is not allowed against this resource.",
                            Method=self.command)
        if not key:
            unsupported = sorted(k for k in params if k in _SUBRESOURCES and k not in ("continuation-token", "security-token"))
            if unsupported:
                raise _OssError(501, "NotImplemented", f"Bucket sub-resource {unsupported[0]} is not implemented "
                                "by this test server.")
            if self.command == "HEAD":
                self._send(200, {"Content-Length": "0"})
            else:
                self._list_objects(oss, bucket_name, bucket, params)
            return
        self._get_object(oss, bucket_name, bucket, key)

    def _address(self, oss: OssServer, path: str) -> tuple[str, str]:
        """(bucket, key). The Host header decides, also for absolute-form targets (sent via a proxy)."""
        if oss.endpoint_host:
            host = self.headers.get("Host", "").strip().lower()
            if host.startswith("["):
                hostname = host[1: host.find("]")]
            else:
                hostname = host.partition(":")[0]
            if hostname.endswith("." + oss.endpoint_host):
                bucket = hostname[: -len(oss.endpoint_host) - 1]
                if "." in bucket:
                    raise _OssError(400, "InvalidBucketName", "The specified bucket is not valid.", BucketName=bucket)
                return bucket, path[1:]
            if hostname == oss.endpoint_host:
                bucket, _, key = path[1:].partition("/")
                return bucket, key
        if oss.cname_bucket:
            return oss.cname_bucket, path[1:]
        bucket, _, key = path[1:].partition("/")
        return bucket, key

    # ----- listing -----------------------------------------------------------------------------------
    def _list_objects(self, oss: OssServer, name: str, bucket: _Bucket, params: dict[str, str]) -> None:
        fault = oss._list_faults.take(name)
        if fault is not None and self._common_fault(fault):
            return
        v2 = params.get("list-type") == "2"
        prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
        encoding = params.get("encoding-type", "")
        if encoding not in ("", "url"):
            raise _OssError(400, "InvalidArgument", "The encoding-type parameter must be url.",
                            ArgumentName="encoding-type", ArgumentValue=encoding)
        raw_max = params.get("max-keys", "") or "100"
        try:
            max_keys = int(raw_max)
        except ValueError:
            max_keys = -1
        if not 0 < max_keys <= 1000:
            raise _OssError(400, "InvalidArgument", "max-keys must be between 1 and 1000.",
                            ArgumentName="max-keys", ArgumentValue=raw_max)

        def enc(s: str) -> str:
            # encoding-type=url: percent-encode everything but RFC 3986 unreserved characters, so
            # '/', '+', '%', spaces (%20) and non-ASCII all round-trip through oss2's unquote.
            return escape(quote(s, safe="-_.~") if encoding == "url" else s)

        token = params.get("continuation-token", "")
        if v2:
            after = params.get("start-after", "")
            if token:
                try:
                    resume = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
                except (ValueError, UnicodeError):
                    raise _OssError(400, "InvalidArgument", "The continuation token provided is incorrect.",
                                    ArgumentName="continuation-token", ArgumentValue=token)
                after = max(after, resume, key=lambda s: s.encode())
        else:
            after = params.get("marker", "")
        items, truncated = oss._list(bucket, prefix, delimiter, after, max_keys)

        out = ['<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>', f"<Name>{escape(name)}</Name>",
               f"<Prefix>{enc(prefix)}</Prefix>"]
        if v2:
            if "start-after" in params:
                out.append(f"<StartAfter>{enc(params['start-after'])}</StartAfter>")
            if token:
                out.append(f"<ContinuationToken>{enc(token)}</ContinuationToken>")
        else:
            out.append(f"<Marker>{enc(after)}</Marker>")
        out.append(f"<MaxKeys>{max_keys}</MaxKeys><Delimiter>{enc(delimiter)}</Delimiter>")
        if encoding:
            out.append(f"<EncodingType>{encoding}</EncodingType>")

        def next_page(after_item: str) -> str:
            return base64.urlsafe_b64encode(after_item.encode()).decode() if v2 else after_item

        next_value = next_page(items[-1][1]) if truncated else None   # NextContinuationToken / NextMarker
        if fault is not None and fault.kind == "truncated_no_token":
            # An empty element, not none: oss2 cannot parse a truncated page without one (RuntimeError).
            truncated, next_value = True, ""
        elif fault is not None and fault.kind == "repeat_token":
            # The page just asked for, again: the request's own token/marker or, on a first page, the
            # first item minus its last character (no key sorts between the two).
            truncated = True
            next_value = (token if v2 else after) or next_page(items[0][1][:-1] if items else "")
        out.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if next_value is not None:
            element = "NextContinuationToken" if v2 else "NextMarker"
            out.append(f"<{element}>{enc(next_value)}</{element}>")
        if v2:
            out.append(f"<KeyCount>{len(items)}</KeyCount>")
        with_owner = not v2 or params.get("fetch-owner") == "true"
        for is_prefix, item in items:
            if is_prefix:
                continue
            obj = oss._object(bucket, item)
            if obj is None:          # deleted between listing and now: cannot happen (no deletes), but be safe
                continue
            out.append(f"<Contents><Key>{enc(item)}</Key><LastModified>{_iso8601(obj.last_modified)}</LastModified>"
                       f"<ETag>{escape(obj.etag)}</ETag><Type>{obj.object_type}</Type><Size>{len(obj.data)}</Size>"
                       f"<StorageClass>{obj.storage_class}</StorageClass>")
            if with_owner:
                out.append(f"<Owner><ID>{_OWNER_ID}</ID><DisplayName>{_OWNER_ID}</DisplayName></Owner>")
            out.append("</Contents>")
        for is_prefix, item in items:
            if is_prefix:
                out.append(f"<CommonPrefixes><Prefix>{enc(item)}</Prefix></CommonPrefixes>")
        out.append("</ListBucketResult>")
        body = "".join(out).encode("utf-8")
        self._send(200, {"Content-Type": "application/xml", "Content-Length": str(len(body))}, body)

    # ----- objects ---------------------------------------------------------------------------------
    def _get_object(self, oss: OssServer, bucket_name: str, bucket: _Bucket, key: str) -> None:
        fault = None
        if self.command == "GET":
            ranged = "Range" in self.headers
            fault = oss._object_faults.take((bucket_name, key), lambda f: ranged or f.kind not in RANGE_ONLY)
            if fault is not None and self._common_fault(fault):
                return
        obj = oss._object(bucket, key)
        if obj is None:
            raise _OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        if self.command == "GET" and obj.storage_class in _ARCHIVED:
            raise _OssError(403, "InvalidObjectState", "The operation is not valid for the object's state")

        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match.strip().strip('"').upper() != obj.etag.strip('"'):
            raise _OssError(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.",
                            Condition="If-Match")
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None and if_none_match.strip().strip('"').upper() == obj.etag.strip('"'):
            self._send(304, {"ETag": obj.etag, "Content-Length": "0"})
            return

        crc = obj.crc
        if fault and fault.kind == "bad_crc":
            crc ^= 0x5A5A   # any other value: the client's CRC check must fail
        size = len(obj.data)
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": obj.etag,
            "Last-Modified": formatdate(obj.last_modified, usegmt=True),
            "x-oss-object-type": obj.object_type,
            "x-oss-storage-class": obj.storage_class,
            "x-oss-hash-crc64ecma": str(crc),   # always of the whole object, even for ranged GETs
        }
        if obj.sse:
            headers["x-oss-server-side-encryption"] = obj.sse
            if obj.sse == "KMS":
                headers["x-oss-server-side-encryption-key-id"] = _KMS_KEY_ID
        status, body = 200, obj.data
        if self.command == "GET" and not (fault and fault.kind == "ignore_range"):
            standard = self.headers.get("x-oss-range-behavior", "").lower() == "standard"
            rng = _parse_range(self.headers.get("Range"), size, standard)
            if rng is not None:
                first, last = rng
                if fault and fault.kind == "wrong_range":
                    first, last = shifted_range(first, last, size, fault.shift)
                status, body = 206, obj.data[first: last + 1]
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        if fault and fault.kind == "short":
            body = body[: short_length(len(body), fault.fraction)]
        headers["Content-Length"] = str(len(body))

        if fault and fault.kind == "truncate":
            # Promise the full body, send half, hang up: the client sees a short read.
            self.close_connection = True
            self._send(status, headers, body[: len(body) // 2])
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault and fault.kind == "trickle":
            self._trickle(status, headers, body, fault, oss._stopping)
            return
        self._send(status, headers, body)

    def _trickle(self, status: int, headers: dict[str, str], body: bytes, fault: Fault,
                 stopping: threading.Event) -> None:
        """Headers (full Content-Length) at once, then `chunk` bytes every `seconds` until done or the
        client hangs up. Each connection has its own thread, so other requests carry on meanwhile."""
        self._send(status, headers, body[: fault.chunk])
        for start in range(fault.chunk, len(body), fault.chunk):
            if wait_unless_hung_up(self.connection, fault.seconds, stopping):
                self.close_connection = True
                return
            self.wfile.write(body[start: start + fault.chunk])

    def _common_fault(self, fault: Fault) -> bool:
        """Perform a status / reset / delay fault; True when the request is answered (or gone)."""
        if fault.kind == "status":
            raise _OssError(fault.status, fault.code, "injected fault")
        if fault.kind == "reset":
            self._reset()
            return True
        if fault.kind == "delay":
            time.sleep(fault.seconds)
        return False


class _Auth:
    """Checks one request's signature the way OSS does, recomputing what oss2/auth.py signs."""

    def __init__(self, h: _Handler, oss: OssServer, bucket: str, key: str, pairs: list[tuple[str, str]],
                 params: dict[str, str]):
        self.h, self.oss, self.bucket, self.key, self.pairs, self.params = h, oss, bucket, key, pairs, params
        self.headers = h.headers

    def check(self) -> None:
        auth = self.headers.get("Authorization")
        if auth:
            if auth.startswith("OSS4-HMAC-SHA256 "):
                return self._v4(auth[len("OSS4-HMAC-SHA256 "):], None)
            if auth.startswith("OSS "):
                return self._v1_header(auth[4:])
            raise _OssError(400, "InvalidArgument", "Authorization header is invalid or not supported by this server.",
                            ArgumentName="Authorization", ArgumentValue=auth)
        version = self.params.get("x-oss-signature-version")
        if version == "OSS4-HMAC-SHA256":
            return self._v4(None, self.params)
        if version is not None:
            raise _OssError(400, "InvalidArgument", f"Signature version {version} is not supported by this server.",
                            ArgumentName="x-oss-signature-version", ArgumentValue=version)
        if "OSSAccessKeyId" in self.params or "Signature" in self.params:
            return self._v1_query()
        raise _OssError(403, "AccessDenied", "You have no right to access this object because of bucket acl.")

    # ----- shared --------------------------------------------------------------------------------
    def _secret(self, key_id: str, token: str | None) -> str:
        secret, expected = self.oss._credential(key_id)
        if expected is None and token:
            raise _OssError(403, "InvalidSecurityToken", "The security token you provided is invalid.")
        if expected is not None:
            if not token:
                # An STS key id without its token is not a known long-term key.
                raise _OssError(403, "InvalidAccessKeyId",
                                "The OSS Access Key Id you provided does not exist in our records.",
                                OSSAccessKeyId=key_id)
            if not hmac.compare_digest(token, expected):
                raise _OssError(403, "InvalidSecurityToken", "The security token you provided is invalid.")
        return secret

    def _check_skew(self, when: float) -> None:
        now = self.oss.now()
        if abs(now - when) > _MAX_SKEW:
            raise _OssError(403, "RequestTimeTooSkewed",
                            "The difference between the request time and the current time is too large.",
                            MaxAllowedSkewMilliseconds=str(_MAX_SKEW * 1000), RequestTime=_iso8601(when),
                            ServerTime=_iso8601(now), EC="0002-00000504")

    def _check_expiry(self, expires_at: int) -> None:
        now = self.oss.now()
        if expires_at < now:
            raise _OssError(403, "AccessDenied", "Request has expired.", Expires=_iso8601(expires_at),
                            ServerTime=_iso8601(now), EC="0002-00000069")

    @staticmethod
    def _mismatch(key_id: str, string_to_sign: str, **extra: str) -> _OssError:
        return _OssError(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                         "signature you provided. Check your key and signing method.",
                         OSSAccessKeyId=key_id, StringToSign=string_to_sign, **extra)

    # ----- V1 ----------------------------------------------------------------------------------------
    def _v1_string_to_sign(self, date: str) -> str:
        oss_headers = sorted((k.lower(), v) for k, v in self.headers.items() if k.lower().startswith("x-oss-"))
        canon_headers = "".join(f"{k}:{v}\n" for k, v in oss_headers)
        subresources = sorted((k, v) for k, v in self.params.items() if k in _SUBRESOURCES)
        resource = f"/{self.bucket}/{self.key}"
        if subresources:
            resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subresources)
        return "\n".join([self.h.command, self.headers.get("Content-MD5", ""), self.headers.get("Content-Type", ""),
                          date, canon_headers + resource])

    def _v1_verify(self, key_id: str, signature: str, secret: str, date: str) -> None:
        string_to_sign = self._v1_string_to_sign(date)
        expected = base64.b64encode(hmac.new(secret.encode(), string_to_sign.encode("utf-8"), hashlib.sha1).digest())
        if not hmac.compare_digest(expected.decode(), signature):
            raise self._mismatch(key_id, string_to_sign)

    def _v1_header(self, credentials: str) -> None:
        key_id, sep, signature = credentials.rpartition(":")
        if not sep:
            raise _OssError(400, "InvalidArgument", "Authorization header is invalid.",
                            ArgumentName="Authorization", ArgumentValue="OSS " + credentials)
        secret = self._secret(key_id, self.headers.get("x-oss-security-token"))
        date = self.headers.get("x-oss-date") or self.headers.get("Date", "")
        try:
            when = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _OssError(403, "AccessDenied", "OSS authentication requires a valid Date.")
        self._check_skew(when)
        self._v1_verify(key_id, signature, secret, date)

    def _v1_query(self) -> None:
        key_id, expires = self.params.get("OSSAccessKeyId", ""), self.params.get("Expires", "")
        signature = self.params.get("Signature", "")
        if not key_id or not expires or not signature:
            raise _OssError(403, "AccessDenied", "Signed URLs need OSSAccessKeyId, Expires and Signature.")
        secret = self._secret(key_id, self.params.get("security-token") or self.headers.get("x-oss-security-token"))
        try:
            expires_at = int(expires)
        except ValueError:
            raise _OssError(403, "AccessDenied", "Expires is not a number.")
        self._check_expiry(expires_at)
        # sign_url puts Expires where a header-signed request has its Date.
        self._v1_verify(key_id, signature, secret, self.headers.get("x-oss-date") or expires)

    # ----- V4 ----------------------------------------------------------------------------------------
    def _v4(self, header: str | None, query: dict[str, str] | None) -> None:
        if header is not None:
            fields = {}
            for part in header.split(","):
                k, _, v = part.strip().partition("=")
                fields[k] = v
            credential, signature = fields.get("Credential", ""), fields.get("Signature", "")
            additional = [h for h in fields.get("AdditionalHeaders", "").split(";") if h]
            date_time = self.headers.get("x-oss-date", "")
            token = self.headers.get("x-oss-security-token")
        else:
            credential, signature = query.get("x-oss-credential", ""), query.get("x-oss-signature", "")
            additional = [h for h in query.get("x-oss-additional-headers", "").split(";") if h]
            date_time = query.get("x-oss-date", "")
            token = query.get("x-oss-security-token") or self.headers.get("x-oss-security-token")
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aliyun_v4_request" or not signature:
            raise _OssError(400, "InvalidArgument", "Invalid V4 credential or signature.",
                            ArgumentName="Credential", ArgumentValue=credential)
        key_id, scope_date, region, product, _ = parts
        try:
            when = datetime.strptime(date_time, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            raise _OssError(403, "AccessDenied", "x-oss-date is missing or malformed.")
        if scope_date != date_time[:8]:
            raise _OssError(403, "AccessDenied", "The date in the credential scope does not match x-oss-date.")
        secret = self._secret(key_id, token)
        if header is not None:
            self._check_skew(when)
        else:
            try:
                expires = int(query.get("x-oss-expires", ""))
            except ValueError:
                raise _OssError(403, "AccessDenied", "x-oss-expires is missing or malformed.")
            now = self.oss.now()
            if when - now > _MAX_SKEW:
                raise _OssError(403, "AccessDenied", "Request is not yet valid: x-oss-date is later than the "
                                "current time.", RequestTime=_iso8601(when), ServerTime=_iso8601(now),
                                EC="0002-00000235")
            self._check_expiry(int(when) + expires)

        # Canonical request, as oss2.auth.ProviderAuthV4.__get_canonical_request_bytes builds it.
        signed_pairs = [(k, v) for k, v in self.pairs if not (query is not None and k == "x-oss-signature")]
        encoded = dict((_v4_encode(k, False), _v4_encode(v, False)) for k, v in signed_pairs)
        canonical_query = "&".join(f"{k}={v}" if v else k for k, v in sorted(encoded.items()))
        additional_set = {h.lower() for h in additional}
        canon = sorted((k.lower(), v) for k, v in self.headers.items()
                       if k.lower().startswith("x-oss-") or k.lower() in ("content-type", "content-md5")
                       or k.lower() in additional_set)
        canonical_request = "\n".join([
            self.h.command,
            _v4_encode(f"/{self.bucket}/{self.key}", True),
            canonical_query,
            "".join(f"{k}:{v}\n" for k, v in canon),
            ";".join(sorted(additional_set)),
            self.headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD"),
        ])
        scope = f"{scope_date}/{region}/{product}/aliyun_v4_request"
        string_to_sign = "\n".join(["OSS4-HMAC-SHA256", date_time, scope,
                                    hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])
        signing_key = ("aliyun_v4" + secret).encode()
        for part in (scope_date, region, product, "aliyun_v4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise self._mismatch(key_id, string_to_sign, CanonicalRequest=canonical_request)
