"""Run progress for people: the display the CLI installs (a live bar, or a line every few seconds without a
terminal); speeds over a sliding window from the first byte on. No Prefect here (tasks/progress.py adds
the Prefect artifact and log lines)."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import deque
from typing import Iterator

from core.model import Counts
from core.report import human_bytes

_display = None  # owned by use_display's caller (the command that runs a flow in its own process)


def current():
    """The display installed by use_display(), or None."""
    return _display


@contextlib.contextmanager
def use_display(display) -> Iterator[None]:
    """While in it, the flow run of this process draws its progress on the command's display:
    display.update(live, bytes_done, final) on every tick."""
    global _display
    _display = display
    try:
        yield
    finally:
        _display = None


class Meter:
    """A counter's rate over the last `window` seconds, counted from its first increase (not from process
    start: Prefect's start-up and the listing before the first byte would make it look slow)."""

    def __init__(self, window: float = 10.0):
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()
        self.first_at: float | None = None  # when it first moved (the tick before it was seen moving)
        self.moved_at: float | None = None  # when it last moved
        self.value = 0.0

    def add(self, value: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if value != self.value:
            if self.first_at is None:
                self.first_at = self.samples[-1][0] if self.samples else now
                self.samples.clear()
                self.samples.append((self.first_at, self.value))
            self.moved_at = now
        self.value = value
        if self.first_at is None:
            self.samples.clear()  # only the last idle sample matters: it dates the first move
        self.samples.append((now, value))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Per second over the window; None before it has moved."""
        if self.first_at is None or len(self.samples) < 2:
            return None
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None

    def eta(self, remaining: float) -> float | None:
        rate = self.rate()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None

    @property
    def active_seconds(self) -> float | None:
        """From its first move to its last: the time the bytes were actually flowing."""
        if self.first_at is None or self.moved_at is None:
            return None
        return self.moved_at - self.first_at


def progress_line(live: Counts, bytes_done: int, rate: float | None) -> str:
    speed = f"{human_bytes(rate)}/s" if rate is not None else "-/s"
    text = f"{live.phase}: {live.done}/{live.listed} objects, {human_bytes(bytes_done)} ({speed}), {live.failed} failed"
    if live.retrying:
        text += f"; {live.retried}/{live.retrying} retried"
    return text


def clock(seconds: float | None) -> str:
    """An ETA: rounded up, so 0:00:00 only once nothing is left."""
    if seconds is None:
        return "-:--:--"
    seconds = math.ceil(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LineDisplay:
    """Without a terminal (cron, CI, a pipe): a plain progress line on stderr every `every` seconds."""

    def __init__(self, every: float = 10.0, stream=None):
        self.every, self.stream = every, stream or sys.stderr
        self.bytes = Meter()
        self._line_at = time.monotonic()

    def __enter__(self) -> "LineDisplay":
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def active_seconds(self) -> float | None:
        return self.bytes.active_seconds

    def update(self, live: Counts, bytes_done: int, final: bool = False) -> None:
        now = time.monotonic()
        self.bytes.add(bytes_done, now)
        if not final and now - self._line_at >= self.every:
            self._line_at = now
            print(time.strftime("%H:%M:%S"), progress_line(live, bytes_done, self.bytes.rate()),
                  file=self.stream, flush=True)


