"""The OSS path without oss2 (signature V1): its URLs are oss2's byte for byte, its listing reads what the
OSS-protocol server sends (pages, encoding-type=url, STS), and its CRC-64 is oss2's."""
from __future__ import annotations

import os
import types
import uuid

import oss2
import oss2.auth
import pytest
from oss2.utils import Crc64

from core import listing
from core.engine.verify import _Crc64
from core.errors import UsageError
from core.sources import StoreConfig, make_source
from core.sources.oss import OssSource, bucket_url
from core.sources.ossv1 import OssV1Signer
from core.sources.ossv4 import OssV4Source

KEYS = ["plain.txt", "a b/c  d.txt", "中文/文件 名.png", "x+y%z~w", "100%/a+b=c&d?e#f", "dir/", "'q\"", "~t",
        "emoji 😀/é", "semi;colon,comma:colon@at$dollar!bang*star(paren)"]
TOKEN = "CAIS+/sts=token%41~"  # STS tokens are base64 (+, /, =); %, ~ for quoting


@pytest.mark.parametrize("endpoint,bucket,cname", [
    ("http://127.0.0.1:9000", "bench", False),                    # an IP: path style
    ("http://localhost:8080", "bkt", False),
    ("https://oss-cn-hangzhou.aliyuncs.com", "my-bucket", False),  # virtual-hosted
    ("oss-cn-hangzhou-internal.aliyuncs.com", "b-1", False),       # no scheme: http, as oss2
    ("https://cdn.example.com", "b1x", True),                     # a CNAME
])
@pytest.mark.parametrize("token", ["", TOKEN])
def test_signed_urls_are_oss2s_byte_for_byte(endpoint, bucket, cname, token, monkeypatch):
    now = 1_700_000_000
    monkeypatch.setattr(oss2.auth, "time", types.SimpleNamespace(time=lambda: now))
    auth = oss2.StsAuth("key-id", "secret", token) if token else oss2.Auth("key-id", "secret")
    theirs = oss2.Bucket(auth, endpoint, bucket, is_cname=cname)
    ours = OssV1Signer("key-id", "secret", token, bucket, bucket_url(endpoint, bucket, cname), 3600)
    for key in KEYS:
        assert ours.url(key, now + 3600) == theirs.sign_url("GET", key, 3600, slash_safe=True), key


def test_what_oss2_refuses_is_a_usage_error():
    with pytest.raises(UsageError, match="bucket name"):
        bucket_url("http://127.0.0.1:9000", "Bad_Bucket", False)
    with pytest.raises(UsageError, match="endpoint"):
        bucket_url("http://exa mple.com/path", "bucket", False)


def test_crc64_is_oss2s(tmp_path):
    for size in (0, 1, 7, 4096, 16 * 1024 + 3, 3 * 1024 * 1024 + 5):
        data = os.urandom(size)
        cuts = sorted({0, size // 3, size // 2, size})
        ours, theirs = _Crc64(), Crc64(0)
        for a, b in zip(cuts, cuts[1:]):
            ours.update(data[a:b])
            theirs.update(data[a:b])
        assert ours.value() == str(theirs.crc), size


def _source(server, bucket, prefix="", token="", **extra) -> OssSource:
    creds = {"access_key_id": "oss-test-key-id", "secret_access_key": "oss-test-key-secret"}
    if token:
        key_id, secret = "sts-" + uuid.uuid4().hex[:8], "sts-secret"
        server.add_sts(key_id, secret, token)
        creds = {"access_key_id": key_id, "secret_access_key": secret, "session_token": token}
    return OssSource(StoreConfig(backend="oss", bucket=bucket, prefix=prefix, endpoint=server.endpoint,
                                 credentials=creds, **extra))


@pytest.mark.parametrize("token", ["", TOKEN])
def test_listing_pages_decode_keys_and_follow_tokens(oss, token):
    bucket = "l-" + uuid.uuid4().hex[:12]
    oss.create_bucket(bucket)
    keys = sorted({f"p/{k}" for k in KEYS} | {f"p/n{i:03d}" for i in range(25)}, key=lambda k: k.encode())
    for key in keys:
        oss.put(bucket, key, key.encode())
    oss.put(bucket, "other/x", b"x")
    source = _source(oss, bucket, "p/", token)
    assert source.check() is True
    listed, token_, pages = [], None, 0
    while True:
        page = source.list_page(token_, limit=7)
        listed += page.objects
        pages += 1
        if not page.truncated:
            break
        assert page.next_token
        token_ = page.next_token
    assert [o.key for o in listed] == keys and pages == -(-len(keys) // 7)
    assert [o.size for o in listed] == [len(k.encode()) for k in keys]
    assert all(len(o.etag) == 32 and o.modified.endswith("Z") for o in listed)
    # The signed object URLs are accepted by the server, for every awkward key.
    import urllib.request
    for obj in listed:
        with urllib.request.urlopen(source.signer(obj)(False)) as resp:
            assert resp.read() == obj.key.encode()


def test_folders_and_shard_bounds(oss):
    bucket = "f-" + uuid.uuid4().hex[:12]
    oss.create_bucket(bucket)
    for key in ["top/a b/1", "top/a b/2", "top/中/1", "top/z+/1", "top/file"]:
        oss.put(bucket, key, b"1")
    assert listing.folders(_source(oss, bucket, "top/"), 3, 0.01) == ["top/a b/", "top/z+/", "top/中/"]
    shard = _source(oss, bucket, "top/", start_after="top/a b/1", end_before="top/z")
    assert [o.key for o in shard.list_page(None).objects] == ["top/a b/2", "top/file"]


def test_listing_failures_are_explained(oss):
    bucket = "e-" + uuid.uuid4().hex[:12]
    oss.create_bucket(bucket)
    with pytest.raises(UsageError, match="not found"):
        _source(oss, "no-such-" + uuid.uuid4().hex[:8]).check()
    wrong = OssSource(StoreConfig(backend="oss", bucket=bucket, endpoint=oss.endpoint, credentials={
        "access_key_id": "oss-test-key-id", "secret_access_key": "wrong"}))
    with pytest.raises(UsageError, match="access denied.*SignatureDoesNotMatch"):
        wrong.check()


def test_a_region_means_signature_v4_through_oss2(oss):
    config = StoreConfig(backend="oss", bucket="bench", endpoint=oss.endpoint, region="cn-hangzhou",
                         credentials={"access_key_id": "k", "secret_access_key": "s"})
    assert isinstance(make_source(config), OssV4Source)


@pytest.mark.parametrize("region", [None, "cn-hangzhou"])
def test_oss_without_an_endpoint_is_one_usage_line_for_both_signatures(region):
    from core.errors import UsageError
    from core.sources import make_source
    with pytest.raises(UsageError, match="--endpoint is required for --backend oss"):
        make_source(StoreConfig(backend="oss", bucket="b", region=region))
