"""Small whole-object GETs on libcurl (pycurl's CurlMulti), on the engine's event loop.

Why: for objects of a few KiB the HTTP machinery is most of the run's CPU. Profiled on 100,000 objects of
1-4 KiB, the loop thread held the GIL ~520 us per object, ~60 % of it in aiohttp, asyncio and yarl; curl
parses, reads and reuses connections in C with the GIL released. Only GETs whose listed size is at most
SMALL_BODY and that resume nothing come here (fetch_whole's in-memory case); ranged parts, resumes, streams
and unknown sizes stay on aiohttp, as does everything when pycurl cannot be imported.

libcurl's multi-socket API runs on the engine's own loop: its sockets are the loop's readers and writers.
Every check on the answer stays in core/engine/fetch.py; here are only what must happen while bytes arrive:
the size guard (a body longer than listed is cut off, never buffered), and the read timeout and low-speed
rule of aiohttp's small path (no bytes for `read_timeout`; the whole body within `seconds + size / limit`).
"""
from __future__ import annotations

import asyncio
import selectors
import time

import pycurl
from multidict import CIMultiDict

from core.errors import IntegrityError, ProxyRefused, TooSlow

ERROR_BODY = 64 * 1024  # of an error answer: enough for its XML/JSON code and message
_IN, _OUT = selectors.EVENT_READ, selectors.EVENT_WRITE
_INTEREST = {pycurl.POLL_IN: _IN, pycurl.POLL_OUT: _OUT, pycurl.POLL_INOUT: _IN | _OUT}


class Received:
    """A whole answer with its body in memory: the parts of an aiohttp response that Engine.open and
    fetch_whole read. `in_memory`: the whole body has arrived (its time limits were applied as it came)."""

    __slots__ = ("status", "headers", "body", "too_long")
    in_memory = True

    def __init__(self, status: int, headers: CIMultiDict, body: bytes, too_long: int):
        self.status, self.headers, self.body, self.too_long = status, headers, body, too_long

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None

    async def read(self) -> bytes:
        if self.too_long:
            raise IntegrityError(f"size mismatch: the store sent more than the {self.too_long} bytes listed")
        return self.body

    def release(self) -> None:
        pass


class _Transfer:
    """One easy handle (reused: its connection goes back to the multi's pool) and the request it serves."""

    __slots__ = ("curl", "head", "chunks", "got", "cap", "expected", "too_long", "future", "seen", "active_at",
                 "answer_at", "proxy")

    def __init__(self, options: list):
        self.curl = curl = pycurl.Curl()
        for option, value in options:
            curl.setopt(option, value)
        self.head: list[bytes] = []
        curl.setopt(pycurl.HEADERFUNCTION, self.head.append)
        curl.setopt(pycurl.WRITEFUNCTION, self.write)
        curl.transfer = self
        self.chunks: list[bytes] = []
        self.proxy = None  # PROXY "" (set in the options): direct, whatever the environment says

    def start(self, future, url: str, headers: dict, expected: int, now: float, proxy) -> None:
        self.future, self.expected = future, expected
        self.got, self.cap, self.too_long = 0, -1, False
        self.seen, self.active_at, self.answer_at = 0, now, 0.0
        self.head.clear()
        self.chunks.clear()
        self.curl.setopt(pycurl.URL, url.encode())
        self.curl.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()])
        if proxy is not self.proxy:  # a handle is reused: its proxy is the one this request's URL takes
            self.proxy = proxy
            self.curl.setopt(pycurl.PROXY, proxy.address if proxy else "")
            self.curl.setopt(pycurl.PROXYUSERNAME, proxy.user if proxy else "")
            self.curl.setopt(pycurl.PROXYPASSWORD, proxy.password if proxy else "")

    def write(self, data: bytes):
        got = self.got + len(data)
        if got > self.cap:
            if self.cap < 0:  # the first bytes of the body: its status says how much may come
                self.cap = self.expected if 200 <= _last_status(self.head)[0] < 300 else ERROR_BODY
                return self.write(data)
            self.too_long = True
            return 0  # a short count: curl aborts the transfer (and closes its connection)
        self.got = got
        self.chunks.append(data)
        return None

    def answer(self) -> Received:
        status, start = _last_status(self.head)
        headers = CIMultiDict()
        for line in self.head[start:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers.add(name.strip(), value.strip())
        too_long = self.expected if self.too_long and 200 <= status < 300 else 0
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return Received(status, headers, body, too_long)


def _last_status(head: list[bytes]) -> tuple[int, int]:
    """The status of the last answer in `head` (redirects and 100 Continue come first), and where its
    header lines start. (curl's getinfo cannot be asked from inside its callbacks.)"""
    for i in range(len(head) - 1, -1, -1):
        line = head[i]
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), i + 1
    return 0, 0


class SmallGets:
    """A CurlMulti on the engine's loop (libcurl's multi-socket API on the loop's selector). `get` is
    awaited on the loop; curl's own work runs with the GIL released, and no second Python thread contends
    for the GIL (a thread of its own costs more in GIL hand-overs than it saves: measured, see the report)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float | None,
                 read_timeout: float | None, low_speed: tuple[float, float] | None, network):
        self.requests = 0  # GETs made here (the engine's tests read it)
        self._loop = loop
        self._network = network
        self._read_timeout = read_timeout
        self._first_byte = (connect_timeout or 0) + (read_timeout or 0)  # connect, then the answer
        self._low_speed = low_speed
        self._sweep_every = min(0.1, low_speed[1] / 10) if low_speed else 0.1
        self._options = [
            (pycurl.NOSIGNAL, 1),
            (pycurl.PROXY, ""),  # curl's own reading of the proxy variables is not used: core/network.py decides
            (pycurl.FOLLOWLOCATION, 1), (pycurl.MAXREDIRS, 10),  # aiohttp's defaults (Feishu links redirect)
            (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),  # as aiohttp
            (pycurl.PATH_AS_IS, 1),  # the signed path byte for byte: no /./ or /../ squashed
            (pycurl.DNS_CACHE_TIMEOUT, 300),  # as the aiohttp connector's ttl_dns_cache
            (pycurl.CONNECTTIMEOUT_MS, int(connect_timeout * 1000) if connect_timeout else 0),
            *network.tls.curl_options(pycurl),  # the same certificates as aiohttp and the listings
        ]
        self._running: dict[asyncio.Future, _Transfer] = {}
        self._idle: list[_Transfer] = []
        self._sockets: dict[int, int] = {}
        self._timer = None  # the loop's handle of curl's timeout
        self._sweeper = None
        self._closed = False
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)

    @property
    def alive(self) -> bool:
        return not self._closed

    async def get(self, url: str, headers: dict, expected: int) -> Received:
        future = self._loop.create_future()
        self.requests += 1
        transfer = self._idle.pop() if self._idle else _Transfer(self._options)
        transfer.start(future, url, headers, expected, time.monotonic(), self._network.proxy_for(url))
        self._running[future] = transfer
        self._multi.add_handle(transfer.curl)  # curl asks for a timeout of 0 to start it
        if self._sweeper is None and (self._read_timeout or self._low_speed):
            self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)
        try:
            return await future
        except asyncio.CancelledError:
            self._drop(future)  # its handle leaves the multi; curl closes its connection
            raise

    def close(self) -> None:
        """On the loop: drop whatever is in flight (its tasks were cancelled first) and free curl."""
        if self._closed:
            return
        self._closed = True
        for future in list(self._running):
            self._drop(future)
            if not future.done():
                future.cancel()
        for handle in (self._timer, self._sweeper):
            if handle is not None:
                handle.cancel()
        for fd in list(self._sockets):
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._sockets.clear()
        for transfer in self._idle:
            transfer.curl.close()
        self._idle.clear()
        self._multi.close()

    # -- curl's callbacks and the loop's -----------------------------------------------------------
    def _on_socket(self, what: int, fd: int, multi, data) -> None:
        events = _INTEREST.get(what, 0)  # POLL_NONE / POLL_REMOVE: nothing to wait for on it
        old = self._sockets.get(fd, 0)
        if events == old:
            return
        loop = self._loop
        if events & _IN and not old & _IN:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        elif old & _IN and not events & _IN:
            loop.remove_reader(fd)
        if events & _OUT and not old & _OUT:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        elif old & _OUT and not events & _OUT:
            loop.remove_writer(fd)
        if events:
            self._sockets[fd] = events
        else:
            del self._sockets[fd]

    def _on_timer(self, ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if ms < 0 else self._loop.call_later(ms / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        if fd == pycurl.SOCKET_TIMEOUT:
            self._timer = None
        if self._closed:
            return
        self._multi.socket_action(fd, events)
        self._collect()

    def _collect(self) -> None:
        while True:
            queued, finished, failed = self._multi.info_read()
            for curl in finished:
                self._finish(curl.transfer, None)
            for curl, code, message in failed:
                transfer = curl.transfer
                if code == pycurl.E_WRITE_ERROR and transfer.too_long:
                    self._finish(transfer, None)  # our own size guard: the answer says what went wrong
                elif transfer.proxy is not None and curl.getinfo(pycurl.HTTP_CONNECTCODE) >= 300:
                    self._finish(transfer, ProxyRefused(curl.getinfo(pycurl.HTTP_CONNECTCODE), transfer.proxy))
                else:
                    self._finish(transfer, pycurl.error(code, message, curl.getinfo(pycurl.OS_ERRNO)))
            if not queued:
                return

    def _finish(self, transfer: _Transfer, error: BaseException | None) -> None:
        self._multi.remove_handle(transfer.curl)
        future = transfer.future
        del self._running[future]
        if not future.done():
            if error is None:
                future.set_result(transfer.answer())
            else:
                future.set_exception(error)
        transfer.future = None
        self._idle.append(transfer)

    def _drop(self, future) -> None:
        transfer = self._running.pop(future, None)
        if transfer is not None:
            self._multi.remove_handle(transfer.curl)
            transfer.future = None
            self._idle.append(transfer)

    def _sweep(self) -> None:
        """aiohttp's small-body limits: no bytes for read_timeout s (connect + read_timeout before the
        first); once the answer has begun, the whole body within `seconds + size / limit` (too slow).
        The store's time is real time (time.monotonic), whatever the loop's clock says."""
        now = time.monotonic()
        for future, transfer in list(self._running.items()):
            progress = len(transfer.head) + transfer.got
            if progress != transfer.seen:
                transfer.seen, transfer.active_at = progress, now
                if not transfer.answer_at:
                    transfer.answer_at = now
            error = None
            if self._read_timeout and now - transfer.active_at > (
                    self._read_timeout if transfer.answer_at else self._first_byte):
                error = TimeoutError("no bytes from the store within the read timeout")
            elif self._low_speed and transfer.answer_at:
                limit, seconds = self._low_speed
                if now - transfer.answer_at > seconds + transfer.expected / limit:
                    error = TooSlow(f"too slow: less than {limit:g} bytes/s for {seconds:g} s")
            if error is not None:
                self._drop(future)
                future.set_exception(error)
        self._sweeper = self._loop.call_later(self._sweep_every, self._sweep) if self._running else None
