"""moto's S3 server on loopback, with fault injection, for tests and the demo.

Faults are injected by a small WSGI middleware in front of moto, on path-style requests:

* object GETs (`add_fault`): status codes with S3 error XML, connection resets, truncated bodies,
  delays, and answers that lie: a short body with a matching Content-Length, a 206 for another range,
  a 200 that ignores Range, a body that trickles in;
* ListObjects v1/v2 (`add_list_fault`): errors, resets, delays, and pages whose continuation lies.

`put_multipart` stores an object through a real multipart upload, so its ETag is not an MD5.
"""
from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, quote, unquote, urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from infra.faults import (BODY_FAULTS, LIST_FAULTS, OBJECT_FAULTS, RANGE_ONLY, Fault, FaultBook, shifted_range,
                          short_length, wait_unless_hung_up)

ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"
MIN_PART_SIZE = 5 * 1024 * 1024          # S3's (and moto's) smallest part but the last

# Query parameters of ListObjects / ListObjectsV2 and of presigned URLs (SigV2; SigV4's are X-Amz-*);
# a bucket GET with any other (location, versions, uploads, acl...) is another bucket operation and
# is neither counted nor faulted as a listing.
_LIST_PARAMS = frozenset({"list-type", "prefix", "delimiter", "marker", "max-keys", "encoding-type",
                          "continuation-token", "start-after", "fetch-owner", "x-id",
                          "optional-object-attributes", "AWSAccessKeyId", "Signature", "Expires"})
# moto's continuation tokens are server-side state; the "first page again" token of a repeat_token
# fault cannot be one of them, so it is ours: the middleware turns it back into start-after.
_FIRST_PAGE_TOKEN = "injected-repeat-first-page."
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class _Handler(MotoRequestHandler):
    def log_request(self, *args, **kwargs):
        pass

    def make_environ(self):
        environ = super().make_environ()
        environ["infra.reset"] = self._reset
        return environ

    def _reset(self) -> None:
        # SO_LINGER(on, 0) makes close() send RST instead of FIN: the client sees "connection reset".
        # The fd only really closes once rfile (a makefile() reference) is closed too.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.connection.close()


class FaultInjector:
    """WSGI middleware: counts requests and performs the faults its two FaultBooks hand out."""

    def __init__(self, app, stopping: threading.Event):
        self.app = app
        self.stopping = stopping
        self.objects = FaultBook(OBJECT_FAULTS)   # keyed by (bucket, key)
        self.listings = FaultBook(LIST_FAULTS)    # keyed by bucket
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.starts: list[float] = []  # monotonic start time of every request

    def __call__(self, environ, start_response):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.starts.append(time.monotonic())
        try:
            return self._route(environ, start_response)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _route(self, environ, start_response):
        if environ["REQUEST_METHOD"] != "GET":
            return list(self.app(environ, start_response))
        # PATH_INFO is already percent-decoded, as UTF-8 bytes seen through latin-1 (PEP 3333).
        bucket, _, key = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")[1:].partition("/")
        if key:
            ranged = "HTTP_RANGE" in environ
            fault = self.objects.take((bucket, key), lambda f: ranged or f.kind not in RANGE_ONLY)
            if fault is None:
                return list(self.app(environ, start_response))
            return self._object_fault(fault, environ, start_response)
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if bucket and all(k in _LIST_PARAMS or k.lower().startswith("x-amz-") for k, _ in query):
            environ = _resolve_first_page_token(environ, query)
            fault = self.listings.take(bucket)
            if fault is None:
                return list(self.app(environ, start_response))
            return self._list_fault(fault, environ, dict(query), start_response)
        return list(self.app(environ, start_response))

    def _call(self, environ) -> tuple[str, list[tuple[str, str]], bytes]:
        """moto's whole answer to `environ`: (status line, headers, body)."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
        body = b"".join(self.app(environ, capture))
        return captured["status"], captured["headers"], body

    # ----- faults both kinds of request share ----------------------------------------------------
    def _common(self, fault: Fault, environ, start_response):
        """Perform status / reset / delay; None when the fault is not one of those."""
        if fault.kind == "delay":
            time.sleep(fault.seconds)
            return list(self.app(environ, start_response))
        if fault.kind == "status":
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                    f"<Message>injected fault</Message></Error>").encode()
            start_response(f"{fault.status} Injected", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(body)))])
            return [body]
        if fault.kind == "reset":
            environ["infra.reset"]()
            # werkzeug takes this for a client that went away: it answers nothing and logs nothing.
            raise ConnectionResetError("injected reset")
        return None

    # ----- object GETs --------------------------------------------------------------------------------
    def _object_fault(self, fault: Fault, environ, start_response):
        done = self._common(fault, environ, start_response)
        if done is not None:
            return done
        if fault.kind == "ignore_range":
            environ = {k: v for k, v in environ.items() if k != "HTTP_RANGE"}
        status, headers, body = self._call(environ)
        if fault.kind not in BODY_FAULTS or not status.startswith("2"):
            start_response(status, headers)      # errors, 304s: the fault has nothing to bend
            return [body]
        if fault.kind == "wrong_range" and status.startswith("206"):
            first, last, size = _content_range(headers)
            first, last = shifted_range(first, last, size, fault.shift)
            status, headers, body = self._call(dict(environ, HTTP_RANGE=f"bytes={first}-{last}"))
        if fault.kind == "short":
            body = body[: short_length(len(body), fault.fraction)]
            headers = _with_length(headers, len(body))
        if fault.kind == "truncate":
            start_response(status, headers)
            return _then_close(body[: len(body) // 2], environ["werkzeug.socket"])
        write = start_response(status, headers)
        if fault.kind == "trickle":
            self._trickle(write, body, fault, environ["werkzeug.socket"])
            return []
        return [body]

    def _trickle(self, write, body: bytes, fault: Fault, sock: socket.socket) -> None:
        """Headers (full Content-Length) at once, then `chunk` bytes every `seconds` until done or the
        client hangs up. Each request has its own thread here, so the others carry on meanwhile."""
        write(body[: fault.chunk])
        for start in range(fault.chunk, len(body), fault.chunk):
            if wait_unless_hung_up(sock, fault.seconds, self.stopping):
                return
            write(body[start: start + fault.chunk])

    # ----- listings ---------------------------------------------------------------------------------------
    def _list_fault(self, fault: Fault, environ, params: dict[str, str], start_response):
        done = self._common(fault, environ, start_response)
        if done is not None:
            return done
        status, headers, body = self._call(environ)
        if status.startswith("200"):
            body = _lie_about_next_page(fault.kind, body, params)
            headers = _with_length(headers, len(body))
        start_response(status, headers)
        return [body]


def _then_close(half: bytes, sock: socket.socket):
    """Send the headers (full Content-Length) and half the body, then hang up."""
    yield half
    sock.shutdown(socket.SHUT_RDWR)


def _with_length(headers: list[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(length))]


def _content_range(headers: list[tuple[str, str]]) -> tuple[int, int, int]:
    value = next(v for k, v in headers if k.lower() == "content-range")     # "bytes 10-19/1000"
    span, _, size = value.split(" ", 1)[1].partition("/")
    first, _, last = span.partition("-")
    return int(first), int(last), int(size)


def _resolve_first_page_token(environ, query: list[tuple[str, str]]):
    """Turn our first-page token back into what it stands for: start after the first item's parent."""
    token = dict(query).get("continuation-token", "")
    if not token.startswith(_FIRST_PAGE_TOKEN):
        return environ
    after = base64.urlsafe_b64decode(token[len(_FIRST_PAGE_TOKEN):]).decode("utf-8")
    query = [(k, v) for k, v in query if k not in ("continuation-token", "start-after")] + [("start-after", after)]
    return dict(environ, QUERY_STRING=urlencode(query, quote_via=quote))


def _lie_about_next_page(kind: str, body: bytes, params: dict[str, str]) -> bytes:
    """Rewrite moto's real ListBucketResult: say it is truncated and drop or replace its next token."""
    v2 = params.get("list-type") == "2"
    element = "NextContinuationToken" if v2 else "NextMarker"
    body = re.sub(rb"<IsTruncated>[^<]*</IsTruncated>", b"<IsTruncated>true</IsTruncated>", body, count=1)
    body = re.sub(rb"<%s>[^<]*</%s>|<%s/>" % ((element.encode(),) * 3), b"", body)
    if kind == "truncated_no_token":
        return body
    sent = params.get("continuation-token" if v2 else "marker", "")
    if sent:
        token = sent
    else:
        # A first page: a token for "everything after the first item minus its last character",
        # which is this same page again (no key sorts between the two).
        after = _first_item(body, params.get("encoding-type") == "url")[:-1]
        token = _FIRST_PAGE_TOKEN + base64.urlsafe_b64encode(after.encode()).decode() if v2 else after
    if not v2 and params.get("encoding-type") == "url":
        token = quote(token, safe="")          # S3 url-encodes NextMarker; botocore decodes it
    value = token.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return body.replace(b"<IsTruncated>true</IsTruncated>",
                        f"<IsTruncated>true</IsTruncated><{element}>{value}</{element}>".encode(), 1)


def _first_item(body: bytes, url_encoded: bool) -> str:
    """The first key or common prefix of a listing page, in S3's (UTF-8 byte) order; "" if empty."""
    root = ET.fromstring(body)
    items = [e.text or "" for e in root.iterfind(f"{_S3_NS}Contents/{_S3_NS}Key")]
    items += [e.text or "" for e in root.iterfind(f"{_S3_NS}CommonPrefixes/{_S3_NS}Prefix")]
    if url_encoded:
        items = [unquote(i) for i in items]
    return min(items, key=lambda s: s.encode(), default="")


class MotoS3(ThreadedMotoServer):
    """ThreadedMotoServer on 127.0.0.1 and a free port, with fault injection and request counters."""
    backend = "s3"

    def __init__(self):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.injector: FaultInjector | None = None
        self._stopping = threading.Event()

    def _server_entry(self) -> None:
        self.injector = FaultInjector(DomainDispatcherApplication(create_backend_app), self._stopping)
        self._server = make_server(self._ip_address, self._port, self.injector, True,
                                   request_handler=_Handler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def start(self) -> None:
        self._stopping.clear()
        super().start()

    def stop(self) -> None:
        self._stopping.set()        # ends trickles in progress
        super().stop()

    def __enter__(self) -> "MotoS3":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          s3={"addressing_style": "path"}))

    # ----- data ----------------------------------------------------------------------------------------
    def put_multipart(self, bucket: str, key: str, data: bytes, part_size: int = MIN_PART_SIZE) -> str:
        """Store `data` through a real multipart upload in `part_size` parts; return its ETag ("<hex>-N").

        Overwriting a key always moves its Last-Modified on by at least a second (HTTP dates have
        one-second resolution), so a changed object is visible by date as well as by ETag.
        """
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)")
        client = self.client()
        try:
            previous = client.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
        except ClientError:
            previous = None
        if previous is not None:
            while time.time() < parsedate_to_datetime(previous).timestamp() + 1:
                time.sleep(0.05)
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, start in enumerate(range(0, max(len(data), 1), part_size), 1):
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                      Body=data[start: start + part_size])["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        return client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                MultipartUpload={"Parts": parts})["ETag"]

    # ----- faults and counters -------------------------------------------------------------------
    def add_fault(self, bucket: str, key: str, kind: str, times: int | None = None, **params) -> None:
        """Fault GETs of one object (see infra.faults.OBJECT_FAULTS for kinds and defaults).

        times=None: every GET; else only the first `times` GETs it applies to. The first fault (in the
        order added) that applies and still has uses left wins. wrong_range and ignore_range apply only
        to GETs with a Range header; short, wrong_range, ignore_range, trickle and truncate leave error
        answers alone. HEADs are never faulted.
        """
        self.injector.objects.add((bucket, key), kind, times, **params)

    def add_list_fault(self, bucket: str, kind: str, page: int | None = None, times: int | None = None,
                       **params) -> None:
        """Fault ListObjects (v1 and v2) of a bucket (see infra.faults.LIST_FAULTS).

        page: only the list request with this 0-based index since the last clear (see list_count);
        None: any. truncated_no_token and repeat_token always answer IsTruncated=true; repeat_token on
        a first page (no marker/token sent) answers a marker/token that yields that first page again.
        """
        self.injector.listings.add(bucket, kind, times, page, **params)

    def clear_faults(self) -> None:
        """Drop object and listing faults; reset GET and list counts, starts and max_in_flight."""
        self.injector.objects.clear()
        self.injector.listings.clear()
        with self.injector.lock:
            self.injector.starts.clear()
            self.injector.max_in_flight = 0

    def get_count(self, bucket: str, key: str) -> int:
        """Object GETs seen for bucket/key since the last clear, faulted ones included."""
        return self.injector.objects.count((bucket, key))

    def list_count(self, bucket: str) -> int:
        """ListObjects (v1 and v2) requests seen for the bucket since the last clear, faulted ones included."""
        return self.injector.listings.count(bucket)

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        return self.injector.in_flight

    @property
    def max_in_flight(self) -> int:
        return self.injector.max_in_flight
