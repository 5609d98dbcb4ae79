"""A real HTTP forward proxy for the end-to-end tests: the only route to test stores named under `.test`.

Names under the reserved `.test` domain are "resolved" here, to loopback, and nowhere else: a product bug that
sends a request to a real name gets 403 instead of leaving the machine, and the proxy never asks DNS anything.
It speaks CONNECT (HTTPS tunnels) and absolute-form HTTP/1.1 with keep-alive, optional Basic authentication,
and records every request for assertions. Stdlib asyncio on a daemon thread, driven from synchronous tests;
`python -m infra.proxy` runs it in the foreground.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import ipaddress
import socket
import struct
import threading
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import quote

CHUNK = 1 << 20    # reads of up to this much: big bodies and tunnels move in few Python steps
LIMIT = 1 << 20    # StreamReader limit: the largest head, and (x2) the buffer before reading pauses
HOP_BY_HOP = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"te", b"trailer", b"upgrade",
                        b"proxy-authorization"})
REASONS = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway"}
ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


@dataclass(frozen=True)
class ProxyRequest:
    method: str             # "CONNECT", "GET", ...
    host: str               # lower-case, IPv6 without brackets ("" for a request that named none)
    port: int
    path: str | None        # as sent (latin-1); None for CONNECT
    status: int | None      # the proxy's own answer (400/403/407/502); None when forwarded
    authorized: bool        # passed the credentials check (always, when the proxy has none)


class _Refusal(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(status, text)
        self.status, self.text = status, text


class _Upstream:
    """The upstream connection kept for one client connection, for its next request to the same place."""
    __slots__ = ("dest", "reader", "writer")

    def __init__(self):
        self.dest = self.reader = self.writer = None

    def usable(self, dest) -> bool:
        return self.dest == dest and not self.writer.is_closing() and not self.reader.at_eof()


def _loopback(host: str) -> str:
    if host.lower() == "localhost":
        return "127.0.0.1"     # no resolver involved, not even /etc/hosts
    with suppress(ValueError):
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return host.strip("[]")
    raise ValueError(f"the test proxy only connects to loopback, not to {host!r}")


def _parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes, bytes]]]:
    """The start line, and (lower-case name, value, raw line) per header: raw lines are forwarded untouched."""
    start, *lines = head[:-4].split(b"\r\n")
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise ValueError(f"malformed header line {line[:100]!r}")
        headers.append((name.strip().lower(), value.strip(), line))
    return start, headers


def _values(headers, name: bytes) -> bytes | None:
    found = [value for n, value, _ in headers if n == name]
    return b", ".join(found) if found else None


def _tokens(headers, *names: bytes) -> set[bytes]:
    return {t.strip().lower() for n, value, _ in headers if n in names for t in value.split(b",")} - {b""}


def _framing(headers):
    """How a message's body is delimited: "chunked", a length, or "close" (no request has such a body)."""
    te = _values(headers, b"transfer-encoding")
    if te is not None:
        return "chunked" if te.rsplit(b",", 1)[-1].strip().lower() == b"chunked" else "close"
    length = _values(headers, b"content-length")
    if length is None:
        return "close"
    if not length.isdigit():   # also refuses "5, 5" from repeated headers: never guess a length
        raise ValueError(f"bad Content-Length {length!r}")
    return int(length)


def _authority(raw: bytes, default_port: int | None) -> tuple[str, int]:
    text = raw.decode("latin-1").rpartition("@")[2]
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _Refusal(400, f"bad authority {text!r}")
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
    if not port and default_port is not None:
        return host.lower(), default_port
    if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise _Refusal(400, f"bad authority {text!r}")
    return host.lower(), int(port)


class ForwardProxy:
    def __init__(self, credentials: tuple[str, str] | None = None, ipv6: bool = False, *,
                 upstream_host: str = "127.0.0.1", routes: dict[str, tuple[str, int]] | None = None, port: int = 0):
        self.host = "::1" if ipv6 else "127.0.0.1"
        self.port = port
        self.upstream_host = _loopback(upstream_host)
        self.routes = {key.lower(): (_loopback(h), int(p)) for key, (h, p) in (routes or {}).items()}
        self._expected = None if credentials is None else ("%s:%s" % credentials).encode()
        self._lock = threading.Lock()
        self._requests: list[ProxyRequest] = []
        self.bytes_up = self.bytes_down = 0          # sent to upstreams / to clients, heads included
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self._killed = False
        self._loop = self._thread = self._server = None

    # -- synchronous side -------------------------------------------------------------------------------
    def start(self) -> ForwardProxy:
        # Bound here, in the caller's thread: a port in use fails start() before any thread exists.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"test-proxy-{self.port}", daemon=True)
        self._thread.start()
        self._call(self._listen(sock))
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = None

    def kill(self) -> None:
        """The proxy lost mid-run: the port refuses new connections and every open one is reset."""
        self._call(self._kill())

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    @property
    def url(self) -> str:
        return self.url_with()

    def url_with(self, user: str | None = None, password: str | None = None) -> str:
        userinfo = "" if user is None else f"{quote(user, safe='')}:{quote(password or '', safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{userinfo}{host}:{self.port}"

    @property
    def requests(self) -> list[ProxyRequest]:
        with self._lock:
            return list(self._requests)

    def hosts(self) -> set[str]:
        return {r.host for r in self.requests}

    def count(self, host: str | None = None, method: str | None = None) -> int:
        return sum(1 for r in self.requests if host in (None, r.host) and method in (None, r.method))

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def route(self, host: str, port: int) -> tuple[str, int] | None:
        """Where a request for host:port goes, or None when it is refused: the proxy's only name resolution."""
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if key in self.routes:
            return self.routes[key]
        if host.rstrip(".").endswith(".test"):
            return self.upstream_host, port
        with suppress(ValueError):
            return _loopback(host), port
        return None

    # -- event loop side --------------------------------------------------------------------------------
    async def _listen(self, sock):
        self._server = await asyncio.start_server(self._client, sock=sock, limit=LIMIT)

    async def _shutdown(self):
        self._server.close()
        writers = list(self._conns)
        for writer in writers:
            self._close(writer)
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let the transports finish closing on this loop, before it stops for good.
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 1)

    async def _kill(self):
        self._killed = True
        self._server.close()
        for writer in list(self._conns):
            self._close(writer, abort=True)

    def _track(self, writer):
        if self._killed:
            self._close(writer, abort=True)
            raise ConnectionResetError("the test proxy was killed")
        self._conns.add(writer)

    def _close(self, writer, abort=False):
        self._conns.discard(writer)
        if abort:   # linger 0: close() sends RST, the peer sees a reset rather than a clean end
            with suppress(OSError, AttributeError):
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                           struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    def _put(self, writer, data: bytes, up: bool):
        writer.write(data)
        if up:
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)

    def _record(self, method, host, port, path, status, authorized=True):
        with self._lock:
            self._requests.append(ProxyRequest(method, host, port, path, status, authorized))

    async def _client(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        with suppress(asyncio.CancelledError):   # stop(): asyncio 3.11 logs an error for a cancelled callback
            await self._serve(reader, writer)
        self._tasks.discard(task)

    async def _serve(self, reader, writer):
        up = _Upstream()
        try:
            self._track(writer)
            while await self._request(reader, writer, up):
                pass
        except _Refusal as refusal:
            await self._refuse(reader, writer, refusal)
        except ERRORS:
            self._close(writer, abort=True)
        finally:
            if up.writer is not None:
                self._close(up.writer)
            self._close(writer)

    async def _request(self, reader, writer, up) -> bool:
        """Serves one request; False when the client connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        try:
            start, headers = _parse_head(head)
        except ValueError as e:
            raise _Refusal(400, str(e)) from None
        parts = start.split(b" ")
        if len(parts) != 3:
            raise _Refusal(400, "malformed request line")
        method, target, version = parts
        name = method.decode("latin-1")
        if method == b"CONNECT":
            authority, path = target, None
            host, port = _authority(target, None)
        elif target[:7].lower() == b"http://":
            rest = target[7:]
            cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0] or [len(rest)])
            authority, path = rest[:cut], rest[cut:]
            path = path if path.startswith(b"/") else b"/" + path
            host, port = _authority(authority, 80)
        else:
            self._record(name, "", 0, target.decode("latin-1"), 400)
            raise _Refusal(400, "this is a proxy: it takes absolute-form requests and CONNECT only")

        def record(status, authorized=True):
            self._record(name, host, port, None if path is None else path.decode("latin-1"), status, authorized)

        if not self._authorized(headers):
            record(407, False)
            raise _Refusal(407, "proxy authentication required")
        dest = self.route(host, port)
        if dest is None:
            record(403)
            raise _Refusal(403, f"refused by the test proxy: {host} is not under .test")
        if method == b"CONNECT":
            await self._tunnel(reader, writer, dest, record)
            return False
        return await self._forward(reader, writer, up, dest, (method, path, version), headers, authority, record)

    def _authorized(self, headers) -> bool:
        if self._expected is None:
            return True
        scheme, _, token = (_values(headers, b"proxy-authorization") or b"").partition(b" ")
        try:
            return scheme.lower() == b"basic" and base64.b64decode(token.strip(), validate=True) == self._expected
        except binascii.Error:
            return False

    async def _refuse(self, reader, writer, refusal):
        body = (refusal.text + "\n").encode()
        head = (f"HTTP/1.1 {refusal.status} {REASONS[refusal.status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if refusal.status == 407:
            head += 'Proxy-Authenticate: Basic realm="test-proxy"\r\n'
        with suppress(OSError):
            self._put(writer, head.encode() + b"\r\n" + body, up=False)
            await writer.drain()
            writer.write_eof()
            # Closing on an unread request body would send a reset, which can destroy the answer before the
            # client reads it: take what the client still sends, for a while.
            async with asyncio.timeout(2):
                while await reader.read(CHUNK):
                    pass

    async def _open(self, dest, record):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*dest, limit=LIMIT), 10)
        except OSError as e:
            record(502)
            raise _Refusal(502, f"the test proxy could not connect to {dest[0]}:{dest[1]}: {e}") from None
        self._track(writer)
        return reader, writer

    async def _tunnel(self, reader, writer, dest, record):
        ureader, uwriter = await self._open(dest, record)
        record(None)
        self._put(writer, b"HTTP/1.1 200 Connection established\r\n\r\n", up=False)
        try:
            await writer.drain()
            await asyncio.gather(self._pipe(reader, uwriter, writer, True), self._pipe(ureader, writer, uwriter, False))
        finally:
            self._close(uwriter)

    async def _pipe(self, src, dst, other, up):
        try:
            while data := await src.read(CHUNK):
                self._put(dst, data, up)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()   # half-close: the other direction goes on until its own end
        except OSError:
            for writer in (dst, other):   # a reset on one side resets the other, and ends its pipe
                self._close(writer, abort=True)

    async def _forward(self, reader, writer, up, dest, request_line, headers, authority, record) -> bool:
        try:
            framing = _framing(headers)
        except ValueError as e:
            raise _Refusal(400, str(e)) from None
        if framing == "close" and _values(headers, b"transfer-encoding") is not None:
            raise _Refusal(400, "unsupported Transfer-Encoding")
        framing = None if framing in ("close", 0) else framing
        drop = HOP_BY_HOP | _tokens(headers, b"connection")
        lines = [b" ".join(request_line)] + [raw for name, _, raw in headers if name not in drop]
        if _values(headers, b"host") is None:
            lines.append(b"Host: " + authority.rpartition(b"@")[2])
        request = b"\r\n".join(lines) + b"\r\n\r\n"
        method, version = request_line[0], request_line[2]
        tokens = _tokens(headers, b"connection", b"proxy-connection")
        keep = b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens
        reuse, sender, sent, started = up.usable(dest), None, [framing is None], False
        try:
            while True:
                if not reuse:
                    if up.writer is not None:
                        self._close(up.writer)
                    up.reader, up.writer = await self._open(dest, record)
                    up.dest = dest
                self._put(up.writer, request, up=True)
                if framing is not None:   # concurrently with the answer: 100-continue and early answers work
                    sender = asyncio.create_task(self._send_body(reader, up.writer, framing, sent))
                try:
                    while True:
                        head = await up.reader.readuntil(b"\r\n\r\n")
                        status_line, rheaders = _parse_head(head)
                        rversion, _, rest = status_line.partition(b" ")
                        status = int(rest[:3])
                        if status >= 200 or status == 101:
                            break
                        self._put(writer, head, up=False)   # interim (100 Continue...): the answer follows
                    break
                except (asyncio.IncompleteReadError, ConnectionResetError) as e:
                    # A kept upstream connection may have been closed by the server meanwhile: a request without
                    # a body can be sent again on a new one, as clients do.
                    if not reuse or framing is not None or getattr(e, "partial", b""):
                        raise
                    reuse = False
            rframing = None if method == b"HEAD" or status in (101, 204, 304) else _framing(rheaders)
            rframing = None if rframing == 0 else rframing
            up_keep = rversion == b"HTTP/1.1" and b"close" not in _tokens(rheaders, b"connection") \
                and rframing != "close" and status != 101
            keep = keep and rframing != "close" and status != 101
            drop = (HOP_BY_HOP - {b"trailer"}) | _tokens(rheaders, b"connection")
            out = [status_line] + [raw for name, _, raw in rheaders if name not in drop]
            out += [b"Connection: close"] if not keep else [b"Connection: keep-alive"] if version != b"HTTP/1.1" else []
            record(None)
            started = True
            head = b"\r\n".join(out) + b"\r\n\r\n"
            if isinstance(rframing, int):   # the usual answer: its head and first bytes in one send
                await self._copy(up.reader, writer, rframing, False, head)
            else:
                self._put(writer, head, up=False)
                await self._relay(up.reader, writer, rframing, up=False)
            await writer.drain()
            if sender is not None:
                if sent[0]:
                    await sender
                else:   # the upstream answered before taking the whole body: neither side can go on
                    keep = up_keep = False
            if not up_keep:
                self._close(up.writer)
                up.dest = None
            return keep
        except ERRORS as e:
            if up.writer is not None:
                self._close(up.writer, abort=True)
                up.dest = None
            if started:
                raise
            record(502)
            raise _Refusal(502, f"the test proxy's upstream {dest[0]}:{dest[1]} failed: {e!r}") from None
        finally:
            if sender is not None:
                sender.cancel()
                if sender.done() and not sender.cancelled():
                    sender.exception()   # retrieved: it is reported through the upstream it aborted

    async def _send_body(self, reader, uwriter, framing, sent):
        try:
            await self._relay(reader, uwriter, framing, up=True)
            sent[0] = True   # set before the last drain, which may yield: the answer cannot come before it
            await uwriter.drain()
        except ERRORS:
            self._close(uwriter, abort=True)
            raise

    async def _relay(self, src, dst, framing, up):
        """Copies one body, framing bytes included, as is; the last write is left undrained."""
        if framing == "chunked":
            while True:
                line = await src.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0], 16)
                self._put(dst, line, up)
                if not size:
                    break
                await dst.drain()
                await self._copy(src, dst, size + 2, up)
            while True:   # trailer fields, then the empty line
                line = await src.readuntil(b"\r\n")
                self._put(dst, line, up)
                if line == b"\r\n":
                    break
        elif framing == "close":
            while data := await src.read(CHUNK):
                self._put(dst, data, up)
                await dst.drain()
        elif framing:
            await self._copy(src, dst, framing, up)

    async def _copy(self, src, dst, n, up, prefix=b""):
        while n:
            data = await src.read(min(n, CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(data)
            self._put(dst, prefix + data if prefix else data, up)
            prefix = b""
            if n:
                await dst.drain()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ipv6", action="store_true", help="listen on ::1 instead of 127.0.0.1")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    credentials = None if args.user is None else (args.user, args.password)
    with ForwardProxy(credentials, args.ipv6, port=args.port) as proxy:
        print(proxy.url_with(*credentials) if credentials else proxy.url, flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
