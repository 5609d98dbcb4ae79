"""What a run tells its user: the failure CSV, the summary, the dry-run preview, the progress line."""
from __future__ import annotations

import csv
import heapq
import io
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from core.model import CHANGES_CSV_NAME, FAILED_CSV_NAME, Counts, Plan, RemoteObject
from core.selection import listed_paths, not_present, select
from core.errors import DownloadError, NothingSelected
from core.paths import target
from core.manifest import Manifest
from core.workarea import Output

CSV_HEADER = ["key", "last_error", "retry_count"]
CHANGES_HEADER = ["key", "change", "size"]
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
    new: int = 0                # the change report: see Counts
    changed_in_store: int = 0
    changed_locally: int = 0
    unchanged: int = 0
    deleted: int = 0
    changes_csv: str | None = None
    first_changes: list = field(default_factory=list, repr=False)  # for an artifact: the CSV's first rows

    @classmethod
    def of(cls, tally: Counts, seconds: float, failed_csv: Path | None, incomplete: str = "",
           notes: list[str] | None = None, changes_csv: Path | None = None,
           first_changes: list | None = None) -> "Summary":
        seconds = max(seconds, 1e-6)
        return cls(tally.listed, tally.filtered_out, tally.already_present, tally.downloaded, tally.failed,
                   tally.restore_required, tally.bytes, round(seconds, 2),
                   round(tally.downloaded / seconds, 1), round(tally.bytes / seconds / 1e6, 2),
                   str(failed_csv) if failed_csv else None, incomplete=incomplete, notes=list(notes or ()),
                   new=tally.new, changed_in_store=tally.changed_in_store, changed_locally=tally.changed_locally,
                   unchanged=tally.already_present, deleted=tally.deleted,
                   changes_csv=str(changes_csv) if changes_csv else None, first_changes=list(first_changes or ()))

    @property
    def ok(self) -> bool:
        """Every selected object is here: exit 0."""
        return not self.failed and not self.incomplete

    def rows(self) -> list[tuple[str, str]]:
        rows = [(name.replace("_", " "), str(value)) for name, value in asdict(self).items()
                if name not in ("failed_csv", "zip_file", "incomplete", "notes", "changes_csv", "first_changes")]
        if self.incomplete:
            rows.append(("incomplete", self.incomplete))
        rows += [("note", note) for note in self.notes]
        return rows

    def text(self, seconds: float | None = None, active_seconds: float | None = None) -> str:
        """For people, in the progress display's units. `seconds`: the whole command's wall time (default: the
        flow's); `active_seconds`: from the first byte to the last, for the speed (default: `seconds`)."""
        seconds = self.seconds if seconds is None else seconds
        active = active_seconds or seconds
        changes = [(name, str(value)) for name, value in (
            ("new", self.new), ("changed in store", self.changed_in_store), ("changed locally", self.changed_locally),
            ("unchanged", self.unchanged), ("deleted", self.deleted)) if value]
        rows = [(name, value) for name, value in self.rows()[:6]] + changes + [
            ("size", human_bytes(self.bytes)),
            ("time", human_duration(seconds)),
            ("speed", f"{human_bytes(self.bytes / active)}/s, {self.downloaded / active:.1f} objects/s"
             if self.downloaded and active > 0 else "-"),
        ] + ([("incomplete", self.incomplete)] if self.incomplete else []) + [("note", n) for n in self.notes]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.failed_csv:
            lines.append(f"  failures listed in {self.failed_csv}")
        if self.changes_csv:
            lines.append(f"  changes listed in {self.changes_csv}")
        if self.zip_file:
            lines.append(f"  ZIP: {self.zip_file}")
        return "\n".join(["Summary:"] + lines)


def write_changes_csv(manifest: Manifest, run_id: str, out: Output, name: str = CHANGES_CSV_NAME
                      ) -> tuple[Path | None, list[list]]:
    """This run's change report to <output>/.oss-changes.csv (key,change,size), atomically like the failure
    CSV, or a stale one removed when nothing changed. Returns its path (None) and its first TABLE_ROWS rows."""
    first: list[list] = []
    count = 0
    with out.replacing(name) as f:
        writer = csv.writer(f)
        writer.writerow(CHANGES_HEADER)
        for rows in manifest.changes(run_id):
            writer.writerows(rows)
            first += [list(r) for r in rows[:TABLE_ROWS - len(first)]]
            count += len(rows)
        if not count:
            f.discard()
    if count:
        manifest.forget_changes()
        return out.root / name, first
    out.remove_file(name)
    return None, first


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
    """What a run would download: the dry run's result and the interactive preview."""
    count: int = 0
    total_bytes: int = 0
    filtered_out: int = 0
    first: list[tuple[str, int]] = field(default_factory=list)
    largest: list[tuple[int, str]] = field(default_factory=list)
    present: int = 0        # of `count`, already downloaded unchanged by an earlier run
    present_bytes: int = 0
    listed: set[str] = field(default_factory=set, repr=False)  # a mirror's: the local paths listed
    deletion: object = None  # a mirror's: what it would delete (core/mirror.py Deletion)

    @property
    def to_fetch(self) -> int:
        return self.count - self.present

    @property
    def bytes_to_fetch(self) -> int:
        return self.total_bytes - self.present_bytes

    def add(self, tally: Counts, chosen: list[RemoteObject]) -> None:
        self.filtered_out += tally.filtered_out
        for obj in chosen:
            self.count += 1
            self.total_bytes += max(obj.size, 0)  # a source may not know a size (UNKNOWN_SIZE)
            if len(self.first) < 20:
                self.first.append((obj.path or obj.key, obj.size))
            if len(self.largest) < 5:
                heapq.heappush(self.largest, (obj.size, obj.path or obj.key))
            elif obj.size > self.largest[0][0]:
                heapq.heapreplace(self.largest, (obj.size, obj.path or obj.key))

    def add_page(self, objects: list[RemoteObject], plan: Plan, manifest: Manifest | None,
                 out: Output | None) -> None:
        """One listing page: what the plan selects, and how much of it is already here (an earlier run's
        record, or the file itself: the same rule as the download's). `out` None: no output folder yet."""
        tally, chosen = select(objects, plan)
        self.add(tally, chosen)
        if out is None:
            return
        if plan.delete:
            self.listed.update(listed_paths(objects, plan))
        todo = []
        for obj in chosen:
            try:
                todo.append((obj, target(obj, plan.strip)))
            except DownloadError:
                pass  # an unsafe key is never present; the run reports it
        fetch, _, _ = not_present(manifest or _NoRecords(), out, todo)
        fresh = {obj.key for obj, _ in fetch}
        for obj, _ in todo:
            if obj.key not in fresh:
                self.present += 1
                self.present_bytes += max(obj.size, 0)

    def text(self) -> str:
        lines = [f"Preview: {objects(self.count)}, {human_bytes(self.total_bytes)} ({self.filtered_out} filtered out)",
                 f"  already present  {objects(self.present)}, {human_bytes(self.present_bytes)}"
                 " (from an earlier run)",
                 f"  to download      {objects(self.to_fetch)}, {human_bytes(self.bytes_to_fetch)}"]
        if self.largest:
            lines.append("Largest:")
            lines += [f"  {human_bytes(size):>10}  {key}" for size, key in sorted(self.largest, reverse=True)]
        if self.first:
            lines.append(f"First {len(self.first)} keys:")
            lines += [f"  {human_bytes(size):>10}  {key}" for key, size in self.first]
        if self.count > len(self.first):
            lines.append(f"  ... and {self.count - len(self.first)} more")
        if self.deletion is not None:
            lines.append(self.deletion.text(dry=True))
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = "\n".join(f"| {md_cell(key)} | {size} |" for key, size in self.first)
        deletion = f"\n```\n{self.deletion.text(dry=True)}\n```\n" if self.deletion is not None else ""
        return (f"**{self.count} objects, {human_bytes(self.total_bytes)}** ({self.filtered_out} filtered out);"
                f" {self.present} already present, {self.to_fetch} to download"
                f" ({human_bytes(self.bytes_to_fetch)})\n\n"
                f"| key | size (bytes) |\n|---|---|\n{rows}\n{deletion}")


class _NoRecords:
    """No earlier run's manifest: nothing recorded (files already here are still recognised)."""

    @staticmethod
    def done_entries(keys):
        return {}


@contextmanager
def earlier_run(plan: Plan) -> Iterator[tuple[Manifest | None, Output | None]]:
    """What an earlier run left in the plan's output folder, opened only to look: its manifest (None when
    there is none) and the folder (None when it does not exist). Creates nothing."""
    if not plan.output.is_dir():
        yield None, None
        return
    out = Output(plan.output, read_only=True)
    manifest = Manifest(plan.output, plan.manifest_name) if (plan.output / plan.manifest_name).is_file() else None
    try:
        yield manifest, out
    finally:
        if manifest is not None:
            manifest.close()
        out.close()


def nothing_selected(result: "Summary | Preview", plan: Plan, where: str, hint: str = "") -> str | None:
    """The warning for a run that selected nothing, naming what was listed (`where`, e.g. s3://bucket/prefix)
    and saying why (`hint`: a suggestion when nothing was listed); None when something was selected. With the
    plan's fail_if_empty, NothingSelected instead of the warning: the one place of that rule."""
    if getattr(result, "incomplete", ""):
        return None  # not empty: the listing broke off, and the run says so
    if isinstance(result, Preview):
        selected, listed = result.count, result.count + result.filtered_out
    else:
        selected, listed = result.listed - result.filtered_out, result.listed
    if selected:
        return None
    if listed:
        why = f"nothing to download: all {listed} objects under {where} are filtered out by {plan.filter.describe()}"
    else:
        why = f"nothing to download: no objects under {where}{f' ({hint})' if hint else ''}"
    if plan.fail_if_empty:
        raise NothingSelected(why)
    return why


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def objects(n: int) -> str:
    return f"{n} object" if n == 1 else f"{n} objects"


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows([CSV_HEADER] + rows)
    return buf.getvalue()
