"""A fake Feishu (Lark) Open API on 127.0.0.1, for end-to-end tests of the Bitable attachment downloader.

aiohttp.web in a background thread with its own event loop; start/stop from sync code or use it as a
context manager. It serves:

* ``GET /open-apis/bitable/v1/apps/{app}/tables/{table}/fields``   (paged)
* ``GET /open-apis/bitable/v1/apps/{app}/tables/{table}/records``  (paged, optional ``view_id``)
* ``GET /open-apis/drive/v1/medias/batch_get_tmp_download_url?file_tokens=..``
* ``GET /open-apis/drive/v1/medias/{file_token}/download``         (bearer; the cell's ``url``)
* ``GET /download/{file_token}?expires=..&sig=..``                 (the temporary link; no bearer)

Every ``/open-apis`` call needs ``Authorization: Bearer <token>`` and passes a token bucket per app
token (``rate_per_second``, burst 2). ``batch_get_tmp_download_url`` refuses a whole batch (403) when
one of its files is denied to the token, as Feishu does. Media downloads honour ``Range`` and the injected
faults (``MEDIA_FAULTS``: "status" | "reset" | "truncate" | "delay" | "short" | "trickle").
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from aiohttp import web

from infra.faults import OBJECT_FAULTS, Fault, FaultBook, short_length

GOOD_TOKEN = "pt-test-personal-base-token"

FIELD_ATTACHMENT, FIELD_TEXT, FIELD_NUMBER, FIELD_SINGLE_SELECT, FIELD_MULTI_SELECT = 17, 1, 2, 3, 4

# Feishu error codes used here
CODE_OK = 0
CODE_MISSING_TOKEN = 99991661
CODE_INVALID_TOKEN = 99991663
CODE_RATE_LIMITED = 99991400
CODE_VALIDATION = 99992402
CODE_BASE_NOT_FOUND = 1254040
CODE_TABLE_NOT_FOUND = 1254041
CODE_FORBIDDEN = 1061004
CODE_FILE_DELETED = 1061044
CODE_URL_EXPIRED = 1061045
CODE_NOT_FOUND = 1061002
CODE_INTERNAL = 1061001

MSG_MISSING_TOKEN = "Missing access token for authorization"
MSG_INVALID_TOKEN = "Invalid access token for authorization. Please make a request with token attached."

BURST = 2
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 20, 500


# The shared object faults this server performs on media downloads; a status fault answers Feishu's
# JSON error (429 with the rate-limit code), so it takes no S3-style error `code`.
MEDIA_FAULTS = {"status": {"status": 500},
                **{kind: OBJECT_FAULTS[kind] for kind in ("reset", "truncate", "delay", "short", "trickle")}}


@dataclass
class _File:
    token: str
    data: bytes
    name: str
    mime: str
    deleted: bool = False
    denied: bool = False


@dataclass
class _Table:
    fields: list[dict]
    records: list[dict] = field(default_factory=list)   # {"record_id", "fields", "views"}


def _json(code: int, msg: str, data: dict | None = None, status: int = 200, headers: dict | None = None
          ) -> web.Response:
    body: dict = {"code": code, "msg": msg}
    if data is not None:
        body["data"] = data
    return web.json_response(body, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> int:
    padded = token + "=" * (-len(token) % 4)
    offset = json.loads(base64.urlsafe_b64decode(padded.encode()))["o"]
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(token)
    return offset


class FeishuServer:
    """Fake Feishu Open API. ``base_url`` is the Open API root; API paths start with ``/open-apis``."""

    def __init__(self, token: str = GOOD_TOKEN, rate_per_second: float = 2.0, link_ttl: float = 300.0,
                 max_tmp_tokens: int = 5, host_name: str = "127.0.0.1"):
        self.token = token
        # The name in base_url and in every link handed out; a name under .test is reached only through the
        # test proxy (infra/proxy.py), like an Open API that resolves only inside a company network.
        self.host_name = host_name
        self.rate_per_second = rate_per_second
        self.link_ttl = link_ttl
        self.max_tmp_tokens = max_tmp_tokens
        self.counters: dict[str, int] = {}
        self.tmp_url_tokens: list[str] = []
        self.auth_headers_seen: list[str] = []
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(16)
        self._issued: dict[str, set[str]] = {}    # file_token -> expiry stamps of the links handed out
        self._revoked: set[tuple[str, str]] = set()
        self._expire_next: dict[str, int] = {}
        self._apps: dict[str, dict[str, _Table]] = {}
        self._files: dict[str, _File] = {}
        self._file_app: dict[str, str] = {}          # file_token -> app_token (learned in add_record)
        self._faults = FaultBook(MEDIA_FAULTS)          # keyed by file token; counts media GETs
        self._buckets: dict[str, tuple[float, float]] = {}   # key -> (tokens, last monotonic)
        self._media_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.reset_counters()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FeishuServer":
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # pragma: no cover - startup failure surfaces in start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="feishu-fake", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            self._thread = None
            raise errors[0]
        return self

    async def _start_site(self) -> None:
        app = web.Application(middlewares=[self._open_api_middleware])
        app.router.add_get("/open-apis/bitable/v1/apps/{app_token}/tables/{table_id}/fields", self._fields)
        app.router.add_get("/open-apis/bitable/v1/apps/{app_token}/tables/{table_id}/records", self._records)
        app.router.add_get("/open-apis/drive/v1/medias/batch_get_tmp_download_url", self._tmp_urls)
        app.router.add_get("/open-apis/drive/v1/medias/{file_token}/download", self._media_download)
        app.router.add_get("/download/{file_token}", self._tmp_download)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "FeishuServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FeishuServer is not started")
        return f"http://{self.host_name}:{self._port}"

    # ------------------------------------------------------------------ data setup (sync, any thread)
    def add_table(self, app_token: str, table_id: str, fields: list[dict]) -> None:
        with self._lock:
            self._apps.setdefault(app_token, {})[table_id] = _Table(
                fields=[{"field_id": f["field_id"], "field_name": f["field_name"], "type": f["type"]}
                        for f in fields])

    def add_record(self, app_token: str, table_id: str, record_id: str, fields: dict,
                   views: tuple[str, ...] = ()) -> None:
        with self._lock:
            table = self._apps[app_token][table_id]
            table.records.append({"record_id": record_id, "fields": fields, "views": tuple(views)})
            for value in fields.values():
                if isinstance(value, list):
                    for item in value:
                        if isinstance(item, dict) and item.get("file_token") in self._files:
                            self._file_app.setdefault(item["file_token"], app_token)

    def add_file(self, data: bytes, name: str, mime: str = "application/octet-stream") -> dict:
        token = "box" + secrets.token_hex(12)
        with self._lock:
            self._files[token] = _File(token, bytes(data), name, mime)
        return {"file_token": token, "name": name, "size": len(data), "type": mime,
                "url": f"{self.base_url}/open-apis/drive/v1/medias/{token}/download",
                "tmp_url": f"{self.base_url}/open-apis/drive/v1/medias/batch_get_tmp_download_url"
                           f"?file_tokens={token}"}

    def delete_file(self, file_token: str) -> None:
        with self._lock:
            self._files[file_token].deleted = True

    def revoke_links(self, file_token: str) -> None:
        """Every link handed out so far for this file is refused from now on, as an expired one is."""
        with self._lock:
            self._revoked.update((file_token, stamp) for stamp in self._issued.get(file_token, ()))

    def expire_links(self, file_token: str, times: int = 1) -> None:
        """The next `times` links handed out for this file have expired by the time they are used (their
        expiry is in the past): a refresh is certain, whatever the timing."""
        with self._lock:
            self._expire_next[file_token] = self._expire_next.get(file_token, 0) + times

    def deny_file(self, file_token: str) -> None:
        with self._lock:
            self._files[file_token].denied = True

    def add_fault(self, file_token: str, kind: str, times: int | None = None, **params) -> None:
        """Fault media downloads (both routes) of one file: a MEDIA_FAULTS kind and its parameters.

        times=None: every download; else only the first `times`. The first fault (in the order added)
        with uses left wins. short and trickle bend only successful answers.
        """
        self._faults.add(file_token, kind, times, **params)

    def clear_faults(self) -> None:
        """Drop all faults (counters are reset by reset_counters)."""
        self._faults.clear_faults()

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = {"api_calls": 0, "rate_limited": 0, "tmp_url_calls": 0, "media_gets": 0,
                             "expired_hits": 0, "max_media_in_flight": 0}
            self.tmp_url_tokens = []   # every file token asked for, in order (repeats included)
            self.auth_headers_seen = []
            self._buckets.clear()
        self._faults.clear_counts()

    @property
    def media_in_flight(self) -> int:
        """Media downloads being served right now."""
        return self._media_in_flight

    def get_count(self, file_token: str) -> int:
        """Media GETs (both download routes) for one file token."""
        return self._faults.count(file_token)

    # ------------------------------------------------------------------ helpers
    def _sign(self, file_token: str, expires: str) -> str:
        return hmac.new(self._secret, f"{file_token}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _rate_key(self, request: web.Request) -> str:
        app_token = request.match_info.get("app_token")
        if app_token:
            return app_token
        tokens = [request.match_info.get("file_token")] if "file_token" in request.match_info \
            else request.query.getall("file_tokens", [])
        with self._lock:
            for tok in tokens:
                if tok in self._file_app:
                    return self._file_app[tok]
        return "_drive"

    def _allow(self, key: str) -> bool:
        rate = self.rate_per_second
        if not rate or rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(BURST), now))
            tokens = min(float(BURST), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return True
            self._buckets[key] = (tokens, now)
            return False

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    @web.middleware
    async def _open_api_middleware(self, request: web.Request, handler):
        if not request.path.startswith("/open-apis/"):
            return await handler(request)
        self._bump("api_calls")
        auth = request.headers.get("Authorization")
        if auth is not None:
            with self._lock:
                self.auth_headers_seen.append(auth)
        if not auth or not auth.strip():
            return _json(CODE_MISSING_TOKEN, MSG_MISSING_TOKEN, status=400)
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _json(CODE_MISSING_TOKEN, MSG_MISSING_TOKEN, status=400)
        if value.strip() != self.token:
            return _json(CODE_INVALID_TOKEN, MSG_INVALID_TOKEN, status=400)
        if not self._allow(self._rate_key(request)):
            self._bump("rate_limited")
            return _json(CODE_RATE_LIMITED, "request trigger frequency limit", status=429,
                         headers={"x-ogw-ratelimit-reset": "1", "x-ogw-ratelimit-limit": str(self.rate_per_second)})
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _json(404, "404 page not found", status=404)

    @staticmethod
    def _paging(request: web.Request) -> tuple[int, int] | web.Response:
        raw_size = request.query.get("page_size")
        try:
            size = PAGE_SIZE_DEFAULT if raw_size in (None, "") else int(raw_size)
        except ValueError:
            size = -1
        if not 1 <= size <= PAGE_SIZE_MAX:
            return _json(CODE_VALIDATION, "field validation failed",
                         {"field_violations": [{"field": "page_size",
                                                "description": f"page_size must be 1..{PAGE_SIZE_MAX}"}]},
                         status=400)
        raw_token = request.query.get("page_token")
        offset = 0
        if raw_token:
            try:
                offset = _decode_page_token(raw_token)
            except Exception:
                return _json(CODE_VALIDATION, "field validation failed",
                             {"field_violations": [{"field": "page_token", "description": "invalid page_token"}]},
                             status=400)
        return size, offset

    def _table(self, request: web.Request) -> _Table | web.Response:
        app_token, table_id = request.match_info["app_token"], request.match_info["table_id"]
        with self._lock:
            tables = self._apps.get(app_token)
            if tables is None:
                return _json(CODE_BASE_NOT_FOUND, "BaseTokenNotFound", status=400)
            table = tables.get(table_id)
            if table is None:
                return _json(CODE_TABLE_NOT_FOUND, "TableIdNotFound", status=400)
            return table

    @staticmethod
    def _page(items: list, size: int, offset: int) -> dict:
        chunk = items[offset:offset + size]
        has_more = offset + size < len(items)
        data = {"items": chunk, "has_more": has_more, "total": len(items)}
        if has_more:
            data["page_token"] = _encode_page_token(offset + size)
        return data

    # ------------------------------------------------------------------ bitable handlers
    async def _fields(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if isinstance(table, web.Response):
            return table
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        with self._lock:
            items = [dict(f) for f in table.fields]
        return _json(CODE_OK, "success", self._page(items, *paging))

    async def _records(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if isinstance(table, web.Response):
            return table
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        view_id = request.query.get("view_id") or None
        with self._lock:
            items = [{"record_id": r["record_id"], "id": r["record_id"],
                      "fields": {k: v for k, v in r["fields"].items() if v is not None}}
                     for r in table.records if view_id is None or view_id in r["views"]]
        return _json(CODE_OK, "success", self._page(items, *paging))

    # ------------------------------------------------------------------ drive handlers
    @staticmethod
    def _bad_extra(request: web.Request) -> web.Response | None:
        extra = request.query.get("extra")
        if extra is None:
            return None
        try:
            json.loads(extra)
        except ValueError:
            return _json(CODE_VALIDATION, "field validation failed",
                         {"field_violations": [{"field": "extra", "description": "extra must be JSON"}]},
                         status=400)
        return None

    async def _tmp_urls(self, request: web.Request) -> web.Response:
        bad = self._bad_extra(request)
        if bad is not None:
            return bad
        tokens = request.query.getall("file_tokens", [])
        if not tokens or len(tokens) > self.max_tmp_tokens:
            return _json(CODE_VALIDATION, "field validation failed",
                         {"field_violations": [{"field": "file_tokens",
                                                "description": f"1..{self.max_tmp_tokens} file_tokens"}]},
                         status=400)
        self._bump("tmp_url_calls")
        with self._lock:
            self.tmp_url_tokens.extend(tokens)
            denied = [t for t in tokens if t in self._files and self._files[t].denied]
        if denied:  # like Feishu: one file the token may not read refuses the whole batch
            return _json(CODE_FORBIDDEN, "forbidden: no permission to read a file of file_tokens", status=403)
        expires = f"{time.time() + float(self.link_ttl):.3f}"
        urls = []
        with self._lock:
            known = [t for t in tokens if t in self._files]
            for tok in known:
                self._issued.setdefault(tok, set()).add(expires)
        for tok in known:
            stamp = expires
            with self._lock:
                if self._expire_next.get(tok):
                    self._expire_next[tok] -= 1
                    stamp = f"{time.time() - 1:.3f}"
            urls.append({"file_token": tok,
                         "tmp_download_url": f"{self.base_url}/download/{tok}?expires={stamp}"
                                             f"&sig={self._sign(tok, stamp)}"})
        return _json(CODE_OK, "success", {"tmp_download_urls": urls})

    async def _media_download(self, request: web.Request) -> web.StreamResponse:
        bad = self._bad_extra(request)
        if bad is not None:
            return bad
        return await self._serve_media(request, request.match_info["file_token"])

    async def _tmp_download(self, request: web.Request) -> web.StreamResponse:
        file_token = request.match_info["file_token"]
        expires, sig = request.query.get("expires", ""), request.query.get("sig", "")
        if not sig or not hmac.compare_digest(sig, self._sign(file_token, expires)):
            return _json(CODE_FORBIDDEN, "invalid signature", status=403)
        try:
            expired = time.time() > float(expires)
        except ValueError:
            expired = True
        with self._lock:
            expired = expired or (file_token, expires) in self._revoked
        if expired:
            self._bump("expired_hits")
            return _json(CODE_URL_EXPIRED, "download url expired", status=400)
        return await self._serve_media(request, file_token)

    async def _serve_media(self, request: web.Request, file_token: str) -> web.StreamResponse:
        with self._lock:
            self.counters["media_gets"] += 1
            self._media_in_flight += 1
            self.counters["max_media_in_flight"] = max(self.counters["max_media_in_flight"],
                                                       self._media_in_flight)
        try:
            return await self._serve_media_inner(request, file_token)
        finally:
            with self._lock:
                self._media_in_flight -= 1

    async def _serve_media_inner(self, request: web.Request, file_token: str) -> web.StreamResponse:
        fault = self._faults.take(file_token)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "status":
            if fault.status == 429:
                return _json(CODE_RATE_LIMITED, "request trigger frequency limit", status=429,
                             headers={"x-ogw-ratelimit-reset": "1"})
            return _json(CODE_INTERNAL, "internal error (injected fault)", status=fault.status)
        if fault is not None and fault.kind == "reset":
            self._reset(request)
            return web.Response(status=500)   # never reaches the client: the connection is gone

        with self._lock:
            f = self._files.get(file_token)
        if f is None:
            return _json(CODE_NOT_FOUND, "file not found", status=404)
        if f.deleted:
            return _json(CODE_FILE_DELETED, "file has been deleted", status=404)
        if f.denied:
            return _json(CODE_FORBIDDEN, "forbidden", status=403)

        size = len(f.data)
        start, end, status = 0, size - 1, 200
        headers = {"Content-Type": f.mime, "Accept-Ranges": "bytes",
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(f.name, safe='')}"}
        rng = request.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed == "unsatisfiable":
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = f.data[start:end + 1]
        if fault is not None and fault.kind == "short":
            body = body[: short_length(len(body), fault.fraction)]   # a clean answer, just too short
        headers["Content-Length"] = str(len(body))

        if fault is not None and fault.kind == "truncate":
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)   # let the half body reach the socket before hanging up
            if request.transport is not None:
                request.transport.close()   # FIN after half the promised Content-Length
            return resp
        if request.method == "HEAD":
            resp = web.Response(status=status, headers=headers)
            return resp
        if fault is not None and fault.kind == "trickle":
            return await self._trickle(request, status, headers, body, fault)
        return web.Response(status=status, body=body, headers=headers)

    @staticmethod
    async def _trickle(request: web.Request, status: int, headers: dict, body: bytes, fault: Fault
                       ) -> web.StreamResponse:
        """Headers (full Content-Length) at once, then `chunk` bytes every `seconds` until done or the
        client hangs up; the event loop serves other requests meanwhile."""
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            for start in range(0, len(body), fault.chunk):
                if start:
                    deadline = loop.time() + fault.seconds
                    while loop.time() < deadline:
                        if request.transport is None or request.transport.is_closing():
                            return resp                   # the client went away: stop now
                        await asyncio.sleep(min(deadline - loop.time(), 0.1))
                await resp.write(body[start:start + fault.chunk])
        except ConnectionError:
            pass
        return resp

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0)."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()


def _parse_range(header: str, size: int):
    """``bytes=a-b`` / ``a-`` / ``-n`` -> (start, end); None to ignore (serve 200); "unsatisfiable" for 416."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = size - 1 if last == "" else min(int(last), size - 1)
    except ValueError:
        return None
    if start >= size or start > end or start < 0:
        return "unsatisfiable"
    return start, end
