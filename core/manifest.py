"""SQLite manifest in the output folder: what is done, what failed in which run, so reruns resume.

Outcomes are handed over with `add()` (cheap, from any thread, the event loop included) and written by
one writer thread at least every second, so a killed run loses at most a second of outcomes — and the
files it had already finished are recognised on disk by the next run (core/selection.py), so even
those are not fetched again.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from core.errors import DiskFull, UsageError
from core.model import MANIFEST_NAME, Outcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key        TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,       -- as listed
    etag       TEXT NOT NULL,          -- as listed
    state      TEXT NOT NULL,          -- 'done' or 'failed'
    attempts   INTEGER NOT NULL,       -- attempts in the run that last touched it
    last_error TEXT,
    retryable  INTEGER NOT NULL DEFAULT 0,
    run_id     TEXT NOT NULL,
    updated    REAL NOT NULL,
    path       TEXT NOT NULL DEFAULT '' -- local path chosen by the source; '' = derived from the key
);
CREATE INDEX IF NOT EXISTS objects_by_run ON objects (run_id, state);
CREATE TABLE IF NOT EXISTS changes (    -- this run's change report until its CSV is written
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    change TEXT NOT NULL,               -- 'new', 'changed in store', 'changed locally', 'deleted'
    size   INTEGER NOT NULL,
    PRIMARY KEY (run_id, key, change)
);
CREATE TABLE IF NOT EXISTS listed (     -- a mirror's run: the local paths its listing maps to
    path   TEXT PRIMARY KEY,
    folded TEXT NOT NULL                -- casefolded: what a case-insensitive file system compares
);
CREATE INDEX IF NOT EXISTS listed_folded ON listed (folded);
"""
# Added after the first release; NULL in rows written before it.
COLUMNS = {"mtime_ns": "INTEGER",  # the local file's modification time when it was recorded done
           "local": "INTEGER NOT NULL DEFAULT 0"}  # failed at the local file system
FLUSH_EVERY = 1.0      # seconds: the most a killed run can lose
FLUSH_AT = 2000        # outcomes: write sooner when this many wait


@dataclass(slots=True)
class FailedRow:
    key: str
    size: int
    etag: str
    attempts: int
    last_error: str
    retryable: bool
    path: str = ""


@dataclass(slots=True)
class Done:
    size: int
    etag: str
    mtime_ns: int | None


class Manifest:
    """One connection, used by the writer thread and readers under a lock."""

    def __init__(self, output: Path, name: str = MANIFEST_NAME):
        self.path = Path(output) / name
        self.warning: str | None = None
        self.existed = self.path.exists()
        self._lock = threading.Lock()
        self._db = self._open()
        self._pending: list[tuple] = []
        self._changes: list[tuple] = []
        self._listed: list[tuple] = []
        self._wake = threading.Condition()
        self._error: BaseException | None = None
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="manifest-writer", daemon=True)
        self._writer.start()

    # -- opening, and recovering from a damaged file ----------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            if stat.S_ISLNK(os.lstat(self.path).st_mode):
                raise UsageError(f"{self.path} is a symbolic link: remove it (the manifest is the tool's own file)")
        except FileNotFoundError:
            pass
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(self.path, aside)
            for extra in ("-wal", "-shm"):
                Path(str(self.path) + extra).unlink(missing_ok=True)
            self.warning = (f"the manifest {self.path.name} was damaged ({exc}); it was moved to {aside.name} and"
                            " rebuilt: files already here are recognised, not fetched again")
            self.existed = False
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commits,
            # and a lost 'done' row only means the file is checked on disk again.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(objects)")}
            for column, kind in COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE objects ADD COLUMN {column} {kind}")
        except BaseException:
            db.close()
            raise
        return db

    # -- writing ----------------------------------------------------------------------------------
    def add(self, outcomes: Iterable[Outcome], run_id: str) -> None:
        """Queue outcomes for the writer thread (never blocks on the disk)."""
        now = time.time()
        rows = [(o.key, o.size, o.etag, "done" if o.ok else "failed", o.attempts, o.error, int(o.retryable),
                 run_id, now, o.path, o.mtime_ns, int(o.local)) for o in outcomes]
        if not rows:
            return
        with self._wake:
            self._pending.extend(rows)
            if len(self._pending) >= FLUSH_AT:
                self._wake.notify()

    def add_changes(self, changes: Iterable[tuple[str, str, int]], run_id: str) -> None:
        """Queue rows of the change report (key, change, size) for the writer thread."""
        rows = [(run_id, key, change, size) for key, change, size in changes]
        if rows:
            with self._wake:
                self._changes.extend(rows)

    def start_listing(self) -> None:
        """A mirror's run begins: the paths an earlier run listed are forgotten."""
        self.flush()
        with self._lock:
            self._db.execute("DELETE FROM listed")

    def add_listed(self, paths: Iterable[str]) -> None:
        """Local paths this run's listing maps to (for the writer thread)."""
        from core.mirror import folded
        rows = [(path, folded(path)) for path in paths]
        if rows:
            with self._wake:
                self._listed.extend(rows)

    def listed(self, paths: list[str], folded: bool = False) -> set[str]:
        """Which of the paths (casefolded ones, with `folded`) this run's listing maps to."""
        self.flush()
        column = "folded" if folded else "path"
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(paths), 500):
                chunk = paths[i:i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in self._db.execute(
                    f"SELECT {column} FROM listed WHERE {column} IN ({marks})", chunk))
        return found

    def blocking_failures(self, run_id: str) -> int:
        """This run's failures another run could change (retryable ones, local ones): a mirror then deletes
        nothing. A key's own failures (unsafe, reserved, archived) do not count: they come back every run."""
        self.flush()
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM objects WHERE run_id=? AND state='failed' AND"
                                    " (retryable=1 OR local=1)", (run_id,)).fetchone()[0]

    def record(self, outcomes: Iterable[Outcome], run_id: str) -> None:
        """Write outcomes now (returns when they are committed)."""
        self.add(outcomes, run_id)
        self.flush()

    def flush(self) -> None:
        """Commit everything queued so far; raises DiskFull (or what else failed) if the writes failed."""
        self._write_pending()
        if self._error is not None:
            raise self._error

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                if not self._pending and not self._closing:
                    self._wake.wait(FLUSH_EVERY)
                closing = self._closing
            self._write_pending()
            if closing:
                return

    def _write_pending(self) -> None:
        # Rows are taken and written under the database lock: commits keep the order outcomes came in,
        # and a reader after flush() sees everything queued before it.
        with self._lock:
            with self._wake:
                rows, self._pending = self._pending, []
                changes, self._changes = self._changes, []
                listed, self._listed = self._listed, []
            if rows or changes or listed:
                self._write(rows, changes, listed)

    def _write(self, rows: list[tuple], changes: list[tuple], listed: list[tuple]) -> None:
        try:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO changes (run_id, key, change, size) VALUES (?,?,?,?)",
                                     changes)
                self._db.executemany(
                    "INSERT INTO objects (key, size, etag, state, attempts, last_error, retryable, run_id, updated,"
                    " path, mtime_ns, local) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET"
                    " size=excluded.size, etag=excluded.etag, state=excluded.state, attempts=excluded.attempts,"
                    " last_error=excluded.last_error, retryable=excluded.retryable, run_id=excluded.run_id,"
                    " updated=excluded.updated, path=excluded.path, mtime_ns=excluded.mtime_ns, local=excluded.local",
                    rows)
                self._db.executemany("INSERT OR IGNORE INTO listed (path, folded) VALUES (?,?)", listed)
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            self._error = DiskFull(str(self.path.parent)) if "full" in str(exc) else exc
        except Exception as exc:  # noqa: BLE001 - raised to the run by the next flush()
            self._error = exc

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._writer.join()
        with self._lock:
            self._db.close()

    # -- reading ----------------------------------------------------------------------------------
    def done_entries(self, keys: list[str]) -> dict[str, Done]:
        """What an earlier run finished, of the given keys: listed size and etag, local mtime."""
        found: dict[str, Done] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, size, etag, mtime_ns FROM objects WHERE state='done' AND key IN ({marks})", chunk)
                found.update((k, Done(s, e, m)) for k, s, e, m in rows)
        return found

    def changes(self, run_id: str, chunk: int = 1000) -> Iterator[list[tuple[str, str, int]]]:
        """This run's change report in key order, a chunk at a time."""
        self.flush()
        after = None
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT key, change, size FROM changes WHERE run_id=? AND (? IS NULL OR key > ?)"
                    " ORDER BY key, change LIMIT ?", (run_id, after, after, chunk)).fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def forget_changes(self) -> None:
        """Once the report is written (its CSV holds them), the rows go: the table never grows."""
        self.flush()
        with self._lock:
            self._db.execute("DELETE FROM changes")

    def failed(self, run_id: str, retryable_only: bool = False, chunk: int = 1000, first: str = ""
               ) -> Iterator[list[FailedRow]]:
        """This run's failures in key order from `first` on, a chunk at a time (keyset paging keeps memory
        flat)."""
        self.flush()
        after, since = first, ">="
        extra = " AND retryable=1" if retryable_only else ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT key, size, etag, attempts, last_error, retryable, path FROM objects"
                    f" WHERE run_id=? AND state='failed'{extra} AND key {since} ? ORDER BY key LIMIT ?",
                    (run_id, after, chunk)).fetchall()
            since = ">"
            if not rows:
                return
            yield [FailedRow(k, s, e, a, err or "", bool(r), p) for k, s, e, a, err, r, p in rows]
            after = rows[-1][0]
