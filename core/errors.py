"""The one place that decides what a failure means and whether it is worth another try, and the one
retry policy every request of the product goes through (objects, listing pages, Feishu API calls)."""
from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import socket
import ssl
import sys

from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                   "TooManyRequests",
                   "99991400"}  # Feishu: "request trigger frequency limit"


class UsageError(Exception):
    """Bad input or an unusable store/output: the run cannot start. Exit 2, one line."""


class NothingSelected(Exception):
    """The run selected no object (fail_if_empty): a wrong prefix or filter must not look like success. Exit 3."""


class DownloadError(Exception):
    """One request failed; `retryable` says whether another attempt may succeed."""

    retryable = False

    def __init__(self, message: str, retryable: bool | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class HTTPStatusError(DownloadError):
    def __init__(self, status: int, code: str = "", message: str = "", date: str = ""):
        self.status, self.code = status, code
        self.date = date  # the answer's Date header: the store's clock
        text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        super().__init__(text, retryable=status >= 500 or status in (408, 429) or code in RETRYABLE_CODES)

    @property
    def expired(self) -> bool:
        return self.status in (400, 403) and "expired" in str(self).lower()


class ProxyRefused(HTTPStatusError):
    """The proxy answered the request (or its CONNECT) itself: 407 (credentials), 403 (not allowed there),
    5xx (it could not reach the server: worth another try, like any connection failure)."""

    def __init__(self, status: int, proxy=None):
        super().__init__(status)
        self.proxy = proxy
        reason = _PROXY_REASONS.get(status, "")
        self.args = (f"the proxy{' ' + str(proxy) if proxy else ''} answered {status}{' ' + reason if reason else ''}",)


_PROXY_REASONS = {403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway",
                  503: "Service Unavailable", 504: "Gateway Timeout"}


class IntegrityError(DownloadError):
    """The bytes are not the listed object's (short, too long, wrong range, checksum): fetch again."""

    retryable = True


class TooSlow(DownloadError):
    """The body arrived slower than the low-speed limit: a stalled or trickling server."""

    retryable = True


class UnsafeKeyError(DownloadError):
    """The key cannot be mapped to a safe local path."""


class LocalPathError(DownloadError):
    """The local file system refused (conflict, permissions, name too long, a symbolic link)."""


class KeyClash(LocalPathError):
    """The key itself cannot be a file here (a file where another key needs a folder, a name too long): every
    run meets it again, so it never holds a mirror back."""


class TLSError(DownloadError):
    """The server's certificate (or the handshake) was refused: another attempt meets the same server."""


class DiskFull(DownloadError):
    """No space left where the files go: never retried; it stops the whole run."""

    def __init__(self, folder: str):
        super().__init__(f"no space left on device in {folder}")
        self.folder = folder


class ListingError(Exception):
    """The listing could not be completed (after retries, or the store answered nonsense): the run
    reports what it got, says the listing is incomplete and exits 1."""


_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,200})</Message>")


def http_error(status: int, body: bytes, date: str = "") -> HTTPStatusError:
    """Build an error from an error response body: S3/OSS XML (Code, Message) or Feishu JSON (code, msg).
    407 comes only from a proxy (a plain request through it, no CONNECT)."""
    if status == 407:
        return ProxyRefused(407)
    if (body or b"").lstrip().startswith(b"{"):
        try:
            value = json.loads(body)
            return HTTPStatusError(status, str(value.get("code", "")), str(value.get("msg", ""))[:200], date)
        except (ValueError, AttributeError):
            pass
    code = _ERROR_CODE.search(body or b"")
    message = _ERROR_MESSAGE.search(body or b"")
    return HTTPStatusError(status, code.group(1).decode(errors="replace") if code else "",
                           message.group(1).decode(errors="replace") if message else "", date)


CLOCK_TOLERANCE = 300  # seconds: below this a refusal is not blamed on the local clock
_TIME_REFUSALS = ("expired", "not yet valid", "not valid yet", "time too skewed", "timetooskewed")


def clock_off(err: HTTPStatusError) -> UsageError | None:
    """A signed request refused for its time while this machine's clock is far from the store's (its Date
    header): the one line that says so and by how much. Presigned URLs then arrive expired or not yet valid
    on every request, so no retry can help."""
    text = f"{err.code} {err}".lower()
    if err.status not in (400, 403) or not err.date or not any(word in text for word in _TIME_REFUSALS):
        return None
    import email.utils
    import time
    try:
        store = email.utils.parsedate_to_datetime(err.date).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    off = time.time() - store
    if abs(off) < CLOCK_TOLERANCE:
        return None
    return UsageError(f"the local clock is off: {_duration(abs(off))} {'ahead of' if off > 0 else 'behind'} the"
                      f" store's (its Date: {err.date}), so signed requests arrive"
                      f" {'not yet valid' if off > 0 else 'expired'} ({err.code or err.status}); set this machine's"
                      " clock (NTP) and run again")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{round(hours / 24)} days"


def as_download_error(exc: BaseException, folder: str = "") -> DownloadError:
    """Map any exception raised while fetching one object or page to a DownloadError with a short reason.
    `folder` names where local files go, for a disk-full message."""
    if isinstance(exc, DownloadError):
        return exc
    store = _store_sdk_error(exc)  # before OSError: some SDK exceptions are OSErrors too (timeouts)
    if store is not None:
        return store
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, socket.timeout)):
        return DownloadError("timeout", retryable=True)
    pycurl = sys.modules.get("pycurl")  # small GETs (core/engine/curl.py), when pycurl is there
    if pycurl is not None and isinstance(exc, pycurl.error):
        return _curl_error(pycurl, *exc.args)
    aiohttp = sys.modules.get("aiohttp")  # not imported: not one of its errors (imported when first used)
    if aiohttp is None:
        if isinstance(exc, ConnectionResetError):
            return DownloadError("connection reset", retryable=True)
    elif isinstance(exc, aiohttp.ClientPayloadError):
        return DownloadError("truncated body: connection closed before the whole object arrived", retryable=True)
    elif isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return DownloadError("connection reset", retryable=True)
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return tls_error(exc.certificate_error)
    elif isinstance(exc, aiohttp.ClientConnectorSSLError):
        return tls_error(exc.os_error)
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        return ProxyRefused(exc.status)
    elif isinstance(exc, aiohttp.ClientProxyConnectionError):
        return DownloadError(f"cannot connect to the proxy: {exc.os_error.strerror or exc.os_error}", retryable=True)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        return DownloadError(f"cannot connect: {exc.os_error.strerror or exc.os_error}", retryable=True)
    elif isinstance(exc, aiohttp.ClientError):
        return DownloadError(f"connection error: {type(exc).__name__}", retryable=True)
    if isinstance(exc, ssl.SSLError):
        return tls_error(exc)
    if isinstance(exc, OSError):
        return _local_error(exc, folder)
    return DownloadError(f"{type(exc).__name__}: {exc}")


def tls_error(exc: BaseException) -> TLSError:
    """A certificate or handshake refused, in the same words from http.client, aiohttp and curl."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(f"TLS error: certificate verify failed: {getattr(exc, 'verify_message', None) or exc}")
    return TLSError(f"TLS error: {getattr(exc, 'reason', None) or exc}"[:300])


def _curl_error(pycurl, code: int = 0, message: str = "", os_errno: int = 0) -> DownloadError:
    """libcurl's failures in the terms of aiohttp's above. curl's own message is kept only for TLS: it may
    name the host, never the signed URL."""
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return DownloadError("timeout", retryable=True)
    if code == pycurl.E_PARTIAL_FILE:
        return DownloadError("truncated body: connection closed before the whole object arrived", retryable=True)
    if code in (pycurl.E_GOT_NOTHING, pycurl.E_RECV_ERROR, pycurl.E_SEND_ERROR) or (
            code == pycurl.E_SSL_CONNECT_ERROR and os_errno):  # reset while shaking hands
        return DownloadError("connection reset", retryable=True)
    if code == pycurl.E_COULDNT_CONNECT:
        return DownloadError(f"cannot connect: {os.strerror(os_errno) if os_errno else 'refused'}", retryable=True)
    if code in (pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY):
        return DownloadError("cannot connect: the host name does not resolve", retryable=True)
    if code == pycurl.E_PEER_FAILED_VERIFICATION:
        return TLSError(f"TLS error: certificate verify failed: {message.removeprefix('SSL certificate problem: ')}")
    if code in _CURL_TLS:
        return TLSError(f"TLS error: {message}"[:300])
    if code == pycurl.E_TOO_MANY_REDIRECTS:
        return DownloadError("too many redirects")
    if code in (pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL):
        return DownloadError("the link is not a valid http(s) URL (or redirects to one that is not)")
    return DownloadError(f"connection error: curl error {code}", retryable=True)


_CURL_TLS = {35, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98}  # CURLE_SSL_*, PEER_FAILED_VERIFICATION


def _local_error(exc: OSError, folder: str) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(folder or (exc.filename and str(exc.filename)) or "the output folder")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOTEMPTY):
        return KeyClash(f"file/folder conflict: {exc.strerror}")
    if exc.errno == errno.ELOOP:
        return LocalPathError("unsafe local path: a folder on the way is a symbolic link")
    if exc.errno == errno.ENAMETOOLONG:
        return KeyClash("local name too long")
    return LocalPathError(f"local file error: {exc.strerror or exc}")


def _store_sdk_error(exc: BaseException) -> DownloadError | None:
    """oss2's exceptions (OSS listing goes through oss2), in the same terms as HTTP errors."""
    module = type(exc).__module__
    if module.startswith("oss2"):
        import oss2.exceptions as ox
        if isinstance(exc, ox.RequestError):
            inner = getattr(exc, "exception", None)
            refused = _inside(inner, ssl.SSLError)
            if refused is not None:
                return tls_error(refused)
            text = str(getattr(exc, "body", "") or exc)
            tunnel = re.search(r"Tunnel connection failed: (\d{3})", text)
            if tunnel:
                return ProxyRefused(int(tunnel.group(1)))
            return DownloadError("timeout" if "timed out" in text.lower() else "connection error",
                                 retryable=True)
        if isinstance(exc, ox.OssError):
            return HTTPStatusError(exc.status or 400, exc.code or "", (exc.message or "")[:200],
                                   (getattr(exc, "headers", None) or {}).get("date", ""))
    return None


def _inside(exc: BaseException | None, kind: type) -> BaseException | None:
    """The `kind` of exception a library wrapped (requests → urllib3 → ssl), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kind):
            return exc
        nested = [getattr(exc, "reason", None), exc.__cause__, exc.__context__,
                  *(a for a in getattr(exc, "args", ()) if isinstance(a, BaseException))]
        exc = next((n for n in nested if isinstance(n, BaseException) and id(n) not in seen), None)
    return None


def is_retryable(exc: BaseException) -> bool:
    return as_download_error(exc).retryable


def _policy(attempts: int, backoff: float) -> dict:
    return dict(stop=stop_after_attempt(max(1, attempts)),
                wait=wait_exponential_jitter(initial=backoff, max=30 * backoff, jitter=backoff),
                retry=retry_if_exception(is_retryable),
                reraise=True)  # tenacity's RetryError does not pickle


def retrying(attempts: int, backoff: float) -> AsyncRetrying:
    """The product's one retry policy: retryable failures only, exponential backoff with jitter."""
    return AsyncRetrying(**_policy(attempts, backoff))


def retrying_sync(attempts: int, backoff: float) -> Retrying:
    """The same policy for blocking calls (listing pages)."""
    return Retrying(**_policy(attempts, backoff))


class ObjectsFailed(Exception):
    """A run that finished with objects it could not fetch: its flow run ends Failed (so Prefect can alert),
    and whoever called the flow still gets the summary to print (exit 1 at a terminal)."""

    def __init__(self, summary):
        self.summary = summary
        super().__init__(summary)

    def __str__(self) -> str:
        s = self.summary
        where = f": see {s.failed_csv}" if getattr(s, "failed_csv", None) else ""
        failed = f"{s.failed} of {s.listed - s.filtered_out} objects failed"
        skipped = "".join(f"; {note}" for note in getattr(s, "notes", ()) if note.startswith("deletion skipped"))
        if getattr(s, "incomplete", ""):
            return f"{s.incomplete}; {failed}{where}{skipped}"
        return f"{failed}{where}{skipped}"
