"""The engine's integrity rules, one by one, against the OSS-protocol server (real HTTP, signed URLs, lies on
demand): size, ranges, versions of partial files, the low-speed limit. No Prefect here."""
from __future__ import annotations

import os
import uuid

import pytest

from infra import oss_server
from core.sources import StoreConfig
from core.model import RemoteObject
from core.sources.oss import OssSource
from core.sources.s3 import S3Source
from core.errors import DownloadError, IntegrityError, TooSlow
from core.engine import Engine
from core.engine.fetch import SMALL_BODY
from core.engine.verify import bare_etag
from core.workarea import Output


@pytest.fixture(params=["oss"])
def world(request, tmp_path):
    """One object store (the OSS-protocol server; `indirect` parametrization adds moto's S3 server), its
    source's signed URLs, and an engine with small limits writing to an output folder."""
    bucket = "e-" + uuid.uuid4().hex[:10]
    if request.param == "oss":
        server = request.getfixturevalue("oss")
        server.create_bucket(bucket)
        backend = OssSource(StoreConfig(backend="oss", bucket=bucket, endpoint=server.endpoint, credentials={
            "access_key_id": oss_server.ACCESS_KEY, "secret_access_key": oss_server.SECRET_KEY}))
    else:
        server = request.getfixturevalue("s3")
        server.client().create_bucket(Bucket=bucket)
        backend = S3Source(StoreConfig(backend="s3", bucket=bucket, endpoint=server.endpoint))
    engine = Engine(4, read_timeout=5, part_size=1 << 20, multipart_threshold=2 << 20, low_speed_limit=1000,
                    low_speed_time=0.5).__enter__()
    out = Output(tmp_path)

    class World:
        def put(self, key, data, **kw):
            if request.param == "oss":
                return bare_etag(server.put(bucket, key, data, **kw))
            return bare_etag(server.client().put_object(Bucket=bucket, Key=key, Body=data)["ETag"])

        def fetch(self, key, size, etag):
            return engine.run(engine.fetch(backend.signer(RemoteObject(key, size)), out, key, size, etag))

        def fault(self, key, kind, **kw):
            server.add_fault(bucket, key, kind, **kw)

        def gets(self, key):
            return server.get_count(bucket, key)

    w = World()
    w.engine, w.out, w.root = engine, out, tmp_path
    yield w
    engine.close()
    out.close()
    server.clear_faults()


def partial(world, key):
    return world.out.temp_name(key, "part"), world.out.temp_name(key, "meta")


def interrupt(world, key, size, etag):
    """A transfer cut after its first bytes (a server that stalls: too slow), leaving a partial file."""
    world.fault(key, "trickle", times=1, chunk=100, seconds=0.4)  # 250 bytes/s: too slow
    with pytest.raises(TooSlow):
        world.fetch(key, size, etag)


def test_a_short_body_with_a_matching_length_is_an_integrity_error(world):
    for key, data in (("small", os.urandom(5000)), ("streamed", os.urandom(SMALL_BODY * 3))):
        etag = world.put(key, data, multipart_parts=2)           # no MD5 to fall back on: size alone decides
        world.fault(key, "short", times=1)
        with pytest.raises(IntegrityError, match="size mismatch"):
            world.fetch(key, len(data), etag)
        assert not (world.root / key).exists()
        world.fetch(key, len(data), etag)
        assert (world.root / key).read_bytes() == data


def test_an_object_of_another_size_than_listed_is_refused_before_its_body(world):
    data = os.urandom(3000)
    etag = world.put("resized", data)
    with pytest.raises(IntegrityError, match="sending 3000 bytes, the listing said 2000"):
        world.fetch("resized", 2000, etag)


def test_an_object_changed_since_it_was_listed_is_refused(world):
    old = world.put("changed", b"a" * 4000)
    world.put("changed", b"b" * 4000)
    with pytest.raises(DownloadError, match="changed since it was listed"):
        world.fetch("changed", 4000, old)
    assert not (world.root / "changed").exists()


def test_a_partial_file_of_the_same_version_is_resumed_from_where_it_stopped(world):
    data = os.urandom(SMALL_BODY * 4)
    etag = world.put("r", data, multipart_parts=2)
    interrupt(world, "r", len(data), etag)
    part, meta = partial(world, "r")
    have = (world.root / ".ossdl" / part).stat().st_size
    assert 0 < have < len(data) and (world.root / ".ossdl" / meta).exists()
    before = world.engine.bytes_done
    world.fetch("r", len(data), etag)
    assert world.engine.bytes_done - before == len(data) - have    # only the rest was fetched
    assert (world.root / "r").read_bytes() == data and not (world.root / ".ossdl" / part).exists()


def test_a_partial_file_of_another_version_is_discarded(world):
    old, new = os.urandom(SMALL_BODY * 4), os.urandom(SMALL_BODY * 4)
    old_etag = world.put("v", old, multipart_parts=2)
    interrupt(world, "v", len(old), old_etag)
    new_etag = world.put("v", new, multipart_parts=2)               # re-uploaded, same size
    before = world.engine.bytes_done
    world.fetch("v", len(new), new_etag)
    assert world.engine.bytes_done - before == len(new)              # started over
    assert (world.root / "v").read_bytes() == new


def test_a_partial_file_whose_object_changed_after_the_listing_is_discarded_on_412(world):
    """The listing said version 1 and a partial file of it is here, but the store has version 2 by now: the
    resume's If-Match fails (412), the partial file goes, and the object is refused as changed."""
    old, new = os.urandom(SMALL_BODY * 4), os.urandom(SMALL_BODY * 4)
    listed = world.put("c", old, multipart_parts=2)
    interrupt(world, "c", len(old), listed)
    part, meta = partial(world, "c")
    assert (world.root / ".ossdl" / part).exists() and (world.root / ".ossdl" / meta).exists()
    world.put("c", new, multipart_parts=2)
    with pytest.raises(DownloadError, match=r"changed since it was listed \(If-Match failed\)"):
        world.fetch("c", len(old), listed)
    assert not (world.root / ".ossdl" / part).exists() and not (world.root / ".ossdl" / meta).exists()
    assert not (world.root / "c").exists()
    assert world.gets("c") == 3                       # the cut one, the resume (412), the whole object (412)


def test_a_resume_answered_416_starts_over_with_the_whole_object(world):
    data = os.urandom(SMALL_BODY * 4)
    etag = world.put("r416", data, multipart_parts=2)
    interrupt(world, "r416", len(data), etag)
    world.fault("r416", "status", status=416, code="InvalidRange", times=1)
    before = world.engine.bytes_done
    world.fetch("r416", len(data), etag)
    assert world.engine.bytes_done - before == len(data) and world.gets("r416") == 3
    assert (world.root / "r416").read_bytes() == data
    assert os.listdir(world.root / ".ossdl") == ["lock"]


@pytest.mark.parametrize("world", ["oss", "s3"], indirect=True)
@pytest.mark.parametrize("extra", [0, 1000])
def test_a_partial_file_as_long_as_the_object_or_longer_is_never_resumed(world, extra):
    """A partial file holding every byte (killed before its final name) or more is of no use for a Range
    request (bytes=<size>- is unsatisfiable: S3 answers 416): the object is fetched whole in one request."""
    data = os.urandom(SMALL_BODY * 4)
    etag = world.put("full", data)
    interrupt(world, "full", len(data), etag)
    part, _ = partial(world, "full")
    with open(world.root / ".ossdl" / part, "r+b") as f:
        f.truncate(len(data) + extra)
    before = world.engine.bytes_done
    world.fetch("full", len(data), etag)
    assert world.engine.bytes_done - before == len(data) and world.gets("full") == 2
    assert (world.root / "full").read_bytes() == data
    assert os.listdir(world.root / ".ossdl") == ["lock"]


def test_a_resume_answered_with_other_bytes_is_discarded_and_fails_once(world):
    data = os.urandom(SMALL_BODY * 4)
    etag = world.put("w", data, multipart_parts=2)
    interrupt(world, "w", len(data), etag)
    assert (world.root / ".ossdl" / partial(world, "w")[0]).stat().st_size >= 100
    world.fault("w", "wrong_range", times=1, shift=7)
    with pytest.raises(IntegrityError, match="other bytes than asked for"):
        world.fetch("w", len(data), etag)
    part, meta = partial(world, "w")
    assert not (world.root / ".ossdl" / part).exists()
    world.fetch("w", len(data), etag)
    assert (world.root / "w").read_bytes() == data


@pytest.mark.parametrize("kind, message", [("wrong_range", "another range"), ("ignore_range", "ignored the Range"),
                                           ("short", "size mismatch")])
def test_ranged_parts_must_be_exactly_the_ranges_asked_for(world, kind, message):
    data = os.urandom(3 << 20)                                       # 3 parts of 1 MiB
    etag = world.put("p", data, multipart_parts=3)
    world.fault("p", kind, times=1)
    with pytest.raises(IntegrityError, match=message):
        world.fetch("p", len(data), etag)
    assert not (world.root / "p").exists() and os.listdir(world.root / ".ossdl") == ["lock"]
    world.fetch("p", len(data), etag)
    assert (world.root / "p").read_bytes() == data


def test_a_trickle_is_too_slow_for_small_and_streamed_bodies(world):
    for key, size, chunk in (("ts", 3000, 1), ("tl", SMALL_BODY * 2, 100)):
        data = os.urandom(size)
        etag = world.put(key, data)
        world.fault(key, "trickle", times=1, chunk=chunk, seconds=0.3)
        with pytest.raises(TooSlow, match="too slow"):
            world.fetch(key, size, etag)
        world.fetch(key, size, etag)
        assert (world.root / key).read_bytes() == data


def test_the_local_file_keeps_the_stores_time(world):
    data = b"t" * 100
    etag = world.put("time", data)
    got = world.fetch("time", len(data), etag)
    st = os.stat(world.root / "time")
    assert got.mtime_ns == st.st_mtime_ns and st.st_mtime_ns % 1_000_000_000 == 0   # Last-Modified: seconds
