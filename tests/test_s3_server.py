"""infra.s3_server: moto behind the fault injector, driven by boto3 and raw http.client.

Every fault is proven by what a real client receives: statuses and bodies for object faults, parsed
listing pages for listing faults, byte counts (never durations) for trickles.
"""
from __future__ import annotations

import hashlib
import http.client
import socket
import time
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from infra.s3_server import ACCESS_KEY, SECRET_KEY, MIN_PART_SIZE

BUCKET = "faults-bucket"
BIG = bytes(i % 251 for i in range(10_000))     # every offset distinguishable within 251 bytes
LIST_KEYS = [f"list/{i:03d}" for i in range(7)]
ODD_KEY = "odd/中文 100%41+x"                     # percent, plus, space and UTF-8 in one key


@pytest.fixture(scope="module")
def server(s3):
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="big.bin", Body=BIG)
    client.put_object(Bucket=BUCKET, Key="other.bin", Body=b"other")
    client.put_object(Bucket=BUCKET, Key=ODD_KEY, Body=b"odd")
    client.put_object(Bucket=BUCKET, Key="odd/中文 100A+x", Body=b"not odd")
    for key in LIST_KEYS:
        client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    return s3


@pytest.fixture(autouse=True)
def _fresh_faults(server):
    server.clear_faults()
    yield
    server.clear_faults()


@pytest.fixture(scope="module")
def s3c(server):
    """boto3 without retries, so every injected fault reaches the caller; SigV4 like the product."""
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=Config(signature_version="s3v4", request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required",
                                      s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))


def presigned(client, operation: str = "get_object", **params) -> str:
    """Path and query of a presigned GET, for raw clients (moto refuses anonymous requests)."""
    url = urlsplit(client.generate_presigned_url(operation, Params={"Bucket": BUCKET, **params}))
    return f"{url.path}?{url.query}"


def raw(server, path: str, headers: dict | None = None, timeout: float = 10):
    """GET a path with http.client: (status, headers, body)."""
    host, port = server.get_host_and_port()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def wait_until(predicate, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ----- object faults ---------------------------------------------------------------------------------

def test_short_is_a_clean_answer_with_too_few_bytes(server, s3c):
    server.add_fault(BUCKET, "big.bin", "short", times=2)
    etag = s3c.head_object(Bucket=BUCKET, Key="big.bin")["ETag"]
    got = s3c.get_object(Bucket=BUCKET, Key="big.bin")
    # boto3 sees nothing wrong: the Content-Length it got matches the bytes it got.
    assert got["ContentLength"] == 5_000 and got["Body"].read() == BIG[:5_000] and got["ETag"] == etag
    status, headers, body = raw(server, presigned(s3c, Key="big.bin"), {"Range": "bytes=100-199"})
    assert status == 206 and headers["Content-Range"] == "bytes 100-199/10000"
    assert body == BIG[100:150] and headers["Content-Length"] == "50"
    assert s3c.get_object(Bucket=BUCKET, Key="big.bin")["Body"].read() == BIG     # times=2 used up
    server.add_fault(BUCKET, "big.bin", "short", fraction=0.1, times=1)
    assert raw(server, presigned(s3c, Key="big.bin"))[2] == BIG[:1_000]
    assert server.get_count(BUCKET, "big.bin") == 4


def test_wrong_range_answers_another_range(server, s3c):
    server.add_fault(BUCKET, "big.bin", "wrong_range", times=1)
    # Without Range it behaves normally and does not use the fault up.
    assert s3c.get_object(Bucket=BUCKET, Key="big.bin")["Body"].read() == BIG
    got = s3c.get_object(Bucket=BUCKET, Key="big.bin", Range="bytes=10-19")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == "bytes 11-20/10000" and got["Body"].read() == BIG[11:21]
    assert s3c.get_object(Bucket=BUCKET, Key="big.bin", Range="bytes=10-19")["Body"].read() == BIG[10:20]

    server.add_fault(BUCKET, "big.bin", "wrong_range", shift=-5)
    status, headers, body = raw(server, presigned(s3c, Key="big.bin"), {"Range": "bytes=100-"})
    assert (status, headers["Content-Range"], body) == (206, "bytes 95-9994/10000", BIG[95:9995])
    server.clear_faults()
    server.add_fault(BUCKET, "big.bin", "wrong_range", shift=3)     # clipped to the object's end
    status, headers, body = raw(server, presigned(s3c, Key="big.bin"), {"Range": "bytes=-10"})
    assert (status, headers["Content-Range"], body) == (206, "bytes 9993-9999/10000", BIG[9993:])


def test_ignore_range_answers_the_whole_object(server, s3c):
    server.add_fault(BUCKET, "big.bin", "ignore_range", times=1)
    got = s3c.get_object(Bucket=BUCKET, Key="big.bin", Range="bytes=0-9")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200 and "ContentRange" not in got
    assert got["ContentLength"] == len(BIG) and got["Body"].read() == BIG
    status, headers, body = raw(server, presigned(s3c, Key="big.bin"), {"Range": "bytes=0-9"})
    assert (status, headers["Content-Range"], body) == (206, "bytes 0-9/10000", BIG[:10])


def start_get(server, path: str) -> tuple[socket.socket, str, bytes]:
    """Send a GET on a raw socket; return it with the response head and the body bytes read so far."""
    host, port = server.get_host_and_port()
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    return sock, head.decode("latin-1"), body


def read_until_quiet(sock: socket.socket, body: bytes, quiet: float) -> bytes:
    """Read until nothing arrives for `quiet` seconds (or the server closes)."""
    sock.settimeout(quiet)
    try:
        while chunk := sock.recv(65536):
            body += chunk
    except TimeoutError:
        pass
    return body


def test_trickle_sends_a_few_bytes_at_a_time_and_stops_with_the_client(server, s3c):
    # 3 bytes every 0.5 s: the whole 10,000 bytes would take 28 minutes.
    server.add_fault(BUCKET, "big.bin", "trickle", chunk=3, seconds=0.5, times=1)
    sock, head, body = start_get(server, presigned(s3c, Key="big.bin"))
    assert head.startswith("HTTP/1.1 200") and f"Content-Length: {len(BIG)}" in head   # at once, in full
    body = read_until_quiet(sock, body, 0.1)
    assert 0 < len(body) < 100 and BIG.startswith(body)
    # Other requests are served while the trickle goes on...
    assert s3c.get_object(Bucket=BUCKET, Key="other.bin")["Body"].read() == b"other"
    body = read_until_quiet(sock, body, 0.1)
    assert len(body) < 100 and BIG.startswith(body)
    sock.close()
    # ...and the server stops trickling once the client is gone, not 28 minutes later.
    assert wait_until(lambda: server.in_flight == 0)


def test_trickle_delivers_the_whole_body_to_a_patient_client(server, s3c):
    server.add_fault(BUCKET, "other.bin", "trickle", chunk=2, seconds=0.02)
    sock, head, body = start_get(server, presigned(s3c, Key="other.bin"))
    assert "Content-Length: 5" in head
    assert read_until_quiet(sock, body, 5) == b"other"          # the server closes when done
    sock.close()
    server.add_fault(BUCKET, "big.bin", "trickle", chunk=2_500, seconds=0.01)
    assert s3c.get_object(Bucket=BUCKET, Key="big.bin")["Body"].read() == BIG
    status, headers, body = raw(server, presigned(s3c, Key="big.bin"), {"Range": "bytes=5000-9999"})
    assert (status, headers["Content-Range"], body) == (206, "bytes 5000-9999/10000", BIG[5000:])


@pytest.mark.parametrize("kind", ["short", "trickle", "ignore_range", "wrong_range", "truncate"])
def test_body_faults_leave_errors_alone(server, s3c, kind):
    server.add_fault(BUCKET, "missing", kind)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3c.get_object(Bucket=BUCKET, Key="missing", Range="bytes=0-3")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    assert server.get_count(BUCKET, "missing") == 1


def test_faults_match_keys_with_percent_plus_and_utf8(server, s3c):
    server.add_fault(BUCKET, ODD_KEY, "status", status=503, code="SlowDown")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3c.get_object(Bucket=BUCKET, Key=ODD_KEY)
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert s3c.get_object(Bucket=BUCKET, Key="odd/中文 100A+x")["Body"].read() == b"not odd"
    assert server.get_count(BUCKET, ODD_KEY) == 1 and server.get_count(BUCKET, "odd/中文 100A+x") == 1


def test_fault_arguments_are_checked(server):
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.add_fault(BUCKET, "big.bin", "explode")
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.add_fault(BUCKET, "big.bin", "bad_crc")            # OSS only: S3 has no CRC-64 header
    with pytest.raises(TypeError, match="takes"):
        server.add_fault(BUCKET, "big.bin", "reset", seconds=1)
    with pytest.raises(ValueError, match="fraction"):
        server.add_fault(BUCKET, "big.bin", "short", fraction=1)
    with pytest.raises(ValueError, match="chunk"):
        server.add_fault(BUCKET, "big.bin", "trickle", chunk=0)
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.add_list_fault(BUCKET, "short")


# ----- listing faults ----------------------------------------------------------------------------------

def list_page(s3c, v2: bool, token: str | None = None, **kw):
    if v2:
        return s3c.list_objects_v2(Bucket=BUCKET, Prefix="list/", MaxKeys=3,
                                   **({"ContinuationToken": token} if token else {}), **kw)
    return s3c.list_objects(Bucket=BUCKET, Prefix="list/", MaxKeys=3, **({"Marker": token} if token else {}), **kw)


def keys(page) -> list[str]:
    return [o["Key"] for o in page.get("Contents", [])]


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_list_status_reset_and_delay_by_page(server, s3c, v2):
    server.add_list_fault(BUCKET, "status", page=1, status=503, code="SlowDown")
    first = list_page(s3c, v2)
    assert keys(first) == LIST_KEYS[:3]
    token = first["NextContinuationToken"] if v2 else first["Contents"][-1]["Key"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        list_page(s3c, v2, token)
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert keys(list_page(s3c, v2, token)) == LIST_KEYS[3:6]      # page 2 is not faulted
    assert server.list_count(BUCKET) == 3

    server.add_list_fault(BUCKET, "reset", times=1)
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        list_page(s3c, v2)
    server.add_list_fault(BUCKET, "reset", times=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        raw(server, presigned(s3c, "list_objects_v2" if v2 else "list_objects"))

    server.add_list_fault(BUCKET, "delay", seconds=0.3, times=1)
    started = time.monotonic()
    assert keys(list_page(s3c, v2)) == LIST_KEYS[:3]
    assert time.monotonic() - started >= 0.3
    assert server.list_count(BUCKET) == 6
    # Object GETs and other bucket operations are not listings.
    s3c.get_object(Bucket=BUCKET, Key="other.bin")
    s3c.get_bucket_location(Bucket=BUCKET)
    assert server.list_count(BUCKET) == 6


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_truncated_no_token(server, s3c, v2):
    server.add_list_fault(BUCKET, "truncated_no_token", page=2)
    token = None
    for _ in range(2):
        page = list_page(s3c, v2, token)
        token = page["NextContinuationToken"] if v2 else page["Contents"][-1]["Key"]
    last = list_page(s3c, v2, token)                          # the real last page, but it says otherwise
    assert keys(last) == LIST_KEYS[6:]
    assert last["IsTruncated"] is True
    assert "NextContinuationToken" not in last and "NextMarker" not in last
    status, _, body = raw(server, presigned(s3c, "list_objects_v2" if v2 else "list_objects", Prefix="list/", MaxKeys=3))
    assert status == 200 and b"<IsTruncated>true</IsTruncated>" in body and b"<Next" in body   # page 3: honest


def test_truncated_no_token_silently_ends_boto3s_v2_paginator(server, s3c):
    # What the lie does to a client that trusts the paginator: it stops after the first page, no error.
    server.add_list_fault(BUCKET, "truncated_no_token", page=0)
    pages = s3c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="list/",
                                                           PaginationConfig={"PageSize": 3})
    assert [k for page in pages for k in keys(page)] == LIST_KEYS[:3]
    # v1 clients page on with the last key when NextMarker is missing (S3's own rule), so v1 survives.
    server.clear_faults()
    server.add_list_fault(BUCKET, "truncated_no_token", page=0)
    pages = s3c.get_paginator("list_objects").paginate(Bucket=BUCKET, Prefix="list/", PaginationConfig={"PageSize": 3})
    assert [k for page in pages for k in keys(page)] == LIST_KEYS


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_repeat_token_asks_for_the_same_page_again(server, s3c, v2):
    server.add_list_fault(BUCKET, "repeat_token", page=0)
    first = list_page(s3c, v2)
    assert first["IsTruncated"] is True and keys(first) == LIST_KEYS[:3]
    token = first["NextContinuationToken"] if v2 else first["NextMarker"]
    if not v2:
        assert token == "list/00"          # the first key minus its last character
    again = list_page(s3c, v2, token)
    assert keys(again) == LIST_KEYS[:3]    # the same first page
    real_next = again["NextContinuationToken"] if v2 else again["NextMarker"]

    server.add_list_fault(BUCKET, "repeat_token", page=2)
    second = list_page(s3c, v2, real_next)
    assert keys(second) == LIST_KEYS[3:6]
    assert (second["NextContinuationToken"] if v2 else second["NextMarker"]) == real_next
    assert keys(list_page(s3c, v2, real_next)) == LIST_KEYS[3:6]
    assert server.list_count(BUCKET) == 4


def test_repeat_token_on_a_first_page_of_url_encoded_keys(server, s3c):
    server.add_list_fault(BUCKET, "repeat_token")
    page = s3c.list_objects(Bucket=BUCKET, Prefix="odd/", MaxKeys=1)      # boto3 asks encoding-type=url
    assert keys(page) == ["odd/中文 100%41+x"] and page["NextMarker"] == "odd/中文 100%41+"
    assert keys(s3c.list_objects(Bucket=BUCKET, Prefix="odd/", MaxKeys=1, Marker=page["NextMarker"])) == [ODD_KEY]
    status, _, body = raw(server, presigned(s3c, "list_objects", Prefix="odd/", MaxKeys=1, EncodingType="url"))
    assert f"<NextMarker>{quote('odd/中文 100%41+', safe='')}</NextMarker>".encode() in body


def test_repeat_token_traps_a_naive_loop_and_boto3s_paginator_notices(server, s3c):
    first = list_page(s3c, True)
    seen, token = keys(first), first["NextContinuationToken"]
    server.add_list_fault(BUCKET, "repeat_token")
    for _ in range(4):                    # a client that trusts IsTruncated and the token
        page = list_page(s3c, True, token)
        seen += keys(page)
        token = page["NextContinuationToken"]
    assert seen == LIST_KEYS[:3] + LIST_KEYS[3:6] * 4
    server.clear_faults()
    server.add_list_fault(BUCKET, "repeat_token")
    pages = s3c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="list/",
                                                           PaginationConfig={"PageSize": 3})
    with pytest.raises(botocore.exceptions.PaginationError, match="same next token"):
        list(pages)


def test_clear_faults_clears_listing_faults_and_counts(server, s3c):
    server.add_list_fault(BUCKET, "status", status=500)
    server.add_fault(BUCKET, "big.bin", "status", status=500)
    with pytest.raises(botocore.exceptions.ClientError):
        list_page(s3c, True)
    with pytest.raises(botocore.exceptions.ClientError):
        s3c.get_object(Bucket=BUCKET, Key="big.bin")
    assert server.list_count(BUCKET) == 1 and server.get_count(BUCKET, "big.bin") == 1
    server.clear_faults()
    assert server.list_count(BUCKET) == 0 and server.get_count(BUCKET, "big.bin") == 0
    assert keys(list_page(s3c, True)) == LIST_KEYS[:3]
    assert s3c.get_object(Bucket=BUCKET, Key="big.bin")["Body"].read() == BIG


# ----- objects whose ETag is not an MD5 ------------------------------------------------------------------

def test_put_multipart_gives_a_multipart_etag_and_overwrites_move_it(server, s3c):
    data = bytes(range(256)) * (MIN_PART_SIZE // 256) + b"tail"
    etag = server.put_multipart(BUCKET, "mp.bin", data)
    md5s = [hashlib.md5(data[:MIN_PART_SIZE]).digest(), hashlib.md5(data[MIN_PART_SIZE:]).digest()]
    assert etag == f'"{hashlib.md5(b"".join(md5s)).hexdigest()}-2"'
    assert etag.strip('"') != hashlib.md5(data).hexdigest()
    head = s3c.head_object(Bucket=BUCKET, Key="mp.bin")
    assert head["ETag"] == etag and head["ContentLength"] == len(data)
    listed = s3c.list_objects_v2(Bucket=BUCKET, Prefix="mp.bin")["Contents"][0]
    assert listed["ETag"] == etag and listed["Size"] == len(data)
    assert s3c.get_object(Bucket=BUCKET, Key="mp.bin")["Body"].read() == data

    changed = data[:-4] + b"TAIL"                 # same size, different bytes
    etag2 = server.put_multipart(BUCKET, "mp.bin", changed)
    head2 = s3c.head_object(Bucket=BUCKET, Key="mp.bin")
    assert etag2 != etag and head2["ETag"] == etag2 and etag2.endswith('-2"')
    last_modified = [parsedate_to_datetime(h["ResponseMetadata"]["HTTPHeaders"]["last-modified"]) for h in (head, head2)]
    assert last_modified[1] > last_modified[0]
    with pytest.raises(ValueError, match="part_size"):
        server.put_multipart(BUCKET, "mp.bin", b"x", part_size=1024)


def test_conftest_interface_still_works(server, s3c):
    # tests/conftest.py's `store` fixture relies on these: keep them.
    assert server.backend == "s3" and server.endpoint.startswith("http://127.0.0.1:")
    server.add_fault(BUCKET, "other.bin", "delay", seconds=0.01, times=1)
    assert s3c.get_object(Bucket=BUCKET, Key="other.bin")["Body"].read() == b"other"
    assert server.get_count(BUCKET, "other.bin") == 1
    assert server.max_in_flight >= 1 and server.injector.starts
    server.injector.max_in_flight = 0
    assert server.max_in_flight == 0


def test_trickle_ends_when_the_server_stops():
    from infra.s3_server import MotoS3
    with MotoS3() as own:
        own.client().create_bucket(Bucket="stop-bucket")
        own.client().put_object(Bucket="stop-bucket", Key="k", Body=BIG)
        own.add_fault("stop-bucket", "k", "trickle", chunk=1, seconds=60)
        sock, head, _ = start_get(own, presigned(own.client(), Bucket="stop-bucket", Key="k"))
        assert head.startswith("HTTP/1.1 200") and own.in_flight == 1
    # stop() returned; the trickle thread let go of its 60-second wait.
    assert wait_until(lambda: own.in_flight == 0)
    sock.close()
