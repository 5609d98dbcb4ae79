"""Splitting one huge prefix into key-range shards, and merging what the shards report. Prefect-free."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from core.model import FAILED_CSV_NAME, Counts, tool_file
from core.report import CSV_HEADER, TABLE_ROWS


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
                     "bytes")})


def merge_failed_csvs(output: Path, shards: list[str]) -> tuple[Path | None, list[list]]:
    """Concatenate the shards' failure CSVs into <output>/.oss-failed.csv (or remove it: no failures)."""
    path, tmp = output / FAILED_CSV_NAME, output / (FAILED_CSV_NAME + ".tmp")
    first: list[list] = []
    count = 0
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_HEADER)
        for shard in shards:
            part = output / tool_file(FAILED_CSV_NAME, shard)
            if not part.exists():
                continue
            with open(part, newline="", encoding="utf-8") as f:
                for row in list(csv.reader(f))[1:]:
                    writer.writerow(row)
                    if count < TABLE_ROWS:
                        first.append([row[0], row[1], int(row[2])])
                    count += 1
        out.flush()
        os.fsync(out.fileno())
    if count:
        os.replace(tmp, path)
        return path, first
    tmp.unlink()
    path.unlink(missing_ok=True)
    return None, first
