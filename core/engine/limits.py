"""The engine's limits beyond its request semaphore: a request rate, a bandwidth cap, and curl's low-speed
rule."""
from __future__ import annotations

import asyncio
import re
import time

from core.errors import TooSlow
from core.filters import parse_size

_WHEN = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class RateLimit:
    """Spaces request starts evenly: at most `rate` per second for the whole process."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next_at = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, self.next_at)
        self.next_at = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)



def parse_bwlimit(text: str | None) -> list[tuple[int, float | None]]:
    """rclone's --bwlimit: `10M` (10 MiB/s; a bare number is KiB/s, k M G binary), `off`, or a timetable in
    the local time of the machine that downloads, `"08:00,4M 19:00,off"`: (minute of the day, bytes/s or
    None for no cap) in time order. ValueError saying what cannot be read."""
    text = (text or "").strip()
    if not text or text.lower() == "off":
        return [(0, None)]
    if "," not in text:
        return [(0, _rate(text))]
    table = []
    for entry in text.split():
        when, _, rate = entry.partition(",")
        found = _WHEN.match(when)
        if not found or not rate:
            raise ValueError(f"{entry!r} is not HH:MM,RATE (e.g. \"08:00,4M 19:00,off\")")
        table.append((int(found.group(1)) * 60 + int(found.group(2)), _rate(rate)))
    return sorted(table)


def _rate(text: str) -> float | None:
    if text.lower() == "off":
        return None
    try:
        rate = parse_size(text.removesuffix("/s"), "")  # rclone's units: 10M is 10 MiB/s, a bare number KiB/s
    except ValueError:
        rate = 0
    if rate <= 0:
        raise ValueError(f"not a rate: {text!r} (e.g. 10M for 10 MiB/s, 512k, off)")
    return float(rate)


def divide_bwlimit(text: str | None, parts: int) -> str | None:
    """Each of `parts` shards' share of a cap, written as --bwlimit takes it."""
    table = parse_bwlimit(text)
    if parts <= 1 or all(rate is None for _, rate in table):
        return text

    def share(rate):
        return "off" if rate is None else f"{max(1, int(rate / parts))}B"
    if len(table) == 1 and table[0][0] == 0 and "," not in (text or ""):
        return share(table[0][1])
    return " ".join(f"{m // 60:02d}:{m % 60:02d},{share(rate)}" for m, rate in table)


class Bandwidth:
    """A cap on the bytes/s that all of a process's object GETs receive together (a token bucket holding one
    second's worth), following a timetable in local time. `take(n)` waits until n more bytes fit; it returns
    the seconds it waited, which the low-speed rule does not count against a download."""

    def __init__(self, table: list[tuple[int, float | None]]):
        self.table = table
        self.next_at = float("-inf")

    def rate(self, now: float | None = None) -> float | None:
        local = time.localtime(now)
        minute = local.tm_hour * 60 + local.tm_min
        current = self.table[-1][1]  # before the day's first entry: the last one, from yesterday
        for start, rate in self.table:
            if start <= minute:
                current = rate
        return current

    async def take(self, n: int) -> float:
        rate = self.rate()
        if rate is None or n <= 0:
            return 0.0
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.next_at = max(self.next_at, now - 1.0) + n / rate  # at most a second's worth ahead of time
        wait = self.next_at - now
        if wait > 0:
            await asyncio.sleep(wait)
            return wait
        return 0.0


class Pace:
    """curl's low-speed limit: fewer than `limit` bytes/s over `seconds` fails the transfer as too slow,
    so a trickling server cannot hold a run for ever (a read timeout never fires while bytes trickle)."""

    __slots__ = ("limit", "seconds", "loop", "since", "at")

    def __init__(self, limit: float, seconds: float):
        self.limit, self.seconds = limit, seconds
        self.loop = asyncio.get_running_loop()
        self.since, self.at = self.loop.time(), 0

    def pause(self, seconds: float) -> None:
        """Time spent held back by the bandwidth cap: not the store's slowness."""
        self.since += seconds

    def check(self, got: int) -> None:
        now = self.loop.time()
        if now - self.since >= self.seconds:
            if got - self.at < self.limit * self.seconds:
                raise TooSlow(f"too slow: less than {self.limit:g} bytes/s for {self.seconds:g} s")
            self.since, self.at = now, got

