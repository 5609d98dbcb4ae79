"""The listing guard and the classifier: pure rules, table-driven."""
import errno

import pytest

from core.sources import Page
from core.errors import (DiskFull, DownloadError, HTTPStatusError, ListingError, LocalPathError, TooSlow,
                          as_download_error, http_error)
from core.model import RemoteObject
from core.listing import list_page, pages


def page(keys, next_token=None, truncated=None):
    return Page([RemoteObject(k, 1) for k in keys], next_token, bool(next_token) if truncated is None else truncated)


class FakeBackend:
    """Answers pages from a script; every page request is counted."""
    ordered = True

    def __init__(self, script):
        self.script, self.calls = dict(script), []

    def list_page(self, token):
        self.calls.append(token)
        answer = self.script[token]
        if isinstance(answer, list):
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def listed(backend):
    return [o.key for p in pages(backend, lambda token, n: list_page(backend, token, 3, 0.0)) for o in p.objects]


def test_a_sane_listing_is_followed_to_its_end():
    b = FakeBackend({None: page(["a", "b"], "t1"), "t1": page(["c"], "t2"), "t2": page(["d"])})
    assert listed(b) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("script, message", [
    ({None: page(["a"], None, truncated=True)}, "no continuation token"),
    ({None: page(["a"], "t1"), "t1": page(["b"], "t1")}, "repeated a continuation token"),
    ({None: page(["a"], "t1"), "t1": page(["b"], "t2"), "t2": page(["c"], "t1")}, "repeated a continuation token"),
    ({None: page(["b"], "t1"), "t1": page(["a"])}, "went backwards"),
    ({None: page(["a", "a"])}, "went backwards"),
])
def test_a_broken_listing_is_an_error_after_the_pages_that_were_good(script, message):
    b = FakeBackend(script)
    got = []
    with pytest.raises(ListingError, match=message):
        for p in pages(b, lambda token, n: list_page(b, token, 1, 0.0)):
            got += [o.key for o in p.objects]
    assert got[:1] == [script[None].objects[0].key] or message == "went backwards"


def test_unordered_sources_are_not_held_to_key_order():
    b = FakeBackend({None: page(["b", "a"], "t1"), "t1": page(["a"])})
    b.ordered = False
    assert listed(b) == ["b", "a", "a"]


def test_retryable_page_failures_are_retried_and_others_are_not():
    flaky = FakeBackend({None: [HTTPStatusError(503, "SlowDown"), HTTPStatusError(500), page(["a"])]})
    assert listed(flaky) == ["a"] and len(flaky.calls) == 3
    denied = FakeBackend({None: [HTTPStatusError(403, "AccessDenied"), page(["a"])]})
    with pytest.raises(ListingError, match="listing failed: HTTP 403 AccessDenied"):
        listed(denied)
    assert len(denied.calls) == 1
    down = FakeBackend({None: [HTTPStatusError(503, "SlowDown")] * 3})
    with pytest.raises(ListingError, match="listing failed after 3 attempts: HTTP 503 SlowDown"):
        listed(down)


@pytest.mark.parametrize("exc, kind, retryable, text", [
    (HTTPStatusError(503, "SlowDown"), HTTPStatusError, True, "HTTP 503 SlowDown"),
    (HTTPStatusError(429), HTTPStatusError, True, "HTTP 429"),
    (HTTPStatusError(404, "NoSuchKey"), HTTPStatusError, False, "HTTP 404 NoSuchKey"),
    (HTTPStatusError(400, "99991400"), HTTPStatusError, True, "HTTP 400 99991400"),
    (TimeoutError(), DownloadError, True, "timeout"),
    (ConnectionResetError(), DownloadError, True, "connection reset"),
    (OSError(errno.ENOSPC, "No space left on device"), DiskFull, False, "no space left on device in /out"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), DiskFull, False, "no space left on device in /out"),
    (OSError(errno.EISDIR, "Is a directory"), LocalPathError, False, "file/folder conflict"),
    (OSError(errno.ELOOP, "Too many levels"), LocalPathError, False, "symbolic link"),
    (OSError(errno.EACCES, "Permission denied"), LocalPathError, False, "local file error: Permission denied"),
    (TooSlow("too slow: x"), TooSlow, True, "too slow"),
    (ValueError("boom"), DownloadError, False, "ValueError: boom"),
])
def test_one_classifier_for_every_failure(exc, kind, retryable, text):
    err = as_download_error(exc, "/out")
    assert isinstance(err, kind) and err.retryable is retryable and text in str(err)


def test_sdk_errors_are_classified_like_http_errors():
    import oss2.exceptions as ox
    assert as_download_error(ox.RequestError(Exception("timed out"))).retryable
    denied = ox.ServerError(403, {}, b"<Error><Code>AccessDenied</Code></Error>", {"Code": "AccessDenied"})
    assert not as_download_error(denied).retryable


def test_error_bodies_of_every_dialect():
    assert str(http_error(503, b"<Error><Code>SlowDown</Code><Message>Reduce</Message></Error>")) == \
        "HTTP 503 SlowDown: Reduce"
    assert str(http_error(400, b'{"code": 1061045, "msg": "download url expired"}')) == \
        "HTTP 400 1061045: download url expired"
    assert str(http_error(502, b"<html>bad gateway</html>")) == "HTTP 502"


def test_the_http_clients_errors_are_classified():
    """aiohttp is imported only for the first GET; once it is, its errors are told apart by the classifier."""
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    cases = [(aiohttp.ClientPayloadError("cut"), "truncated body"),
             (aiohttp.ServerDisconnectedError(), "connection reset"),
             (aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused")),
              "cannot connect: Connection refused"),
             (aiohttp.ClientOSError(), "connection error: ClientOSError")]
    for exc, text in cases:
        err = as_download_error(exc)
        assert err.retryable and text in str(err), (exc, err)
