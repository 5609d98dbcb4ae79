"""SQLite manifest in the output folder: what is done, what failed in which run, so reruns resume."""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tasks.keys import MANIFEST_NAME

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key        TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    etag       TEXT NOT NULL,
    state      TEXT NOT NULL,          -- 'done' or 'failed'
    attempts   INTEGER NOT NULL,       -- attempts in the run that last touched it
    last_error TEXT,
    retryable  INTEGER NOT NULL DEFAULT 0,
    run_id     TEXT NOT NULL,
    updated    REAL NOT NULL,
    path       TEXT NOT NULL DEFAULT ''  -- local path chosen by the source; '' = derived from the key
);
CREATE INDEX IF NOT EXISTS objects_by_run ON objects (run_id, state);
"""


@dataclass(slots=True)
class Outcome:
    """The result of trying one object in this run."""
    key: str
    size: int
    etag: str
    attempts: int
    error: str | None = None
    retryable: bool = False
    bytes_fetched: int = 0
    path: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class FailedRow:
    key: str
    size: int
    etag: str
    attempts: int
    last_error: str
    retryable: bool
    path: str = ""


class Manifest:
    """Thread-safe: one connection guarded by a lock; every write is one short transaction."""

    def __init__(self, output: Path, name: str = MANIFEST_NAME):
        self.path = output / name
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commits,
        # and a lost 'done' row only means one more download.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def done_entries(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        """size and etag of the given keys that an earlier run finished."""
        found: dict[str, tuple[int, str]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, size, etag FROM objects WHERE state='done' AND key IN ({marks})", chunk)
                found.update((k, (s, e)) for k, s, e in rows)
        return found

    def record(self, outcomes: Iterable[Outcome], run_id: str) -> None:
        now = time.time()
        rows = [(o.key, o.size, o.etag, "done" if o.ok else "failed", o.attempts, o.error,
                 int(o.retryable), run_id, now, o.path) for o in outcomes]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO objects (key, size, etag, state, attempts, last_error, retryable, run_id, updated,"
                " path) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET size=excluded.size,"
                " etag=excluded.etag, state=excluded.state, attempts=excluded.attempts,"
                " last_error=excluded.last_error, retryable=excluded.retryable, run_id=excluded.run_id,"
                " updated=excluded.updated, path=excluded.path", rows)
            self._db.execute("COMMIT")

    def failed(self, run_id: str, retryable_only: bool = False, chunk: int = 1000) -> Iterator[list[FailedRow]]:
        """This run's failures in key order, a chunk at a time (keyset paging keeps memory flat)."""
        after = ""
        extra = " AND retryable=1" if retryable_only else ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT key, size, etag, attempts, last_error, retryable, path FROM objects"
                    f" WHERE run_id=? AND state='failed'{extra} AND key > ? ORDER BY key LIMIT ?",
                    (run_id, after, chunk)).fetchall()
            if not rows:
                return
            yield [FailedRow(k, s, e, a, err or "", bool(r), p) for k, s, e, a, err, r, p in rows]
            after = rows[-1][0]
