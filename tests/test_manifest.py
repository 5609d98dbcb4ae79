"""The manifest: outcomes recorded in order within a second, failures paged, a damaged file rebuilt."""
import sqlite3
import time

import pytest

from core.errors import UsageError
from core.manifest import FLUSH_EVERY, Done, Manifest
from core.model import Outcome


def test_records_and_pages_failures_of_one_run(tmp_path):
    m = Manifest(tmp_path)
    m.record([Outcome(f"k{i:04d}", i, "e", 1, None if i % 3 else "boom", bool(i % 2)) for i in range(2500)], "run1")
    m.record([Outcome("old", 1, "e", 2, "old failure", True)], "run0")
    failed = [row for rows in m.failed("run1", chunk=100) for row in rows]
    assert [r.key for r in failed] == [f"k{i:04d}" for i in range(0, 2500, 3)]
    retryable = [row for rows in m.failed("run1", retryable_only=True) for row in rows]
    assert all(r.retryable for r in retryable) and len(retryable) == len([i for i in range(0, 2500, 3) if i % 2])
    done = m.done_entries([f"k{i:04d}" for i in range(10)] + ["missing"])
    assert done == {f"k{i:04d}": Done(i, "e", None) for i in range(10) if i % 3}
    m.close()


def test_a_later_outcome_replaces_the_earlier_one_in_the_order_they_came(tmp_path):
    m = Manifest(tmp_path)
    m.add([Outcome("a", 5, "e1", 1, "HTTP 503", True)], "r")
    m.add([Outcome("a", 5, "e1", 2, mtime_ns=123)], "r")
    assert list(m.failed("r")) == []          # failed() sees everything added before it
    assert m.done_entries(["a"]) == {"a": Done(5, "e1", 123)}
    m.close()
    assert Manifest(tmp_path).done_entries(["a"]) == {"a": Done(5, "e1", 123)}


def test_outcomes_reach_the_file_within_a_second_without_a_flush(tmp_path):
    m = Manifest(tmp_path)
    m.add([Outcome("k", 1, "e", 1)], "r")
    reader = sqlite3.connect(tmp_path / ".oss-manifest.sqlite")
    deadline = time.monotonic() + 10 * FLUSH_EVERY
    while not reader.execute("SELECT count(*) FROM objects").fetchone()[0]:
        assert time.monotonic() < deadline, "the writer thread never committed"
        time.sleep(0.05)
    reader.close()
    m.close()


def test_a_damaged_manifest_is_moved_aside_and_rebuilt(tmp_path):
    (tmp_path / ".oss-manifest.sqlite").write_bytes(b"this is not a database" * 100)
    m = Manifest(tmp_path)
    assert m.warning and "damaged" in m.warning and ".corrupt-" in m.warning
    aside = list(tmp_path.glob(".oss-manifest.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    m.record([Outcome("k", 1, "e", 1)], "r")
    assert m.done_entries(["k"]) == {"k": Done(1, "e", None)}
    m.close()


def test_a_manifest_written_before_local_mtimes_were_kept_is_upgraded(tmp_path):
    old = sqlite3.connect(tmp_path / ".oss-manifest.sqlite")
    old.executescript("""CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL, etag TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT, retryable INTEGER NOT NULL DEFAULT 0,
        run_id TEXT NOT NULL, updated REAL NOT NULL, path TEXT NOT NULL DEFAULT '');
        INSERT INTO objects VALUES ('k', 3, 'e', 'done', 1, NULL, 0, 'r0', 0, '');""")
    old.commit()
    old.close()
    m = Manifest(tmp_path)
    assert m.warning is None and m.done_entries(["k"]) == {"k": Done(3, "e", None)}
    m.close()


def test_a_symbolic_link_in_place_of_the_manifest_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere.sqlite"
    elsewhere.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".oss-manifest.sqlite").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="symbolic link"):
        Manifest(out)
    assert elsewhere.read_bytes() == b""


def test_a_full_disk_is_reported_by_the_next_flush(tmp_path):
    m = Manifest(tmp_path)
    m._db.execute("PRAGMA max_page_count=1")  # the database cannot grow: SQLite says "database or disk is full"
    m.add([Outcome(f"k{i}", 1, "e" * 200, 1) for i in range(200)], "r")
    from core.errors import DiskFull
    with pytest.raises(DiskFull, match="no space left"):
        m.flush()
    m.close()
