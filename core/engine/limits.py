"""The engine's limits beyond its request semaphore: a request rate, and curl's low-speed rule."""
from __future__ import annotations

import asyncio

from core.errors import TooSlow


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



class Pace:
    """curl's low-speed limit: fewer than `limit` bytes/s over `seconds` fails the transfer as too slow,
    so a trickling server cannot hold a run for ever (a read timeout never fires while bytes trickle)."""

    __slots__ = ("limit", "seconds", "loop", "since", "at")

    def __init__(self, limit: float, seconds: float):
        self.limit, self.seconds = limit, seconds
        self.loop = asyncio.get_running_loop()
        self.since, self.at = self.loop.time(), 0

    def check(self, got: int) -> None:
        now = self.loop.time()
        if now - self.since >= self.seconds:
            if got - self.at < self.limit * self.seconds:
                raise TooSlow(f"too slow: less than {self.limit:g} bytes/s for {self.seconds:g} s")
            self.since, self.at = now, got

