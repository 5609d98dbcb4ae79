"""What a run tells its user: the failure CSV, the summary, the dry-run preview, the progress line."""
from __future__ import annotations

import csv
import heapq
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.batch import Tally
from tasks.keys import FAILED_CSV_NAME, RemoteObject
from tasks.manifest import Manifest
from tasks.workarea import Output

CSV_HEADER = ["key", "last_error", "retry_count"]
TABLE_ROWS = 1000


@dataclass
class Summary:
    listed: int
    filtered_out: int
    already_present: int
    downloaded: int
    failed: int
    restore_required: int
    bytes: int
    seconds: float
    objects_per_s: float
    mb_per_s: float
    failed_csv: str | None = None
    zip_file: str | None = None
    incomplete: str = ""  # why the run did not cover everything it should have (listing, disk full)
    notes: list[str] = field(default_factory=list)  # warnings worth a line (e.g. a manifest rebuilt)

    @classmethod
    def of(cls, tally: Tally, seconds: float, failed_csv: Path | None, incomplete: str = "",
           notes: list[str] | None = None) -> "Summary":
        seconds = max(seconds, 1e-6)
        return cls(tally.listed, tally.filtered_out, tally.already_present, tally.downloaded, tally.failed,
                   tally.restore_required, tally.bytes, round(seconds, 2),
                   round(tally.downloaded / seconds, 1), round(tally.bytes / seconds / 1e6, 2),
                   str(failed_csv) if failed_csv else None, incomplete=incomplete, notes=list(notes or ()))

    @property
    def ok(self) -> bool:
        """Every selected object is here: exit 0."""
        return not self.failed and not self.incomplete

    def rows(self) -> list[tuple[str, str]]:
        rows = [(name.replace("_", " "), str(value)) for name, value in asdict(self).items()
                if name not in ("failed_csv", "zip_file", "incomplete", "notes")]
        if self.incomplete:
            rows.append(("incomplete", self.incomplete))
        rows += [("note", note) for note in self.notes]
        return rows

    def text(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        lines = [f"  {name:<{width}}  {value}" for name, value in self.rows()]
        if self.failed_csv:
            lines.append(f"  failures listed in {self.failed_csv}")
        if self.zip_file:
            lines.append(f"  ZIP: {self.zip_file}")
        return "\n".join(["Summary:"] + lines)


def write_failed_csv(manifest: Manifest, run_id: str, out: Output, name: str = FAILED_CSV_NAME,
                     path_column: bool = False, extra_rows: list[list] = ()) -> tuple[Path | None, list[list]]:
    """Write this run's failures to <output>/.oss-failed.csv (atomically, in the output's work area), or
    remove a stale one. `path_column` adds the local path (items whose key is an id, like Feishu
    attachments); `extra_rows` are failures that are not objects (an incomplete listing).

    Returns the path (None when there were no failures) and the first TABLE_ROWS rows."""
    first: list[list] = []
    count = 0
    with out.replacing(name) as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER + ["path"] if path_column else CSV_HEADER)
        for line in extra_rows:
            writer.writerow(line + [""] if path_column else line)
            first.append(line)
            count += 1
        for rows in manifest.failed(run_id):
            for row in rows:
                line = [row.key, row.last_error, row.attempts]
                writer.writerow(line + [row.path] if path_column else line)
                if count < TABLE_ROWS:
                    first.append(line)
                count += 1
        if not count:
            f.discard()
    if count:
        return out.root / name, first
    out.remove_file(name)
    return None, first


@dataclass
class Preview:
    """Dry run: what would be downloaded."""
    count: int = 0
    total_bytes: int = 0
    filtered_out: int = 0
    first: list[tuple[str, int]] = field(default_factory=list)
    largest: list[tuple[int, str]] = field(default_factory=list)

    def add(self, tally: Tally, chosen: list[RemoteObject]) -> None:
        self.filtered_out += tally.filtered_out
        for obj in chosen:
            self.count += 1
            self.total_bytes += obj.size
            if len(self.first) < 20:
                self.first.append((obj.path or obj.key, obj.size))
            if len(self.largest) < 5:
                heapq.heappush(self.largest, (obj.size, obj.path or obj.key))
            elif obj.size > self.largest[0][0]:
                heapq.heapreplace(self.largest, (obj.size, obj.path or obj.key))

    def text(self) -> str:
        lines = [f"Preview: {self.count} objects, {human_bytes(self.total_bytes)}"
                 f" ({self.filtered_out} filtered out)"]
        lines += [f"  {human_bytes(size):>10}  {key}" for key, size in self.first]
        if self.count > len(self.first):
            lines.append(f"  ... and {self.count - len(self.first)} more")
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = "\n".join(f"| {md_cell(key)} | {size} |" for key, size in self.first)
        return (f"**{self.count} objects, {human_bytes(self.total_bytes)}** ({self.filtered_out} filtered out)\n\n"
                f"| key | size (bytes) |\n|---|---|\n{rows}\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows([CSV_HEADER] + rows)
    return buf.getvalue()
