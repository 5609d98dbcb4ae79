"""infra.oss_server speaks enough OSS for oss2: listings, reads, signatures (V1/V4/STS), errors and faults."""
from __future__ import annotations

import hashlib
import http.client
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import oss2
import pytest
import requests
from oss2.credentials import StaticCredentialsProvider
from oss2.utils import Crc64

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
