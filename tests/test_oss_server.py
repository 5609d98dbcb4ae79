"""infra.oss_server speaks enough OSS for oss2: listings, reads, signatures (V1/V4/STS), errors and faults."""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import oss2
import pytest

from tests.conftest import has_ipv6_loopback
import requests
from oss2.credentials import StaticCredentialsProvider
from oss2.utils import Crc64

from core.sources.ossv1 import OssV1Signer
from infra.oss_server import ACCESS_KEY, SECRET_KEY, OssServer

BUCKET = "bulk-bucket"
REGION = "cn-hangzhou"
STS_ID, STS_SECRET, STS_TOKEN = "STS.temp-key-id", "temp-secret", "token/with+chars=="
TRICKY = ["tricky/a b", "tricky/a+b", "tricky/100%", "tricky/%41", "tricky/中文.txt", "tricky/x#y",
          "tricky/q?x=1&y=2", "tricky/ünï", "tricky/😀", "tricky/~t.-_", "tricky/a//b", " lead space",
          "tricky/<&>'\""]
TREE = ["tree/a/1", "tree/a/2", "tree/b/1", "tree/c", "tree/d/e/f", "tree/z"]
BIG = b"0123456789abcdef" * 4096 + b"tail"     # 65,540 bytes


def utf8_sorted(keys):
    return sorted(keys, key=lambda k: k.encode("utf-8"))


@pytest.fixture(scope="module")
def server():
    with OssServer() as s:
        s.create_bucket(BUCKET)
        for i in range(2480):
            s.put(BUCKET, f"page/{i:05d}", b"x")
        for key in TRICKY + TREE:
            s.put(BUCKET, key, key.encode())
        s.put(BUCKET, "big.bin", BIG)
        s.put(BUCKET, "cold/archived.bin", b"frozen", storage_class="Archive")
        s.put(BUCKET, "cold/deep.bin", b"frozen", storage_class="DeepColdArchive")
        s.put(BUCKET, "cold/ia.bin", b"warm", storage_class="IA")
        s.add_sts(STS_ID, STS_SECRET, STS_TOKEN)
        yield s


@pytest.fixture(autouse=True)
def _fresh_faults(server):
    server.clear_faults()
    yield
    server.clear_faults()


ALL_KEYS = utf8_sorted([f"page/{i:05d}" for i in range(2480)] + TRICKY + TREE + [
    "big.bin", "cold/archived.bin", "cold/deep.bin", "cold/ia.bin"])


def v1(server, secret=SECRET_KEY, key_id=ACCESS_KEY, **kw):
    return oss2.Bucket(oss2.Auth(key_id, secret), server.endpoint, BUCKET, **kw)


def v4(server, secret=SECRET_KEY, key_id=ACCESS_KEY, **kw):
    auth = oss2.ProviderAuthV4(StaticCredentialsProvider(key_id, secret))
    return oss2.Bucket(auth, server.endpoint, BUCKET, region=REGION, **kw)


def http_error(url, **headers):
    """GET url with urllib; return (status, OSS error code, message) of the expected HTTP error."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
    body = info.value.read().decode()
    code = body.split("<Code>")[1].split("</Code>")[0]
    message = body.split("<Message>")[1].split("</Message>")[0]
    assert info.value.headers["x-oss-request-id"]
    return info.value.code, code, message


# ----- listings -----------------------------------------------------------------------------------

def test_list_v1_pages_through_every_key_once_in_utf8_order(server):
    bucket = v1(server)
    seen, marker, pages = [], "", 0
    while True:
        result = bucket.list_objects(marker=marker, max_keys=1000)
        seen += [o.key for o in result.object_list]
        pages += 1
        if not result.is_truncated:
            break
        assert result.next_marker == seen[-1]
        marker = result.next_marker
    assert seen == ALL_KEYS
    assert pages == 3
    info = {o.key: o for o in result.object_list}
    assert info["tricky/😀"].size == len("tricky/😀".encode())
    assert info["tricky/😀"].type == "Normal" and info["tricky/😀"].storage_class == "Standard"
    assert info["tricky/😀"].owner is not None     # v1 always reports the owner
    assert info["tricky/😀"].etag == hashlib.md5("tricky/😀".encode()).hexdigest().upper()


def test_list_v2_pages_through_every_key_once(server):
    bucket = v1(server)
    seen, token, pages = [], "", 0
    while True:
        result = bucket.list_objects_v2(continuation_token=token, max_keys=999)
        seen += [o.key for o in result.object_list]
        assert all(o.owner is None for o in result.object_list)     # fetch-owner defaults to false
        pages += 1
        if not result.is_truncated:
            break
        token = result.next_continuation_token
    assert seen == ALL_KEYS
    assert pages == 3
    # oss2's own iterators agree, and start-after / fetch-owner work.
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="tricky/", max_keys=2)] == utf8_sorted(
        [k for k in TRICKY if k.startswith("tricky/")])
    after = bucket.list_objects_v2(prefix="tricky/", start_after="tricky/q?x=1&y=2", fetch_owner=True)
    assert [o.key for o in after.object_list] == [k for k in utf8_sorted(TRICKY)
                                                  if k.startswith("tricky/") and k > "tricky/q?x=1&y=2"]
    assert all(o.owner.id for o in after.object_list)


def test_delimiter_rolls_keys_into_common_prefixes_across_pages(server):
    bucket = v1(server)
    full = bucket.list_objects(prefix="tree/", delimiter="/", max_keys=100)
    assert full.prefix_list == ["tree/a/", "tree/b/", "tree/d/"]
    assert [o.key for o in full.object_list] == ["tree/c", "tree/z"]
    # One item per page: prefixes and keys each show up exactly once, in order.
    for iterator in (oss2.ObjectIterator(bucket, prefix="tree/", delimiter="/", max_keys=1),
                     oss2.ObjectIteratorV2(bucket, prefix="tree/", delimiter="/", max_keys=1)):
        assert [o.key for o in iterator] == ["tree/a/", "tree/b/", "tree/c", "tree/d/", "tree/z"]
    top = bucket.list_objects(delimiter="/", max_keys=1000)
    assert top.prefix_list == utf8_sorted(["cold/", "page/", "tree/", "tricky/"])
    assert [o.key for o in top.object_list] == [" lead space", "big.bin"]


def test_listing_reports_storage_class_and_rejects_bad_arguments(server):
    bucket = v1(server)
    classes = {o.key: o.storage_class for o in bucket.list_objects(prefix="cold/").object_list}
    assert classes == {"cold/archived.bin": "Archive", "cold/deep.bin": "DeepColdArchive", "cold/ia.bin": "IA"}
    with pytest.raises(oss2.exceptions.InvalidArgument):
        bucket.list_objects(max_keys=1001)
    with pytest.raises(oss2.exceptions.InvalidArgument):
        bucket.list_objects_v2(encoding_type="base64")


# ----- reads ----------------------------------------------------------------------------------------

def test_get_whole_ranged_and_head(server):
    bucket = v1(server)
    whole = bucket.get_object("big.bin")
    assert whole.status == 200 and whole.read() == BIG
    assert whole.headers["x-oss-object-type"] == "Normal" and whole.headers["x-oss-storage-class"] == "Standard"
    assert whole.headers["Last-Modified"].endswith("GMT") and whole.request_id
    ranged = bucket.get_object("big.bin", byte_range=(10, 19))
    assert ranged.status == 206 and ranged.read() == BIG[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(BIG)}"
    assert bucket.get_object("big.bin", byte_range=(65530, None)).read() == BIG[65530:]
    assert bucket.get_object("big.bin", byte_range=(None, 4)).read() == b"tail"
    # OSS serves the whole object for a range past the end, unless asked for standard behaviour.
    assert bucket.get_object("tree/c", byte_range=(0, 999)).status == 200
    clamped = bucket.get_object("tree/c", byte_range=(2, 999), headers={"x-oss-range-behavior": "standard"})
    assert clamped.status == 206 and clamped.read() == b"ee/c"
    head = bucket.head_object("tricky/中文.txt")
    assert head.content_length == len("tricky/中文.txt".encode())
    assert head.etag == hashlib.md5("tricky/中文.txt".encode()).hexdigest().upper()
    assert head.object_type == "Normal"
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object("missing")
    with pytest.raises(oss2.exceptions.NoSuchKey):      # HEAD errors travel in x-oss-err
        bucket.head_object("missing")
    with pytest.raises(oss2.exceptions.PreconditionFailed):
        bucket.get_object("big.bin", headers={"If-Match": '"0123"'})
    assert bucket.get_object("big.bin", headers={"If-Match": whole.headers["ETag"]}).read() == BIG


def test_crc64_header_is_of_the_whole_object_and_oss2_checks_it(server, tmp_path: Path):
    bucket = v1(server, enable_crc=True)
    crc = Crc64(0)
    crc.update(BIG)
    assert int(bucket.head_object("big.bin").headers["x-oss-hash-crc64ecma"]) == crc.crc
    assert bucket.get_object("big.bin", byte_range=(0, 9)).server_crc == crc.crc
    bucket.get_object_to_file("big.bin", str(tmp_path / "big.bin"))      # raises on a CRC mismatch
    assert (tmp_path / "big.bin").read_bytes() == BIG


def test_archived_objects_refuse_gets(server):
    bucket = v1(server)
    for key in ("cold/archived.bin", "cold/deep.bin"):
        with pytest.raises(oss2.exceptions.ServerError) as info:
            bucket.get_object(key)
        assert (info.value.status, info.value.code) == (403, "InvalidObjectState")
        assert bucket.head_object(key).headers["x-oss-storage-class"] in ("Archive", "DeepColdArchive")
    assert bucket.get_object("cold/ia.bin").read() == b"warm"


# ----- auth -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["tricky/q?x=1&y=2", "tricky/中文.txt", "tricky/a+b", "tricky/100%"])
def test_v1_signed_url(server, key):
    url = v1(server).sign_url("GET", key, 60)
    assert urllib.request.urlopen(url, timeout=10).read() == key.encode()
    assert ("GET", url[len(server.endpoint):]) in server.requests
    tampered = url.replace("Signature=", "Signature=AAAA")
    assert http_error(tampered)[:2] == (403, "SignatureDoesNotMatch")
    # The signature covers the key and the signed sub-resources.
    other = url.replace(urlsplit(url).path, f"/{BUCKET}/tree/c")
    assert http_error(other)[:2] == (403, "SignatureDoesNotMatch")
    assert http_error(url + "&response-content-type=text%2Fplain")[:2] == (403, "SignatureDoesNotMatch")
    expired = v1(server).sign_url("GET", key, -5)
    assert http_error(expired) == (403, "AccessDenied", "Request has expired.")


def test_v4_header_auth_and_signed_url(server):
    bucket = v4(server)
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="tricky/", max_keys=3)] == utf8_sorted(
        [k for k in TRICKY if k.startswith("tricky/")])
    assert bucket.get_object("tricky/x#y", byte_range=(0, 3)).read() == b"tric"
    for key in ("tricky/q?x=1&y=2", "tricky/ünï"):
        url = bucket.sign_url("GET", key, 60)
        assert "x-oss-signature-version=OSS4-HMAC-SHA256" in url
        assert urllib.request.urlopen(url, timeout=10).read() == key.encode()
    signed = bucket.sign_url("GET", "tree/c", 60)
    assert http_error(signed + "&extra=1")[:2] == (403, "SignatureDoesNotMatch")     # V4 signs every parameter
    assert http_error(signed.replace("/tree%2Fc?", "/tree%2Fz?"))[:2] == (403, "SignatureDoesNotMatch")
    wrong = v4(server, secret="wrong")
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as info:
        wrong.get_object("tree/c")
    assert info.value.status == 403
    assert http_error(wrong.sign_url("GET", "tree/c", 60))[:2] == (403, "SignatureDoesNotMatch")
    assert http_error(bucket.sign_url("GET", "tree/c", -5)) == (403, "AccessDenied", "Request has expired.")


@pytest.mark.parametrize("version", [oss2.auth.AUTH_VERSION_1, oss2.auth.AUTH_VERSION_4])
def test_sts_token_is_required_and_checked(server, version):
    def bucket(token):
        return oss2.Bucket(oss2.StsAuth(STS_ID, STS_SECRET, token, auth_version=version), server.endpoint,
                           BUCKET, region=REGION)
    good = bucket(STS_TOKEN)
    assert good.get_object("tree/c").read() == b"tree/c"
    assert urllib.request.urlopen(good.sign_url("GET", "tree/z", 60), timeout=10).read() == b"tree/z"
    with pytest.raises(oss2.exceptions.ServerError) as info:
        bucket("not-the-token").get_object("tree/c")
    assert (info.value.status, info.value.code) == (403, "InvalidSecurityToken")
    assert http_error(bucket("not-the-token").sign_url("GET", "tree/z", 60))[:2] == (403, "InvalidSecurityToken")
    with pytest.raises(oss2.exceptions.ServerError) as info:       # the STS key without any token
        oss2.Bucket(oss2.Auth(STS_ID, STS_SECRET), server.endpoint, BUCKET).get_object("tree/c")
    assert (info.value.status, info.value.code) == (403, "InvalidAccessKeyId")


def test_bad_credentials_and_unknown_bucket(server):
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as info:
        v1(server, secret="wrong").get_object("tree/c")
    assert info.value.status == 403 and "StringToSign" in info.value.details
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        v1(server, secret="wrong").list_objects_v2(continuation_token="x")
    with pytest.raises(oss2.exceptions.ServerError) as info:
        v1(server, key_id="nobody").get_object("tree/c")
    assert (info.value.status, info.value.code) == (403, "InvalidAccessKeyId")
    with pytest.raises(oss2.exceptions.AccessDenied):
        oss2.Bucket(oss2.AnonymousAuth(), server.endpoint, BUCKET).get_object("tree/c")
    assert http_error(f"{server.endpoint}/{BUCKET}/tree/c")[:2] == (403, "AccessDenied")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        oss2.Bucket(oss2.Auth(ACCESS_KEY, SECRET_KEY), server.endpoint, "no-such-bucket").list_objects()


# ----- faults ----------------------------------------------------------------------------------------

def test_status_fault_then_recovery(server):
    server.add_fault(BUCKET, "tree/c", "status", status=503, code="ServiceUnavailable", times=2)
    bucket = v1(server)
    for _ in range(2):
        with pytest.raises(oss2.exceptions.ServerError) as info:
            bucket.get_object("tree/c")
        assert (info.value.status, info.value.code) == (503, "ServiceUnavailable")
    assert bucket.get_object("tree/c").read() == b"tree/c"
    bucket.head_object("tree/c")
    bucket.list_objects(prefix="tree/c")          # neither HEADs nor listings count or fault
    assert server.get_count(BUCKET, "tree/c") == 3


def test_reset_fault_is_a_connection_error(server):
    server.add_fault(BUCKET, "tree/z", "reset")
    url = v1(server).sign_url("GET", "tree/z", 60)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=10)
    with pytest.raises(oss2.exceptions.RequestError):
        v1(server).get_object("tree/z")
    assert server.get_count(BUCKET, "tree/z") == 2


def test_truncate_fault_is_a_short_read(server):
    server.add_fault(BUCKET, "big.bin", "truncate", times=1)
    url = v1(server).sign_url("GET", "big.bin", 60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert int(response.headers["Content-Length"]) == len(BIG)
        with pytest.raises(http.client.IncompleteRead) as info:
            response.read()
    assert len(info.value.partial) == len(BIG) // 2
    assert urllib.request.urlopen(url, timeout=10).read() == BIG       # times=1: the next GET is fine


def test_delay_fault_and_concurrency_counters(server):
    server.add_fault(BUCKET, "tree/a/1", "delay", seconds=0.4)
    urls = [v1(server).sign_url("GET", "tree/a/1", 60) for _ in range(4)]
    bodies = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda u=u: bodies.append(urllib.request.urlopen(u, timeout=10).read()))
               for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.4
    assert bodies == [b"tree/a/1"] * 4
    assert server.max_in_flight >= 2 and len(server.starts) == 4
    assert server.get_count(BUCKET, "tree/a/1") == 4
    server.clear_faults()
    assert server.get_count(BUCKET, "tree/a/1") == 0 and server.starts == [] and server.requests == []


def test_bad_crc_fault_fails_oss2_crc_check(server, tmp_path: Path):
    server.add_fault(BUCKET, "big.bin", "bad_crc", times=1)
    with pytest.raises(oss2.exceptions.InconsistentError):
        v1(server, enable_crc=True).get_object_to_file("big.bin", str(tmp_path / "big.bin"))
    v1(server, enable_crc=True).get_object_to_file("big.bin", str(tmp_path / "big.bin"))


# ----- cname ---------------------------------------------------------------------------------------

def test_cname_bucket_serves_keys_at_the_root():
    # oss2 builds path-style URLs for any IP endpoint even with is_cname=True, so give it a host name
    # and route that through the server as an HTTP proxy (no DNS involved).
    with OssServer(cname_bucket="my-cname-bucket") as server:
        server.put("my-cname-bucket", "dir/中文 file+1.txt", b"hello")
        server.put("my-cname-bucket", "dir/other", b"world")
        for auth, region in ((oss2.Auth(ACCESS_KEY, SECRET_KEY), None),
                             (oss2.ProviderAuthV4(StaticCredentialsProvider(ACCESS_KEY, SECRET_KEY)), REGION)):
            bucket = oss2.Bucket(auth, "http://cdn.example.com", "my-cname-bucket", is_cname=True, region=region,
                                 proxies=server.proxies)
            assert [o.key for o in oss2.ObjectIteratorV2(bucket, max_keys=1)] == ["dir/other", "dir/中文 file+1.txt"]
            assert bucket.get_object("dir/中文 file+1.txt").read() == b"hello"
            url = bucket.sign_url("GET", "dir/other", 60)
            assert url.startswith("http://cdn.example.com/dir%2Fother?")
            # The same signed path works against the server's own address.
            direct = server.endpoint + url[len("http://cdn.example.com"):]
            assert urllib.request.urlopen(direct, timeout=10).read() == b"world"
        paths = [urlsplit(target).path for _, target in server.requests]
        assert paths and all(p == "/" or p.startswith("/dir") for p in paths)


# ----- lying object GETs -----------------------------------------------------------------------------

def start_get(server, url: str, headers: dict | None = None) -> tuple[socket.socket, str, bytes]:
    """Send a GET for a signed URL on a raw socket; return it, the response head and the body read so far."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    return sock, head.decode("latin-1"), body


def read_until_quiet(sock: socket.socket, body: bytes, quiet: float, limit: int) -> bytes:
    """Read until nothing arrives for `quiet` seconds, the server closes, or `limit` bytes are in."""
    sock.settimeout(quiet)
    try:
        while len(body) < limit and (chunk := sock.recv(65536)):
            body += chunk
    except TimeoutError:
        pass
    return body


def wait_until(predicate, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_short_is_a_clean_answer_that_only_a_crc_check_catches(server, tmp_path: Path):
    half = len(BIG) // 2
    server.add_fault(BUCKET, "big.bin", "short", times=3)
    got = v1(server, enable_crc=False).get_object("big.bin")
    # Nothing looks wrong to the client: status, Content-Length and body agree.
    assert got.status == 200 and got.content_length == half and got.read() == BIG[:half]
    ranged = v1(server).get_object("big.bin", byte_range=(100, 199))
    assert ranged.status == 206 and ranged.headers["Content-Range"] == f"bytes 100-199/{len(BIG)}"
    assert ranged.content_length == 50 and ranged.read() == BIG[100:150]
    # The whole-object CRC-64 still describes the real object, so oss2's check notices.
    with pytest.raises(oss2.exceptions.InconsistentError):
        v1(server, enable_crc=True).get_object_to_file("big.bin", str(tmp_path / "big.bin"))
    assert v1(server).get_object("big.bin").read() == BIG          # times=3 used up
    server.add_fault(BUCKET, "big.bin", "short", fraction=0.01, times=1)
    assert v1(server).get_object("big.bin").read() == BIG[: int(len(BIG) * 0.01)]
    assert server.get_count(BUCKET, "big.bin") == 5


def test_wrong_range_answers_another_range(server):
    server.add_fault(BUCKET, "big.bin", "wrong_range", times=1)
    assert v1(server).get_object("big.bin").read() == BIG     # no Range: normal, the fault stays
    got = v1(server).get_object("big.bin", byte_range=(10, 19))
    assert got.status == 206 and got.headers["Content-Range"] == f"bytes 11-20/{len(BIG)}"
    assert got.read() == BIG[11:21]
    assert v1(server).get_object("big.bin", byte_range=(10, 19)).read() == BIG[10:20]
    server.add_fault(BUCKET, "big.bin", "wrong_range", shift=-5, times=1)
    url = v1(server).sign_url("GET", "big.bin", 60)
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=100-"}), timeout=10) as resp:
        assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 95-{len(BIG) - 6}/{len(BIG)}"
        assert resp.read() == BIG[95:-5]
    server.add_fault(BUCKET, "big.bin", "wrong_range", shift=3, times=1)     # clipped to the object's end
    tail = v1(server).get_object("big.bin", byte_range=(None, 10))
    assert tail.headers["Content-Range"] == f"bytes {len(BIG) - 7}-{len(BIG) - 1}/{len(BIG)}"
    assert tail.read() == BIG[-7:]


def test_ignore_range_answers_the_whole_object(server):
    server.add_fault(BUCKET, "big.bin", "ignore_range", times=1)
    got = v1(server).get_object("big.bin", byte_range=(0, 9))
    assert got.status == 200 and "Content-Range" not in got.headers
    assert got.content_length == len(BIG) and got.read() == BIG
    assert v1(server).get_object("big.bin", byte_range=(0, 9)).read() == BIG[:10]


def test_trickle_sends_a_few_bytes_at_a_time_and_stops_with_the_client(server):
    # 3 bytes every 0.5 s: the whole 65,540 bytes would take three hours.
    server.add_fault(BUCKET, "big.bin", "trickle", chunk=3, seconds=0.5, times=1)
    sock, head, body = start_get(server, v1(server).sign_url("GET", "big.bin", 60))
    assert head.startswith("HTTP/1.1 200") and f"Content-Length: {len(BIG)}" in head     # at once, in full
    body = read_until_quiet(sock, body, 0.1, len(BIG))
    assert 0 < len(body) < 100 and BIG.startswith(body)
    # Other requests are served while the trickle goes on...
    assert v1(server).get_object("tree/c").read() == b"tree/c"
    body = read_until_quiet(sock, body, 0.1, len(BIG))
    assert len(body) < 100 and BIG.startswith(body)
    sock.close()
    # ...and the server stops trickling once the client is gone, not three hours later.
    assert wait_until(lambda: server.in_flight == 0)


def test_trickle_delivers_the_whole_body_to_a_patient_client(server, tmp_path: Path):
    server.add_fault(BUCKET, "tree/c", "trickle", chunk=2, seconds=0.02, times=2)
    sock, head, body = start_get(server, v1(server).sign_url("GET", "tree/c", 60))
    assert "Content-Length: 6" in head
    assert read_until_quiet(sock, body, 5, 6) == b"tree/c"
    sock.close()
    v1(server, enable_crc=True).get_object_to_file("tree/c", str(tmp_path / "c"))
    assert (tmp_path / "c").read_bytes() == b"tree/c"
    server.add_fault(BUCKET, "big.bin", "trickle", chunk=20_000, seconds=0.01, times=1)
    assert v1(server).get_object("big.bin", byte_range=(100, None)).read() == BIG[100:]


@pytest.mark.parametrize("kind", ["short", "trickle", "ignore_range", "wrong_range", "truncate", "bad_crc"])
def test_body_faults_leave_errors_alone(server, kind):
    server.add_fault(BUCKET, "missing", kind)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        v1(server).get_object("missing", byte_range=(0, 3))
    assert server.get_count(BUCKET, "missing") == 1


def test_fault_arguments_are_checked(server):
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.add_fault(BUCKET, "big.bin", "explode")
    with pytest.raises(TypeError, match="takes"):
        server.add_fault(BUCKET, "big.bin", "delay", fraction=0.5)
    with pytest.raises(ValueError, match="seconds"):
        server.add_fault(BUCKET, "big.bin", "trickle", seconds=-1)
    with pytest.raises(ValueError, match="times"):
        server.add_fault(BUCKET, "big.bin", "reset", times=-1)
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.add_list_fault(BUCKET, "bad_crc")
    with pytest.raises(ValueError, match="nth"):
        server.add_list_fault(BUCKET, "reset", page=-1)


# ----- listing faults ----------------------------------------------------------------------------------

def raw_list(server, query: str) -> tuple[int, bytes]:
    """A V1 header-signed listing through http.client (oss2 signs no bucket-level URLs)."""
    date = formatdate(usegmt=True)
    string_to_sign = f"GET\n\n\n{date}\n/{BUCKET}/"
    signature = base64.b64encode(hmac.new(SECRET_KEY.encode(), string_to_sign.encode(), hashlib.sha1).digest())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", f"/{BUCKET}/?{query}", headers={"Date": date,
                                                             "Authorization": f"OSS {ACCESS_KEY}:{signature.decode()}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def list_page(bucket, v2: bool, token: str = "", **kw):
    if v2:
        return bucket.list_objects_v2(prefix="tree/", max_keys=2, continuation_token=token, **kw)
    return bucket.list_objects(prefix="tree/", max_keys=2, marker=token, **kw)


def next_token(result, v2: bool) -> str:
    return result.next_continuation_token if v2 else result.next_marker


def keys(result) -> list[str]:
    return [o.key for o in result.object_list]


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_list_status_reset_and_delay_by_page(server, v2):
    bucket = v1(server)
    server.add_list_fault(BUCKET, "status", page=1, status=503, code="ServiceUnavailable")
    first = list_page(bucket, v2)
    assert keys(first) == TREE[:2]
    with pytest.raises(oss2.exceptions.ServerError) as info:
        list_page(bucket, v2, next_token(first, v2))
    assert (info.value.status, info.value.code) == (503, "ServiceUnavailable") and info.value.request_id
    assert keys(list_page(bucket, v2, next_token(first, v2))) == TREE[2:4]     # page 2 is not faulted
    assert server.list_count(BUCKET) == 3

    server.add_list_fault(BUCKET, "reset", times=1)
    with pytest.raises(oss2.exceptions.RequestError):
        list_page(bucket, v2)
    server.add_list_fault(BUCKET, "reset", times=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        raw_list(server, "list-type=2" if v2 else "")

    server.add_list_fault(BUCKET, "delay", seconds=0.3, times=1)
    started = time.monotonic()
    assert keys(list_page(bucket, v2)) == TREE[:2]
    assert time.monotonic() - started >= 0.3
    assert server.list_count(BUCKET) == 6
    # Object GETs and HEADs are not listings.
    bucket.get_object("tree/c").read()
    bucket.head_object("tree/c")
    assert server.list_count(BUCKET) == 6


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_truncated_no_token_reaches_oss2_as_an_empty_token(server, v2):
    bucket = v1(server)
    server.add_list_fault(BUCKET, "truncated_no_token", page=2)
    first = list_page(bucket, v2)
    second = list_page(bucket, v2, next_token(first, v2))
    last = list_page(bucket, v2, next_token(second, v2))      # the real last page, but it says otherwise
    assert keys(last) == TREE[4:]
    assert last.is_truncated is True and next_token(last, v2) == ""
    assert list_page(bucket, v2, next_token(second, v2)).is_truncated is False       # honest again
    # What the lie does to oss2's iterators: an empty token means "from the start", so the first page
    # comes twice and nothing says so.
    server.clear_faults()
    server.add_list_fault(BUCKET, "truncated_no_token", page=0)
    iterator = oss2.ObjectIteratorV2 if v2 else oss2.ObjectIterator
    assert [o.key for o in iterator(bucket, prefix="tree/", max_keys=2)] == TREE[:2] + TREE


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_repeat_token_asks_for_the_same_page_again(server, v2):
    bucket = v1(server)
    server.add_list_fault(BUCKET, "repeat_token", page=0)
    first = list_page(bucket, v2)
    assert first.is_truncated is True and keys(first) == TREE[:2]
    token = next_token(first, v2)
    if not v2:
        assert token == "tree/a/"         # the first key minus its last character
    again = list_page(bucket, v2, token)
    assert keys(again) == TREE[:2]
    real_next = next_token(again, v2)

    server.add_list_fault(BUCKET, "repeat_token", page=2)
    second = list_page(bucket, v2, real_next)
    assert keys(second) == TREE[2:4] and next_token(second, v2) == real_next
    assert keys(list_page(bucket, v2, real_next)) == TREE[2:4]
    assert server.list_count(BUCKET) == 4

    # With a delimiter the first item may be a common prefix; its marker lists it again too.
    server.clear_faults()
    server.add_list_fault(BUCKET, "repeat_token", page=0)
    iterator = oss2.ObjectIteratorV2 if v2 else oss2.ObjectIterator
    assert [o.key for o in iterator(bucket, prefix="tree/", delimiter="/", max_keys=2)] == [
        "tree/a/", "tree/b/", "tree/a/", "tree/b/", "tree/c", "tree/d/", "tree/z"]


def test_repeat_token_traps_oss2s_iterator(server):
    server.add_list_fault(BUCKET, "repeat_token", page=1)
    server.add_list_fault(BUCKET, "repeat_token", page=2)
    assert [o.key for o in oss2.ObjectIteratorV2(v1(server), prefix="tree/", max_keys=2)] == \
        TREE[:2] + TREE[2:4] * 3 + TREE[4:]
    server.clear_faults()
    server.add_list_fault(BUCKET, "repeat_token")
    endless = oss2.ObjectIterator(v1(server), prefix="tree/", max_keys=2)
    assert [next(endless).key for _ in range(10)] == TREE[:2] * 5       # nothing in oss2 notices


def test_listing_faults_with_url_encoding(server):
    server.add_list_fault(BUCKET, "repeat_token")
    bucket = v1(server)                   # oss2's v1 listings always ask encoding-type=url
    first = bucket.list_objects(prefix="tricky/", max_keys=1)
    assert keys(first) == ["tricky/%41"] and first.next_marker == "tricky/%4"
    assert keys(bucket.list_objects(prefix="tricky/", max_keys=1, marker=first.next_marker)) == ["tricky/%41"]
    status, body = raw_list(server, "prefix=tricky%2F&max-keys=1&encoding-type=url")
    assert status == 200 and b"<NextMarker>tricky%2F%254</NextMarker>" in body
    server.clear_faults()
    server.add_list_fault(BUCKET, "truncated_no_token")
    status, body = raw_list(server, "list-type=2&prefix=tricky%2F&max-keys=1")
    assert b"<IsTruncated>true</IsTruncated><NextContinuationToken></NextContinuationToken>" in body


def test_clear_faults_clears_listing_faults_and_counts(server):
    bucket = v1(server)
    server.add_list_fault(BUCKET, "status")
    server.add_fault(BUCKET, "tree/c", "status")
    with pytest.raises(oss2.exceptions.ServerError):
        list_page(bucket, True)
    with pytest.raises(oss2.exceptions.ServerError):
        bucket.get_object("tree/c")
    assert server.list_count(BUCKET) == 1 and server.get_count(BUCKET, "tree/c") == 1
    server.clear_faults()
    assert server.list_count(BUCKET) == 0 and server.get_count(BUCKET, "tree/c") == 0
    assert keys(list_page(bucket, True)) == TREE[:2] and bucket.get_object("tree/c").read() == b"tree/c"


# ----- objects whose ETag is not an MD5 ------------------------------------------------------------------

def test_multipart_objects_have_oss_multipart_etags(server, tmp_path: Path):
    data = bytes(range(256)) * 40                     # 10,240 bytes: parts of 3,414 + 3,414 + 3,412
    etag = server.put(BUCKET, "etag/mp.bin", data, multipart_parts=3)
    parts = [data[:3414], data[3414:6828], data[6828:]]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest().upper() + "-3"
    assert etag == f'"{expected}"'
    bucket = v1(server)
    head = bucket.head_object("etag/mp.bin")
    assert head.etag == expected and head.object_type == "Multipart" and head.content_length == len(data)
    listed = bucket.list_objects(prefix="etag/mp").object_list[0]
    assert (listed.etag, listed.type, listed.size) == (expected, "Multipart", len(data))
    bucket.get_object_to_file("etag/mp.bin", str(tmp_path / "mp"))       # CRC-64 still checks out
    assert (tmp_path / "mp").read_bytes() == data
    assert bucket.get_object("etag/mp.bin", byte_range=(0, 3), headers={"If-Match": etag}).read() == data[:4]
    # put_multipart cuts by part size, like MotoS3.put_multipart.
    by_size = server.put_multipart(BUCKET, "etag/mp4k.bin", data, part_size=4096)
    chunks = [data[:4096], data[4096:8192], data[8192:]]
    assert by_size == '"' + hashlib.md5(b"".join(hashlib.md5(p).digest() for p in chunks)).hexdigest().upper() + '-3"'
    with pytest.raises(ValueError, match="parts"):
        server.put(BUCKET, "etag/bad", b"0123456789", multipart_parts=6)     # 2-byte parts make 5, not 6
    with pytest.raises(ValueError, match="multipart_parts"):
        server.put(BUCKET, "etag/bad", b"0123456789", multipart_parts=0)


def test_kms_objects_have_an_etag_that_is_not_the_md5(server, tmp_path: Path):
    data = b"secret payload" * 100
    etag = server.put(BUCKET, "etag/kms.bin", data, sse="KMS")
    head = v1(server).head_object("etag/kms.bin")
    assert head.headers["x-oss-server-side-encryption"] == "KMS"
    assert head.headers["x-oss-server-side-encryption-key-id"]
    assert head.etag == etag.strip('"') and head.etag != hashlib.md5(data).hexdigest().upper()
    v1(server).get_object_to_file("etag/kms.bin", str(tmp_path / "kms"))
    assert (tmp_path / "kms").read_bytes() == data
    aes = server.put(BUCKET, "etag/aes.bin", data, sse="AES256")       # SSE-OSS keeps the MD5 ETag
    assert aes == f'"{hashlib.md5(data).hexdigest().upper()}"'
    assert v1(server).head_object("etag/aes.bin").headers["x-oss-server-side-encryption"] == "AES256"
    assert "x-oss-server-side-encryption" not in v1(server).head_object("tree/c").headers
    with pytest.raises(ValueError, match="encryption"):
        server.put(BUCKET, "etag/bad", data, sse="SM4-ish")


@pytest.mark.parametrize("options", [{"multipart_parts": 2}, {"sse": "KMS"}, {}], ids=["multipart", "kms", "simple"])
def test_overwrite_with_same_size_changes_etag_and_last_modified(server, options):
    key = f"etag/overwrite-{len(options)}-{sorted(options)}"
    server.put(BUCKET, key, b"A" * 1000, **options)
    before = v1(server).head_object(key)
    server.put(BUCKET, key, b"B" * 1000, **options)          # same size, within the same second
    after = v1(server).head_object(key)
    assert after.etag != before.etag and after.content_length == before.content_length
    assert after.last_modified > before.last_modified
    assert v1(server).get_object(key).read() == b"B" * 1000


def test_trickle_ends_when_the_server_stops():
    with OssServer() as own:
        own.create_bucket("stop-bucket")
        own.put("stop-bucket", "k", BIG)
        own.add_fault("stop-bucket", "k", "trickle", chunk=1, seconds=60)
        url = oss2.Bucket(oss2.Auth(ACCESS_KEY, SECRET_KEY), own.endpoint, "stop-bucket").sign_url("GET", "k", 60)
        sock, head, _ = start_get(own, url)
        assert head.startswith("HTTP/1.1 200") and own.in_flight == 1
    # stop() returned; the trickle let go of its 60-second wait.
    assert wait_until(lambda: own.in_flight == 0)
    sock.close()


# ----- virtual-hosted addressing ------------------------------------------------------------------------

ENDPOINT_HOST = "oss-cn-hangzhou.aliyuncs.test"
VH_KEY = "dir/中文 k+1.txt"


@pytest.fixture(scope="module")
def vhost():
    with OssServer(endpoint_host=ENDPOINT_HOST) as s:
        for name in ("vh-a", "vh-b"):
            s.create_bucket(name)
            s.put(name, VH_KEY, name.encode())
            s.put(name, "dir/other", b"other-" + name.encode())
        s.add_sts(STS_ID, STS_SECRET, STS_TOKEN)
        yield s


def vh_bucket(server, auth, name: str, region: str | None = None, **kw):
    # oss2 builds http://<bucket>.<endpoint_host>:<port>/<key>; the proxy hands the absolute form to the server.
    return oss2.Bucket(auth, server.named_endpoint, name, region=region, proxies=server.proxies, **kw)


def proxied(server, url: str, method: str = "GET", **headers) -> requests.Response:
    return requests.request(method, url, headers=headers, proxies=server.proxies, timeout=10)


def error_of(resp: requests.Response) -> tuple[int, dict[str, str]]:
    return resp.status_code, {e.tag: e.text for e in ET.fromstring(resp.content)}


def v4_auth(key_id=ACCESS_KEY, secret=SECRET_KEY):
    return oss2.ProviderAuthV4(StaticCredentialsProvider(key_id, secret))


VH_AUTHS = {
    "v1": (lambda: oss2.Auth(ACCESS_KEY, SECRET_KEY), None),
    "sts-v1": (lambda: oss2.StsAuth(STS_ID, STS_SECRET, STS_TOKEN), None),
    "v4": (v4_auth, REGION),
    "sts-v4": (lambda: oss2.StsAuth(STS_ID, STS_SECRET, STS_TOKEN, auth_version=oss2.auth.AUTH_VERSION_4), REGION),
}


@pytest.mark.parametrize("name", VH_AUTHS)
def test_virtual_hosted_requests_take_the_bucket_from_the_host(vhost, name):
    make_auth, region = VH_AUTHS[name]
    vhost.clear_faults()
    bucket = vh_bucket(vhost, make_auth(), "vh-a", region)
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, max_keys=1)] == ["dir/other", VH_KEY]
    assert [o.key for o in bucket.list_objects(prefix="dir/o").object_list] == ["dir/other"]
    assert bucket.get_object(VH_KEY).read() == b"vh-a"
    assert bucket.head_object("dir/other").content_length == len(b"other-vh-a")
    url = bucket.sign_url("GET", VH_KEY, 60)
    assert urlsplit(url).netloc == f"vh-a.{ENDPOINT_HOST}:{vhost.port}"
    assert proxied(vhost, url).content == b"vh-a"
    # Every request arrived in absolute form for the virtual host, the key being the whole path.
    prefix = f"http://vh-a.{ENDPOINT_HOST}:{vhost.port}/"
    assert vhost.requests and all(target.startswith(prefix) for _, target in vhost.requests)
    assert vh_bucket(vhost, make_auth(), "vh-b", region).get_object(VH_KEY).read() == b"vh-b"
    # Path style keeps working, on the endpoint host and on the server's IP.
    for endpoint in (vhost.named_endpoint, vhost.endpoint):
        path_style = oss2.Bucket(make_auth(), endpoint, "vh-b", region=region, proxies=vhost.proxies,
                                 is_path_style=True)
        assert path_style.get_object("dir/other").read() == b"other-vh-b"


def test_virtual_hosted_signatures_cover_bucket_and_signed_host(vhost):
    v1_url = vh_bucket(vhost, oss2.Auth(ACCESS_KEY, SECRET_KEY), "vh-b").sign_url("GET", "dir/other", 60)
    v4_url = vh_bucket(vhost, v4_auth(), "vh-b", REGION).sign_url("GET", "dir/other", 60)
    for url in (v1_url, v4_url):
        assert proxied(vhost, url).content == b"other-vh-b"
        status, err = error_of(proxied(vhost, url.replace("//vh-b.", "//vh-a.", 1)))    # vh-b's URL, vh-a's host
        assert (status, err["Code"]) == (403, "SignatureDoesNotMatch")
        assert "/vh-a/dir/other" in (err.get("CanonicalRequest") or err["StringToSign"])
    # The Host decides even when the absolute-form target names another bucket.
    assert error_of(proxied(vhost, v1_url, Host=f"vh-a.{ENDPOINT_HOST}:{vhost.port}"))[1]["Code"] == \
        "SignatureDoesNotMatch"
    # A V4 URL that signs the host refuses any other Host for the same bucket and key; one that does not, does not.
    host = f"vh-a.{ENDPOINT_HOST}:{vhost.port}"
    for sign_host in (True, False):
        kw = {"headers": {"Host": host}, "additional_headers": ["host"]} if sign_host else {}
        url = vh_bucket(vhost, v4_auth(), "vh-a", REGION).sign_url("GET", "dir/other", 60, **kw)
        assert ("x-oss-additional-headers=host" in url) is sign_host
        assert proxied(vhost, url).content == b"other-vh-a"
        same_object = f"{vhost.endpoint}/vh-a/{url.split('/', 3)[3]}"      # path style: Host 127.0.0.1:port
        replay = requests.get(same_object, timeout=10)
        assert (replay.status_code, error_of(replay)[1]["Code"] if sign_host else replay.content) == \
            ((403, "SignatureDoesNotMatch") if sign_host else (200, b"other-vh-a"))


def test_virtual_host_names_and_cname(vhost):
    auth = oss2.Auth(ACCESS_KEY, SECRET_KEY)
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        vh_bucket(vhost, auth, "vh-none").get_object("dir/other")
    url = vh_bucket(vhost, auth, "vh-a").sign_url("GET", "dir/other", 60)
    status, err = error_of(proxied(vhost, url.replace("//vh-a.", "//x.vh-a.", 1)))
    assert (status, err["Code"], err["BucketName"]) == (400, "InvalidBucketName", "x.vh-a")
    # Upper case in the host name is still the bucket's host (host names are case-insensitive).
    assert proxied(vhost, url.replace("//vh-a.", "//VH-A.", 1)).content == b"other-vh-a"
    # A CNAME bucket takes every other host; the endpoint's own hosts keep their meaning.
    with OssServer("cname-b", endpoint_host=ENDPOINT_HOST) as s:
        s.create_bucket("vh-a")
        s.put("vh-a", "k", b"vh-a's k")
        s.put("cname-b", "k", b"cname k")
        assert oss2.Bucket(auth, "http://cdn.example.com", "cname-b", is_cname=True,
                           proxies=s.proxies).get_object("k").read() == b"cname k"
        assert vh_bucket(s, auth, "vh-a").get_object("k").read() == b"vh-a's k"
    with pytest.raises(RuntimeError):
        OssServer().named_endpoint


# ----- a server clock that is off ---------------------------------------------------------------------------

def date_of(resp) -> float:
    return parsedate_to_datetime(resp.headers["Date"]).timestamp()


def iso_of(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture
def clock_server():
    with OssServer(clock_offset=7200) as s:     # two hours ahead
        s.create_bucket(BUCKET)
        s.put(BUCKET, "k", b"value")
        yield s


def test_clock_ahead_expires_presigned_urls_and_dates_every_answer(clock_server):
    s = clock_server
    assert s.clock_offset == 7200 and abs(s.now() - time.time() - 7200) < 60
    for bucket in (v1(s), v4(s)):
        url = bucket.sign_url("GET", "k", 60)
        status, err = error_of(resp := requests.get(url, timeout=10))
        assert (status, err["Code"], err["Message"]) == (403, "AccessDenied", "Request has expired.")
        assert abs(date_of(resp) - time.time() - 7200) < 60           # the Date of an error, by the server's clock
        assert abs(iso_of(err["ServerTime"]) - time.time() - 7200) < 60
        assert 50 < time.time() + 7200 - iso_of(err["Expires"]) < 7200
        head = requests.head(url, timeout=10)
        assert head.status_code == 403 and abs(date_of(head) - time.time() - 7200) < 60
        s.clock_offset = 0
        resp = requests.get(url, timeout=10)
        assert resp.content == b"value" and abs(date_of(resp) - time.time()) < 60
        s.clock_offset = 7200
    assert "Request has expired." in requests.get(v1(s).sign_url("GET", "k", 60), timeout=10).text
    # A V1 URL signed long ago for long enough is still good.
    assert requests.get(v1(s).sign_url("GET", "k", 3 * 3600), timeout=10).content == b"value"


@pytest.mark.parametrize("offset", [7200, -7200])
def test_header_signed_requests_with_skewed_dates_are_refused(clock_server, offset):
    clock_server.clock_offset = offset
    for bucket in (v1(clock_server), v4(clock_server)):
        with pytest.raises(oss2.exceptions.ServerError) as info:
            bucket.get_object("k")
        e = info.value
        assert (e.status, e.code, e.message) == (403, "RequestTimeTooSkewed", "The difference between the "
                                                 "request time and the current time is too large.")
        assert e.details["MaxAllowedSkewMilliseconds"] == "900000"
        assert abs(iso_of(e.details["RequestTime"]) - time.time()) < 60
        assert abs(iso_of(e.details["ServerTime"]) - time.time() - offset) < 60
        with pytest.raises(oss2.exceptions.ServerError) as info:      # HEAD: the error travels in x-oss-err
            bucket.head_object("k")
        assert info.value.code == "RequestTimeTooSkewed"
    clock_server.clock_offset = offset / 10          # 12 minutes: within OSS's 15
    assert v1(clock_server).get_object("k").read() == v4(clock_server).get_object("k").read() == b"value"


def test_v4_url_from_the_servers_future_is_not_yet_valid(clock_server):
    clock_server.clock_offset = -7200                # the server is two hours behind the signer
    url = v4(clock_server).sign_url("GET", "k", 3 * 3600)
    status, err = error_of(requests.get(url, timeout=10))
    assert (status, err["Code"], err["EC"]) == (403, "AccessDenied", "0002-00000235")
    assert iso_of(err["RequestTime"]) - iso_of(err["ServerTime"]) > 7000
    assert requests.get(v1(clock_server).sign_url("GET", "k", 60), timeout=10).content == b"value"   # V1: no start
    clock_server.clock_offset = -600
    assert requests.get(url, timeout=10).content == b"value"


# ----- IPv6 ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("endpoint_host", [None, ENDPOINT_HOST])
def test_ipv6_listener_serves_path_style(endpoint_host):
    with OssServer(host="::1", endpoint_host=endpoint_host) as s:
        assert s.endpoint == f"http://[::1]:{s.port}"
        s.create_bucket("v6-bucket")
        s.put("v6-bucket", "d/中文 a+b", b"six")
        s.put("v6-bucket", "d/z", b"zed")
        s.add_sts(STS_ID, STS_SECRET, STS_TOKEN)
        with pytest.raises(oss2.exceptions.ClientError):        # oss2 refuses IPv6 endpoints
            oss2.Bucket(oss2.Auth(ACCESS_KEY, SECRET_KEY), s.endpoint, "v6-bucket")
        for key_id, secret, token in ((ACCESS_KEY, SECRET_KEY, ""), (STS_ID, STS_SECRET, STS_TOKEN)):
            signer = OssV1Signer(key_id, secret, token, "v6-bucket", f"{s.endpoint}/v6-bucket/")
            listing = requests.get(signer.bucket_url([("list-type", "2"), ("prefix", "d/")]), timeout=10)
            assert [e.text for e in ET.fromstring(listing.content).iter("Key")] == ["d/z", "d/中文 a+b"]
            assert urllib.request.urlopen(signer.url("d/中文 a+b"), timeout=10).read() == b"six"
        assert error_of(requests.get(signer.url("d/z").replace("Signature=", "Signature=A"), timeout=10))[1][
            "Code"] == "SignatureDoesNotMatch"
        # http.client sends Host: [::1]:port, a header-signed path-style request.
        date = formatdate(usegmt=True)
        sig = base64.b64encode(hmac.new(SECRET_KEY.encode(), f"GET\n\n\n{date}\n/v6-bucket/d/z".encode(),
                                        hashlib.sha1).digest()).decode()
        conn = http.client.HTTPConnection("::1", s.port, timeout=10)
        try:
            conn.request("GET", "/v6-bucket/d/z", headers={"Date": date, "Authorization": f"OSS {ACCESS_KEY}:{sig}"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"zed")
        finally:
            conn.close()
        assert s.requests[-1] == ("GET", "/v6-bucket/d/z")
