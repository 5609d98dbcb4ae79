"""The engine's limits (core/engine/limits.py) against a clock the test controls: the request rate
(--max-requests-per-second) and curl's low-speed rule. Exact times, no waiting, no timing asserts."""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from core.engine import Engine
from core.engine.limits import Bandwidth, Pace, RateLimit, divide_bwlimit, parse_bwlimit
from core.errors import TooSlow
from core.model import RemoteObject
from core.sources import StoreConfig
from core.sources.oss import OssSource
from core.workarea import Output
from infra import oss_server


class VirtualClock:
    """An event loop's clock that moves only when the loop has nothing to do but wait for a timer: then it
    jumps to that timer. Sleeps take no real time, and every time the loop reads is exact.

    Waiting for I/O (a request to a real server) is real: the loop polls for it briefly first and lets time
    jump only when nothing came (the technique of aiotools' VirtualClock)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, io_grace: float = 0.05):
        self.now = 0.0
        self._select = loop._selector.select
        self._grace = io_grace
        loop.time = lambda: self.now
        loop._selector.select = self.select

    def select(self, timeout=None):
        if timeout == 0:
            return self._select(0)
        events = self._select(self._grace if timeout is None else min(self._grace, timeout))
        if events:
            return events
        if timeout is None:                      # no timer: only I/O to wait for
            return self._select(None)
        self.now += timeout                      # nothing came: on to the next timer
        return []


def on_virtual_time(coro):
    loop = asyncio.new_event_loop()
    VirtualClock(loop, io_grace=0)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_request_starts_are_spaced_evenly_at_the_rate():
    limit = RateLimit(10)

    async def scenario():
        loop = asyncio.get_running_loop()
        starts = []

        async def request():
            await limit.wait()
            starts.append(loop.time())
        await asyncio.gather(*(request() for _ in range(25)))
        return starts
    starts = on_virtual_time(scenario())
    assert starts == pytest.approx([i / 10 for i in range(25)], abs=1e-9)


def test_an_idle_limiter_lets_the_next_request_go_at_once_but_saves_no_burst():
    limit = RateLimit(4)

    async def scenario():
        loop = asyncio.get_running_loop()
        starts = []

        async def request():
            await limit.wait()
            starts.append(loop.time())
        await request()
        await asyncio.sleep(10)                     # idle for a long while: no credit for it
        await asyncio.gather(*(request() for _ in range(3)))
        return starts
    assert on_virtual_time(scenario()) == pytest.approx([0, 10, 10.25, 10.5], abs=1e-9)


@pytest.mark.parametrize("rate", [0.5, 3, 250])
def test_no_window_of_a_second_holds_more_than_the_rate(rate):
    limit = RateLimit(rate)

    async def scenario():
        loop = asyncio.get_running_loop()
        starts = []

        async def request(delay):
            await asyncio.sleep(delay)              # callers arriving at odd moments
            await limit.wait()
            starts.append(loop.time())
        await asyncio.gather(*(request((i * 37 % 11) / 7) for i in range(60)))
        return starts
    starts = sorted(on_virtual_time(scenario()))
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + 1 - 1e-9]
        assert len(in_window) <= max(1, rate), (start, in_window)


def transfer(phases: list[tuple[int, int]]) -> tuple[float, str]:
    """A transfer under the rule 1000 bytes/s over 2 s, one chunk a second: (seconds, bytes per chunk) per
    phase. Returns when it was found too slow and why, or (the end, "")."""
    async def scenario():
        loop, got = asyncio.get_running_loop(), 0
        pace = Pace(1000, 2)
        try:
            for seconds, rate in phases:
                for _ in range(seconds):
                    await asyncio.sleep(1)
                    got += rate
                    pace.check(got)
        except TooSlow as exc:
            return loop.time(), str(exc)
        return loop.time(), ""
    return on_virtual_time(scenario())


def test_the_low_speed_rule_fails_a_transfer_slower_than_the_limit_over_a_whole_window():
    assert transfer([(10, 1000)]) == (10, "")                            # at the limit: never too slow
    assert transfer([(4, 1500), (4, 750)]) == (6, "too slow: less than 1000 bytes/s for 2 s")
    assert transfer([(4, 1500), (1, 0), (1, 2000), (4, 1000)]) == (10, "")  # a short stall caught up: fine
    assert transfer([(4, 1500), (2, 0)]) == (6, "too slow: less than 1000 bytes/s for 2 s")  # a stall


def test_every_get_of_the_engine_waits_its_turn(oss, tmp_path):
    """12 downloads at once (concurrency 16) with --max-requests-per-second 10: the GETs start 0.1 s apart,
    on the engine's own loop, whatever the server does."""
    bucket = "l-" + uuid.uuid4().hex[:10]
    oss.create_bucket(bucket)
    for i in range(12):
        oss.put(bucket, f"k{i:02d}", b"x" * 100)
    source = OssSource(StoreConfig(backend="oss", bucket=bucket, endpoint=oss.endpoint, credentials={
        "access_key_id": oss_server.ACCESS_KEY, "secret_access_key": oss_server.SECRET_KEY}))
    # No timers of aiohttp's own (connect/read timeouts, low speed): the clock jumps only for the limiter.
    engine = Engine(16, connect_timeout=0, read_timeout=0, max_requests_per_second=10, low_speed_limit=0)
    clock = VirtualClock(engine._loop)
    starts = []

    def signer(obj):
        sign = source.signer(obj)

        def signed(refresh):
            starts.append(clock.now)
            return sign(refresh)
        return signed

    async def all_at_once(out):
        await asyncio.gather(*(engine.fetch(signer(RemoteObject(f"k{i:02d}", 100)), out, f"k{i:02d}", 100)
                               for i in range(12)))
    with engine, Output(tmp_path) as out:
        engine.run(all_at_once(out))
    assert sorted(starts) == pytest.approx([i / 10 for i in range(12)], abs=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [f"k{i:02d}" for i in range(12)]


def test_the_flag_reaches_the_engine():
    from core.engine import engine_for
    from flows.arguments import build_parser, params_from_args
    args = build_parser().parse_args(["--bucket", "b", "--max-requests-per-second", "4"])
    engine = engine_for(params_from_args(args).job("r").settings)
    assert engine._rate.interval == 0.25
    assert engine_for(params_from_args(build_parser().parse_args(["--bucket", "b"])).job("r").settings)._rate is None


@pytest.mark.parametrize("text, table", [
    ("10M", [(0, 10 << 20)]), ("512k", [(0, 512 << 10)]), ("100", [(0, 100 << 10)]), ("off", [(0, None)]),
    ("", [(0, None)]), ("2.5M", [(0, 5 << 19)]),
    ("08:00,4M 19:00,off", [(480, 4 << 20), (1140, None)]),
    ("19:00,off 8:30,1M", [(510, 1 << 20), (1140, None)]),
])
def test_bwlimit_as_rclone_writes_it(text, table):
    assert parse_bwlimit(text) == table


@pytest.mark.parametrize("text", ["fast", "0", "-1M", "25:00,1M 19:00,off", "08:00 19:00,off"])
def test_bwlimit_that_cannot_be_read(text):
    with pytest.raises(ValueError):
        parse_bwlimit(text)


def test_the_timetable_is_the_local_time_of_the_machine_and_wraps_around_midnight():
    cap = Bandwidth(parse_bwlimit("08:00,4M 19:00,512k"))
    at = lambda hour: time.mktime((2026, 3, 2, hour, 30, 0, 0, 0, -1))  # noqa: E731
    assert [cap.rate(at(h)) for h in (2, 8, 18, 19, 23)] == [512 << 10, 4 << 20, 4 << 20, 512 << 10, 512 << 10]


def test_a_sharded_run_gives_each_shard_its_share():
    assert divide_bwlimit("8M", 4) == "2097152B" and parse_bwlimit(divide_bwlimit("8M", 4)) == [(0, 2 << 20)]
    assert parse_bwlimit(divide_bwlimit("08:00,4M 19:00,off", 2)) == [(480, 2 << 20), (1140, None)]
    assert divide_bwlimit(None, 3) is None and divide_bwlimit("8M", 1) == "8M"


def test_the_cap_lets_one_seconds_worth_go_at_once_then_holds_to_the_rate():
    cap = Bandwidth(parse_bwlimit("100k"))

    async def scenario():
        loop = asyncio.get_running_loop()
        waited = [await cap.take(10 << 10) for _ in range(30)]  # 300 KiB at 100 KiB/s
        return loop.time(), waited
    ended, waited = on_virtual_time(scenario())
    assert ended == pytest.approx(2.0, abs=1e-6)  # the first second's worth at once, the rest at the rate
    assert sum(waited) == pytest.approx(2.0, abs=1e-6)


def test_a_capped_download_takes_at_least_its_share_of_time_and_is_never_too_slow(s3, bucket, tmp_path):
    """Only a lower bound on the time (it cannot flake): 1 MiB under a 256 KiB/s cap with one second's burst
    needs ≥ 3 s; and the low-speed rule (1 MiB/s for 1 s) does not fail what the cap holds back."""
    from tests.conftest import run_cli
    client = s3.client()
    objects = {"d/big.bin": os.urandom(640 << 10), **{f"d/s{i}.bin": os.urandom(96 << 10) for i in range(4)}}
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    started = time.monotonic()
    done = run_cli(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "d/", "--output", str(tmp_path),
                    "--no-prefect", "--bwlimit", "256k", "--low-speed-limit", "1048576", "--low-speed-time", "1"])
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith(".oss")} \
        == {k[2:]: v for k, v in objects.items()}
    assert took >= (1024 - 256) / 256
