"""Splitting one huge prefix into key-range shards, and merging what the shards report. Prefect-free."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from core.model import CHANGES_CSV_NAME, FAILED_CSV_NAME, Counts, tool_file
from core.report import CHANGES_HEADER, CSV_HEADER, TABLE_ROWS


def split(folders: list[str], shards: int) -> list[tuple[str, str]]:
    """Key ranges (start_after, end_before) covering the whole prefix, cut at folder boundaries.

    A boundary is a common prefix ending in '/': the only key equal to it is a folder marker, which the
    download skips anyway, so an exclusive start_after loses nothing."""
    shards = max(1, min(shards, len(folders)))
    cuts = [folders[round(i * len(folders) / shards)] for i in range(1, shards)]
    bounds = [""] + cuts + [""]
    return list(zip(bounds[:-1], bounds[1:]))


def shard_names(count: int) -> list[str]:
    return [f"s{i}" for i in range(count)]


def counts_from_rows(rows: list[dict]) -> Counts:
    """A shard's counts from its summary artifact (rows of metric/value)."""
    values = {r["metric"].replace(" ", "_"): r["value"] for r in rows}
    return Counts(**{name: int(values.get(name, 0)) for name in
                    ("listed", "filtered_out", "already_present", "downloaded", "failed", "restore_required",
                     "bytes", "new", "changed_in_store", "changed_locally", "deleted")})


def merge_failed_csvs(output: Path, shards: list[str]) -> tuple[Path | None, list[list]]:
    """The shards' failure CSVs as one <output>/.oss-failed.csv (or none: no failures)."""
    return merge_csvs(output, shards, FAILED_CSV_NAME, CSV_HEADER)


def merge_changes_csvs(output: Path, shards: list[str], extra_rows: list = ()) -> tuple[Path | None, list[list]]:
    """The shards' change reports as one <output>/.oss-changes.csv (or none: nothing changed), and the
    parent's own rows (its deletions)."""
    return merge_csvs(output, shards, CHANGES_CSV_NAME, CHANGES_HEADER, extra_rows)


def merge_csvs(output: Path, shards: list[str], name: str, header: list[str], extra_rows: list = ()
               ) -> tuple[Path | None, list[list]]:
    """Concatenate the shards' CSVs called `name` into <output>/`name` (or remove it: all empty). No symbolic
    link planted in the output is followed: not at the temp name, the shards' CSVs or the result. Returns the
    path and the first TABLE_ROWS rows (numbers as numbers)."""
    path, tmp = output / name, output / (name + ".tmp")
    first: list[list] = []
    count = 0
    tmp.unlink(missing_ok=True)
    with _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "w") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for shard in shards:
            try:
                part = _open_nofollow(output / tool_file(name, shard), os.O_RDONLY, "r")
            except FileNotFoundError:
                continue
            with part:
                for row in list(csv.reader(part))[1:]:
                    writer.writerow(row)
                    if count < TABLE_ROWS:
                        first.append([*row[:-1], int(row[-1])])
                    count += 1
        for row in extra_rows:
            writer.writerow(row)
            if count < TABLE_ROWS:
                first.append(list(row))
            count += 1
        out.flush()
        os.fsync(out.fileno())
    if count:
        os.replace(tmp, path)  # replaces a link at the final name, never writes through it
        return path, first
    tmp.unlink()
    path.unlink(missing_ok=True)
    return None, first


def _open_nofollow(path: Path, flags: int, mode: str):
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0), 0o644)
    return os.fdopen(fd, mode, newline="", encoding="utf-8")
