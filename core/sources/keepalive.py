"""Plain GETs for listing pages: one keep-alive http.client connection per listing thread. A page is one
request at a time, so a pool, requests or aiohttp would only add cost (the S3 and OSS sources use this).
Proxies and certificates are the run's (core/network.py), as for the engine's GETs."""
from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
from urllib.parse import urlsplit

from core.errors import DownloadError, ProxyRefused, tls_error
from core.network import Network

_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})")


class KeepAliveGet:
    """`get(url)` → (status, lower-cased headers, body); failures to reach the store as retryable
    DownloadErrors. A stale keep-alive connection (closed by the store) is retried once on a new one."""

    def __init__(self, timeout: float | None, network: Network):
        self.timeout = timeout
        self.network = network
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []  # every thread's, so close() reaches them all
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __call__(self, url: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        proxy = self.network.proxy_for(url)
        # Through a proxy a plain-HTTP request names the whole URL; HTTPS goes through a CONNECT tunnel.
        target = url if proxy and parts.scheme == "http" else f"{parts.path}?{parts.query}"
        headers = {"Proxy-Authorization": proxy.authorization} if proxy and proxy.user and parts.scheme == "http" \
            else {}
        for fresh in (False, True):
            conn = self._connection(parts, proxy, fresh)
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if fresh:  # a new connection failed too: the store, not a stale keep-alive
                    raise DownloadError("connection reset", retryable=True) from None
            except (socket.timeout, TimeoutError):
                conn.close()
                raise DownloadError("timeout", retryable=True) from None
            except ssl.SSLError as exc:
                conn.close()
                raise tls_error(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                refused = _TUNNEL_REFUSED.match(str(exc))
                if proxy and refused:
                    raise ProxyRefused(int(refused.group(1)), proxy) from None
                if proxy and isinstance(exc, (ConnectionRefusedError, socket.gaierror)):  # only the proxy is dialled
                    raise DownloadError(f"cannot connect to the proxy {proxy}: {exc.strerror}", retryable=True) from None
                raise DownloadError(f"connection error: {exc}", retryable=True) from None
        raise AssertionError("unreachable")

    def _connection(self, parts, proxy, fresh: bool) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if fresh or conn is None or getattr(self._local, "netloc", None) != parts.netloc:
            if conn is not None:
                conn.close()
            host, port = (proxy.host, proxy.port) if proxy else (parts.hostname, parts.port)
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.network.tls.context)
                if proxy:
                    conn.set_tunnel(parts.hostname, parts.port or 443, headers={
                        "Proxy-Authorization": proxy.authorization} if proxy.user else None)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            self._local.conn, self._local.netloc = conn, parts.netloc
            with self._lock:
                self._all.append(conn)
        return conn
