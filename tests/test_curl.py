"""Small whole-object GETs on libcurl (core/engine/curl.py): that they go there, that without pycurl they go
to aiohttp, and the guarantees curl has to keep itself (cancellation, a body longer than listed, the URL byte
for byte). A real HTTP server on loopback that answers as each test asks; no Prefect."""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import sys
import threading

import pytest

from core.engine import Engine, Stopped
from core.engine.fetch import SMALL_BODY
from core.errors import IntegrityError, as_download_error
from core.workarea import Output

pycurl = pytest.importorskip("pycurl")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.paths: list[str] = []       # request targets exactly as they arrived
        self.mode = "ok"
        self.body = b""
        self.sent_all = None             # for "endless": whether the whole body went out
        self.hung_up = threading.Event()  # for "stall": the client closed the connection
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{target}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: Server = self.server
        server.paths.append(self.path)
        if server.mode == "stall":      # headers never come; wait for the client to give up
            self.connection.settimeout(30)
            try:
                while self.connection.recv(1):
                    pass
            except OSError:
                pass
            server.hung_up.set()
            self.close_connection = True
            return
        if server.mode == "endless":    # chunked, without end: only the client can stop it
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(2048):    # 128 MiB: more than any socket buffer holds
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
                server.sent_all = True
            except OSError:
                server.sent_all = False
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(server.body)))
        self.send_header("ETag", '"%s"' % hashlib.md5(server.body).hexdigest())
        self.end_headers()
        self.wfile.write(server.body)


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture
def engine():
    e = Engine(4, read_timeout=30, low_speed_limit=0).__enter__()
    yield e
    e.close()


def fetch(engine, out, url, rel, size):
    return engine.run(engine.fetch(lambda refresh: url, out, rel, size))


def test_small_objects_go_to_curl_and_larger_ones_to_aiohttp(server, engine, tmp_path):
    with Output(tmp_path) as out:
        server.body = os.urandom(3000)
        fetch(engine, out, server.url("/small"), "small", 3000)
        assert engine._curl.requests == 1 and engine._session is None
        server.body = os.urandom(SMALL_BODY + 1)
        fetch(engine, out, server.url("/larger"), "larger", SMALL_BODY + 1)
        assert engine._curl.requests == 1 and engine._session is not None
        assert (tmp_path / "larger").read_bytes() == server.body


def test_without_pycurl_every_get_is_made_by_aiohttp(server, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycurl", None)            # import pycurl raises ImportError
    monkeypatch.delitem(sys.modules, "core.engine.curl", raising=False)
    server.body = os.urandom(3000)
    with Engine(4) as engine, Output(tmp_path) as out:
        fetch(engine, out, server.url("/small"), "small", 3000)
        assert engine._curl is False and engine._session is not None
    assert (tmp_path / "small").read_bytes() == server.body


def test_a_url_reaches_the_server_byte_for_byte(server, engine, tmp_path):
    """A signed URL's percent-encoding is what the signature covers: curl must neither decode nor re-encode
    it (spaces, +, %, Chinese, ~, and a dot segment, in the path and in the query), as aiohttp does not."""
    target = "/b/a%20b+c%25d~%E4%B8%AD%E6%96%87/./x%2Fy?X-Sig=ab%2Bc%3D%3D&k=a+b%20c~&e=%E4%B8%AD"
    server.body = b"z" * 100
    with Output(tmp_path) as out:
        fetch(engine, out, server.url(target), "k", 100)
    assert engine._curl.requests == 1 and server.paths == [target]


def test_a_body_longer_than_listed_is_cut_off_not_buffered(server, engine, tmp_path):
    server.mode = "endless"
    with Output(tmp_path) as out:
        with pytest.raises(IntegrityError, match="more than the 2000 bytes listed"):
            fetch(engine, out, server.url("/endless"), "endless", 2000)
    server.thread.join(0)  # the handler notices the hang-up when its writes fail
    for _ in range(100):
        if server.sent_all is not None:
            break
        threading.Event().wait(0.05)
    assert server.sent_all is False and not (tmp_path / "endless").exists()


def test_cancelling_a_get_removes_its_transfer_and_closes_its_connection(server, engine, tmp_path):
    server.mode = "stall"

    async def cancel_when_asked(out):
        task = asyncio.ensure_future(engine.fetch(lambda refresh: server.url("/stall"), out, "s", 100))
        while not server.paths:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(engine._curl._running)
    with Output(tmp_path) as out:
        assert engine.run(cancel_when_asked(out)) == 0
        assert server.hung_up.wait(10)
        server.mode, server.body = "ok", b"after"                  # the engine goes on serving
        fetch(engine, out, server.url("/after"), "after", 5)
    assert (tmp_path / "after").read_bytes() == b"after"


def test_closing_the_engine_stops_a_get_in_flight(server, tmp_path):
    server.mode = "stall"
    engine = Engine(4, read_timeout=30).__enter__()
    errors = []
    with Output(tmp_path) as out:
        worker = threading.Thread(target=lambda: errors.append(
            pytest.raises(Stopped, fetch, engine, out, server.url("/stall"), "s", 100)))
        worker.start()
        while not server.paths:
            threading.Event().wait(0.01)
        engine.close()
        worker.join(10)
    assert errors and not worker.is_alive() and engine._curl.alive is False
    assert server.hung_up.wait(10)


@pytest.mark.parametrize("code, os_errno, reason, retryable", [
    (pycurl.E_COULDNT_CONNECT, 111, "cannot connect: Connection refused", True),
    (pycurl.E_OPERATION_TIMEDOUT, 0, "timeout", True),
    (pycurl.E_PARTIAL_FILE, 0, "truncated body: connection closed before the whole object arrived", True),
    (pycurl.E_RECV_ERROR, 104, "connection reset", True),
    (pycurl.E_GOT_NOTHING, 0, "connection reset", True),
    (pycurl.E_PEER_FAILED_VERIFICATION, 0, "TLS error: certificate verify failed: unable to get local issuer"
                                           " certificate", False),  # the words of http.client and aiohttp
    (pycurl.E_SSL_CONNECT_ERROR, 0, "TLS error: SSL certificate problem: unable to get local issuer certificate",
     False),
    (pycurl.E_TOO_MANY_REDIRECTS, 0, "too many redirects", False),
])
def test_curls_errors_are_classified_like_aiohttps(code, os_errno, reason, retryable):
    err = as_download_error(pycurl.error(code, "SSL certificate problem: unable to get local issuer certificate",
                                         os_errno))
    assert str(err) == reason and err.retryable is retryable
