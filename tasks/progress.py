"""Run progress for people: a one-line terminal display and a Prefect progress artifact, both throttled."""
from __future__ import annotations

import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.batch import Live
from tasks.report import human_bytes
from tasks.transfer import Engine

PROGRESS_KEY = "download-progress"
_display = None


def use_display(display) -> None:
    """Let an interactive terminal draw the progress (display.update(live, bytes_done, final))."""
    global _display
    _display = display


class Progress:
    def __init__(self, live: Live, engine: Engine, log, artifact_every: float = 1.0, log_every: float = 10.0):
        self.live, self.engine, self.log = live, engine, log
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.artifact_every, self.log_every = artifact_every, log_every
        self._artifact_at = self._log_at = self._line_at = 0.0
        self._artifact_id = None

    def line(self) -> str:
        live = self.live
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.engine.bytes_done / elapsed
        return (f"{live.phase}: {live.done}/{live.listed} objects, {human_bytes(self.engine.bytes_done)}"
                f" ({human_bytes(rate)}/s), {live.failed} failed")

    def percent(self) -> float:
        finished = self.live.done + self.live.failed
        return round(100.0 * finished / self.live.listed, 1) if self.live.listed else 0.0

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        if _display is not None:
            _display.update(self.live, self.engine.bytes_done, final)
        elif self.tty and (final or now - self._line_at >= 0.1):
            self._line_at = now
            sys.stderr.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
            sys.stderr.flush()
        if not self.tty and (final or now - self._log_at >= self.log_every):
            self._log_at = now
            self.log.info(self.line())
        if final or now - self._artifact_at >= self.artifact_every:
            self._artifact_at = now
            self._publish(100.0 if final else self.percent())

    def _publish(self, percent: float) -> None:
        description = self.line()
        if self._artifact_id is None:
            self._artifact_id = create_progress_artifact(percent, key=PROGRESS_KEY, description=description)
        else:
            update_progress_artifact(self._artifact_id, percent, description=description)
