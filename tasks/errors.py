"""The one place that decides what a failure means and whether it is worth retrying."""
from __future__ import annotations

import asyncio
import errno
import json
import re
import socket

import aiohttp

RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                   "TooManyRequests", "RequestTimeTooSkewed",
                   "99991400"}  # Feishu: "request trigger frequency limit"


class UsageError(Exception):
    """Bad input or an unusable store/output: the run cannot start. Exit 2, one line."""


class NothingSelected(Exception):
    """The run selected no object (fail_if_empty): a wrong prefix or filter must not look like success. Exit 3."""


class DownloadError(Exception):
    """One object could not be fetched; `retryable` says whether another attempt may succeed."""

    retryable = False

    def __init__(self, message: str, retryable: bool | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class HTTPStatusError(DownloadError):
    def __init__(self, status: int, code: str = "", message: str = ""):
        self.status, self.code = status, code
        text = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        super().__init__(text, retryable=status >= 500 or status in (408, 429) or code in RETRYABLE_CODES)

    @property
    def expired(self) -> bool:
        return self.status in (400, 403) and "expired" in str(self).lower()


class IntegrityError(DownloadError):
    """Size or checksum mismatch: the bytes were damaged in transit, so fetch again."""

    retryable = True


class UnsafeKeyError(DownloadError):
    """The key cannot be mapped to a safe local path."""


class LocalPathError(DownloadError):
    """The local file system refused (conflict, permissions, name too long)."""


_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,200})</Message>")


def http_error(status: int, body: bytes) -> HTTPStatusError:
    """Build an error from an error response body: S3/OSS XML (Code, Message) or Feishu JSON (code, msg)."""
    if (body or b"").lstrip().startswith(b"{"):
        try:
            value = json.loads(body)
            return HTTPStatusError(status, str(value.get("code", "")), str(value.get("msg", ""))[:200])
        except (ValueError, AttributeError):
            pass
    code = _ERROR_CODE.search(body or b"")
    message = _ERROR_MESSAGE.search(body or b"")
    return HTTPStatusError(status, code.group(1).decode(errors="replace") if code else "",
                           message.group(1).decode(errors="replace") if message else "")


def as_download_error(exc: BaseException) -> DownloadError:
    """Map any exception raised while fetching one object to a DownloadError with a short reason."""
    if isinstance(exc, DownloadError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, socket.timeout)):
        return DownloadError("timeout", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return DownloadError("truncated body: connection closed before the whole object arrived", retryable=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return DownloadError("connection reset", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return DownloadError(f"cannot connect: {exc.os_error.strerror or exc.os_error}", retryable=True)
    if isinstance(exc, aiohttp.ClientError):
        return DownloadError(f"connection error: {type(exc).__name__}", retryable=True)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            return LocalPathError(f"file/folder conflict: {exc.strerror}")
        if exc.errno == errno.ENAMETOOLONG:
            return LocalPathError("local name too long")
        if exc.errno == errno.ENOSPC:
            return LocalPathError("no space left on device", retryable=True)
        return LocalPathError(f"local file error: {exc.strerror or exc}")
    return DownloadError(f"{type(exc).__name__}: {exc}")


def is_retryable(exc: BaseException) -> bool:
    return as_download_error(exc).retryable
