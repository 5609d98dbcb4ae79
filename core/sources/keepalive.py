"""Plain GETs for listing pages: one keep-alive http.client connection per listing thread. A page is one
request at a time, so a pool, requests or aiohttp would only add cost (the S3 and OSS sources use this)."""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
from urllib.parse import urlsplit

from core.errors import DownloadError


class KeepAliveGet:
    """`get(url)` → (status, lower-cased headers, body); failures to reach the store as retryable
    DownloadErrors. A stale keep-alive connection (closed by the store) is retried once on a new one."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self._local = threading.local()

    def __call__(self, url: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        target = f"{parts.path}?{parts.query}"
        for fresh in (False, True):
            conn = self._connection(parts, fresh)
            try:
                conn.request("GET", target)
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if fresh:  # a new connection failed too: the store, not a stale keep-alive
                    raise DownloadError("connection reset", retryable=True) from None
            except (socket.timeout, TimeoutError):
                conn.close()
                raise DownloadError("timeout", retryable=True) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise DownloadError(f"connection error: {exc}", retryable=True) from None
        raise AssertionError("unreachable")

    def _connection(self, parts, fresh: bool) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if fresh or conn is None or getattr(self._local, "netloc", None) != parts.netloc:
            if conn is not None:
                conn.close()
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
            self._local.conn, self._local.netloc = conn, parts.netloc
        return conn
