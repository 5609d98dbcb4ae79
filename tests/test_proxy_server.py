"""infra.proxy: the tests' forward proxy, against stdlib HTTP(S) origins on loopback, through real sockets."""
from __future__ import annotations

import base64
import http.client
import signal
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import has_ipv6_loopback, need_program

from infra.proxy import ForwardProxy, ProxyRequest

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "us@er", "p@ss:word"


class Origin(BaseHTTPRequestHandler):
    """Echoes method, path and body; a few paths answer with other framings."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go out in two writes

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self._body()
        self.server.seen.append(SimpleNamespace(method=self.command, path=self.path, body=body,
                                                headers=list(self.headers.items())))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in (b"hello ", b"chunked " * 5000, b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif self.path == "/close":   # no length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until close")
        elif self.path == "/nocontent":
            self.send_response(204)
            self.end_headers()
        else:
            out = f"{self.command} {self.path} ".encode() + body
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

    do_POST = do_PUT = do_HEAD = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass   # resets are what some tests make


class Server6(Server):
    address_family = socket.AF_INET6


def serve(server):
    server.seen = []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def origin():
    server = serve(Server(("127.0.0.1", 0), Origin))
    yield server
    stop(server)


@pytest.fixture
def proxy():
    with ForwardProxy() as p:
        yield p


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A throwaway CA and a certificate for site.test it signed (a CA apart: Python 3.13 verifies strictly)."""
    need_program("openssl", "openssl")
    d = tmp_path_factory.mktemp("certs")
    (d / "ca.cnf").write_text("[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN=test-proxy-ca\n"
                              "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
    (d / "site.ext").write_text("subjectAltName=DNS:site.test\nbasicConstraints=critical,CA:FALSE\n"
                                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["req", "-x509", "-config", "ca.cnf", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                ["req", *ec, "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=site.test"],
                ["x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "site.pem", "-days", "2", "-extfile", "site.ext"]):
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)
    return d


@pytest.fixture
def tls_origin(certs):
    server = Server(("127.0.0.1", 0), Origin)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "site.pem", certs / "site.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    yield serve(server)
    stop(server)


def via(proxy, method, url, body=None, headers=None, auth=None):
    """One request through the proxy on a new connection: (status, headers, body)."""
    where = urlsplit(proxy.url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    headers = dict(headers or {})
    if auth:
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    conn.request(method, url, body=body, headers=headers)
    resp = conn.getresponse()
    try:
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def connect(proxy, target: str, extra: bytes = b"") -> tuple[socket.socket, bytes]:
    """A raw CONNECT: the socket and the proxy's answer head."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target.encode(), target.encode(), extra))
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            break
        head += data
    return sock, head


def read_all(sock) -> bytes:
    out = b""
    while data := sock.recv(1 << 20):
        out += data
    return out


def test_absolute_form_forwards_exact_path_bytes_and_host_without_hop_by_hop(proxy, origin):
    port = origin.server_port
    path = "/a%2Fb+c/./d//e?x=1&y=%20+%2F"
    status, _, body = via(proxy, "GET", f"http://anything.test:{port}{path}",
                          headers={"Proxy-Connection": "keep-alive", "Connection": "X-Drop", "X-Drop": "1",
                                   "Keep-Alive": "300", "TE": "trailers", "X-Keep": "2"})
    assert (status, body) == (200, f"GET {path} ".encode())
    seen = origin.seen[-1]
    names = {name.lower() for name, _ in seen.headers}
    assert seen.path == path
    assert dict(seen.headers)["Host"] == f"anything.test:{port}"
    assert names.isdisjoint({"connection", "proxy-connection", "x-drop", "keep-alive", "te"}) and "x-keep" in names
    assert proxy.requests == [ProxyRequest("GET", "anything.test", port, path, None, True)]


def test_host_header_is_kept_as_sent_or_added_from_the_uri(proxy, origin):
    port = origin.server_port
    for head, host in ((b"Host: Other.TEST\r\n", "Other.TEST"), (b"", f"MiXed.Test:{port}")):
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
            sock.sendall(b"GET http://MiXed.Test:%d/h?q HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (port, head))
            assert read_all(sock).startswith(b"HTTP/1.1 200 ")
        assert (origin.seen[-1].path, dict(origin.seen[-1].headers)["Host"]) == ("/h?q", host)
    assert proxy.hosts() == {"mixed.test"} and proxy.count(method="GET") == 2


def test_keep_alive_carries_every_framing_on_one_client_connection(proxy, origin):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    base = f"http://store.test:{origin.server_port}"
    big = bytes(range(256)) * 12_000   # ~3 MiB: more than one read on each side
    sock = None
    for method, path, body, want in (
            ("GET", "/one", None, b"GET /one "),
            ("GET", "/chunked", None, b"hello " + b"chunked " * 5000 + b"world"),
            ("HEAD", "/head", None, b""),
            ("GET", "/nocontent", None, b""),
            ("POST", "/post", b"form=data", b"POST /post form=data"),
            ("PUT", "/big", big, b"PUT /big " + big),
            ("POST", "/chunked-up", iter([b"in ", b"three ", b"chunks"]), b"POST /chunked-up in three chunks"),
            ("GET", "/two", None, b"GET /two ")):
        conn.request(method, base + path, body=body, encode_chunked=not isinstance(body, (bytes, type(None))))
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == ((204 if path == "/nocontent" else 200), want), path
        assert conn.sock is not None and conn.sock is (sock or conn.sock), f"client connection closed after {path}"
        sock = conn.sock
    assert [s.body for s in origin.seen if s.method in ("POST", "PUT")] == [b"form=data", big, b"in three chunks"]
    assert proxy.count(host="store.test") == 8 and proxy.bytes_up > len(big) and proxy.bytes_down > len(big)
    conn.close()


def test_response_delimited_by_close_closes_the_client_connection(proxy, origin):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", f"http://store.test:{origin.server_port}/close")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Connection"), resp.read()) == (200, "close", b"until close")
    assert conn.sock is None
    conn.close()


def test_a_kept_upstream_connection_closed_under_a_request_is_retried_on_a_new_one(proxy):
    """The upstream takes the second request on its kept connection, then hangs up without an answer (an idle
    timeout's race): a request without a body goes again on a new connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def head(sock):
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            data += sock.recv(1)
        return data

    def upstream():
        with listener:
            with listener.accept()[0] as first:
                head(first)
                first.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                head(first)
            with listener.accept()[0] as second:
                head(second)
                second.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
    threading.Thread(target=upstream, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    for want in (b"first", b"second"):
        conn.request("GET", f"http://store.test:{listener.getsockname()[1]}/")
        assert conn.getresponse().read() == want
    assert [r.status for r in proxy.requests] == [None, None]
    conn.close()


def test_expect_100_continue_is_relayed(proxy, origin):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"PUT http://store.test:%d/expect HTTP/1.1\r\nHost: store.test\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % origin.server_port)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"data")
        assert read_all(sock).endswith(b"\r\n\r\nPUT /expect data")


def test_https_through_connect_verifies_the_test_name(proxy, tls_origin, certs):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
    conn.set_tunnel("site.test", tls_origin.server_port)
    for path in ("/secure", "/again"):   # both over the one tunnel
        conn.request("GET", path)
        assert conn.getresponse().read() == f"GET {path} ".encode()
    conn.close()
    assert dict(tls_origin.seen[-1].headers)["Host"] == f"site.test:{tls_origin.server_port}"
    assert proxy.requests == [ProxyRequest("CONNECT", "site.test", tls_origin.server_port, None, None, True)]
    wrong = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
    wrong.set_tunnel("other.test", tls_origin.server_port)
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.request("GET", "/")
    wrong.close()


def test_connect_half_close_and_bulk_bytes(proxy):
    """The client ends its side; the upstream answers after that EOF, and the answer still gets through."""
    listener = socket.create_server(("127.0.0.1", 0))

    def reverse_after_eof():
        peer, _ = listener.accept()
        with peer:
            peer.sendall(read_all(peer)[::-1])
    threading.Thread(target=reverse_after_eof, daemon=True).start()
    data = bytes(range(256)) * 8192
    sock, head = connect(proxy, f"echo.test:{listener.getsockname()[1]}")
    with sock, listener:
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == data[::-1]


def test_proxy_authentication(origin, tls_origin, certs):
    url = f"http://locked.test:{origin.server_port}/x"
    with ForwardProxy(credentials=(USER, PASSWORD)) as proxy:
        parts = urlsplit(proxy.url_with(USER, PASSWORD))
        assert parts.netloc == f"us%40er:p%40ss%3Aword@127.0.0.1:{proxy.port}"
        auth = (unquote(parts.username), unquote(parts.password))
        for wrong in (None, (USER, "nope"), ("us", "er:p@ss:word")):
            status, resp, _ = via(proxy, "GET", url, auth=wrong)
            assert (status, resp.getheader("Proxy-Authenticate")) == (407, 'Basic realm="test-proxy"')
        assert origin.seen == []
        status, _, body = via(proxy, "GET", url, auth=auth)
        assert (status, body) == (200, b"GET /x ")
        assert not any(name.lower() == "proxy-authorization" for name, _ in origin.seen[-1].headers)

        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        for headers, ok in (({}, False), ({"Proxy-Authorization": "Basic " + base64.b64encode(
                b"us@er:p@ss:word").decode()}, True)):
            conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
            conn.set_tunnel("site.test", tls_origin.server_port, headers=headers)
            if ok:
                conn.request("GET", "/tls")
                assert conn.getresponse().read() == b"GET /tls "
            else:
                with pytest.raises(OSError, match="407"):
                    conn.request("GET", "/tls")
            conn.close()
        assert [(r.method, r.status, r.authorized) for r in proxy.requests] == [
            ("GET", 407, False)] * 3 + [("GET", None, True), ("CONNECT", 407, False), ("CONNECT", None, True)]


def test_other_names_are_refused_without_any_lookup(proxy, origin, monkeypatch):
    looked_up = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: looked_up.append(host) or real(host, *a, **k))
    for method, url, body in (("GET", "http://nonexistent.invalid/x", None), ("GET", "http://example.com:8080/", None),
                              ("POST", "http://10.1.2.3/upload", b"z" * 300_000)):
        status, resp, text = via(proxy, method, url, body=body)
        host = urlsplit(url).hostname
        assert (status, text) == (403, f"refused by the test proxy: {host} is not under .test\n".encode())
    sock, head = connect(proxy, "example.com:443")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert {str(h) for h in looked_up} <= {"127.0.0.1"}, looked_up   # only this test's own connects to the proxy
    assert origin.seen == []
    assert [(r.method, r.host, r.port, r.status) for r in proxy.requests] == [
        ("GET", "nonexistent.invalid", 80, 403), ("GET", "example.com", 8080, 403), ("POST", "10.1.2.3", 80, 403),
        ("CONNECT", "example.com", 443, 403)]
    proxy.clear()
    assert proxy.requests == [] and proxy.hosts() == set()


def test_unreachable_upstream_is_502_and_origin_form_is_400(proxy):
    dead = free_port()
    status, _, text = via(proxy, "GET", f"http://dead.test:{dead}/x")
    assert status == 502 and b"could not connect" in text
    sock, head = connect(proxy, f"dead.test:{dead}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert via(proxy, "GET", "/not-a-proxy-request")[0] == 400
    assert [(r.method, r.host, r.port, r.status) for r in proxy.requests] == [
        ("GET", "dead.test", dead, 502), ("CONNECT", "dead.test", dead, 502), ("GET", "", 0, 400)]


def test_routes_and_loopback_only_configuration(origin):
    with ForwardProxy(routes={"Mapped.test:443": ("127.0.0.1", origin.server_port)}) as proxy:
        assert via(proxy, "GET", "http://mapped.test:443/routed")[2] == b"GET /routed "
        assert via(proxy, "GET", f"http://localhost:{origin.server_port}/lo")[2] == b"GET /lo "
    with pytest.raises(ValueError):
        ForwardProxy(routes={"x.test:443": ("192.0.2.1", 443)})
    with pytest.raises(ValueError):
        ForwardProxy(upstream_host="example.com")


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")
def test_ipv6_listening_and_connect_to_an_ipv6_literal():
    origin = serve(Server6(("::1", 0), Origin))
    try:
        with ForwardProxy(ipv6=True) as proxy:
            assert proxy.url == f"http://[::1]:{proxy.port}"
            sock, head = connect(proxy, f"[::1]:{origin.server_port}")
            with sock:
                assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
                sock.sendall(b"GET /v6 HTTP/1.1\r\nHost: v6\r\nConnection: close\r\n\r\n")
                assert read_all(sock).endswith(b"\r\n\r\nGET /v6 ")
            assert via(proxy, "GET", f"http://[::1]:{origin.server_port}/abs")[2] == b"GET /abs "
            assert [(r.method, r.host, r.port) for r in proxy.requests] == [
                ("CONNECT", "::1", origin.server_port), ("GET", "::1", origin.server_port)]
    finally:
        stop(origin)


def test_kill_resets_open_connections_and_refuses_new_ones(origin):
    proxy = ForwardProxy().start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", f"http://store.test:{origin.server_port}/before")
        assert conn.getresponse().read() == b"GET /before "
        tunnel, head = connect(proxy, f"store.test:{origin.server_port}")
        assert head.startswith(b"HTTP/1.1 200 ")
        proxy.kill()
        with pytest.raises(ConnectionError):
            conn.request("GET", f"http://store.test:{origin.server_port}/after")
            conn.getresponse()
        with pytest.raises(ConnectionResetError):
            tunnel.recv(100)
        with pytest.raises(ConnectionRefusedError):
            via(proxy, "GET", f"http://store.test:{origin.server_port}/new")
        conn.close()
        tunnel.close()
    finally:
        proxy.stop()


def test_command_line_prints_a_working_url(origin):
    with subprocess.Popen([sys.executable, "-m", "infra.proxy", "--user", "u", "--password", "p@ss"], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            url = proc.stdout.readline().strip()
            assert url.startswith("http://u:p%40ss@127.0.0.1:")
            cli = SimpleNamespace(url=f"http://127.0.0.1:{urlsplit(url).port}")
            assert via(cli, "GET", f"http://cli.test:{origin.server_port}/", auth=("u", "p@ss"))[2] == b"GET / "
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
