"""Run progress in Prefect: a progress artifact (at most once a second) and a log line every few seconds
in the flow run's logs, beside the display the CLI installed (core/progress.py)."""
from __future__ import annotations

import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from core import progress as display
from core.engine import Engine
from core.model import Counts
from core.progress import Meter, progress_line

PROGRESS_KEY = "download-progress"


class Progress:
    def __init__(self, live: Counts, engine: Engine, log, artifact_every: float = 1.0, log_every: float = 10.0):
        self.live, self.engine, self.log = live, engine, log
        self.tty = sys.stderr.isatty()
        self.bytes = Meter()
        self.artifact_every, self.log_every = artifact_every, log_every
        self._artifact_at = self._log_at = self._line_at = 0.0
        self._artifact_id = None

    def line(self) -> str:
        return progress_line(self.live, self.engine.bytes_done, self.bytes.rate())

    def percent(self) -> float:
        finished = self.live.done + self.live.failed
        return round(100.0 * finished / self.live.listed, 1) if self.live.listed else 0.0

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        self.bytes.add(self.engine.bytes_done, now)
        if display.current() is not None:
            display.current().update(self.live, self.engine.bytes_done, final)
        elif self.tty and (final or now - self._line_at >= 0.1):
            self._line_at = now
            sys.stderr.write("\r\x1b[K" + self.line() + ("\n" if final else ""))
            sys.stderr.flush()
        # The flow run's log in Prefect; on a terminal without the CLI's display the line above says it.
        if (display.current() is not None or not self.tty) and (final or now - self._log_at >= self.log_every):
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
