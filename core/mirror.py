"""A mirror's deletions (--delete, as rclone sync): local files below the output that no listed key maps to are
removed (or moved to --backup-dir), within what the source lists (its prefix, a shard's key range) and the
filters — a local file is filtered with its own path, size and modification time, so one a filter excludes is
never deleted. Never: the tool's own files, symbolic links (not followed, not removed), anything while the run
could not see the whole listing or failed for a reason another run could change (core/run.py decides), more
than --max-delete files. On a case-insensitive file system a listed path matches a local one whatever the case.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core.errors import LocalPathError, UsageError
from core.model import DELETED, Plan
from core.paths import RESERVED_PREFIXES
from core.workarea import Output, _at

FIRST = 20  # what a preview and the summary show of them
CHUNK = 500
FORCE_CASE_INSENSITIVE = False  # tests: the branch of macOS and Windows on Linux


@dataclass
class Deletion:
    """What a mirror deleted (or would delete), and why it did not when it did not."""
    count: int = 0
    bytes: int = 0
    first: list[tuple[str, int]] = field(default_factory=list)  # (path below the output, size)
    skipped: str = ""   # why nothing was deleted although --delete was given
    refused: str = ""   # more than --max-delete: nothing deleted; or some could not be: the run fails (exit 1)
    rows: list = field(default_factory=list)  # (key, DELETED, size) when no manifest records them

    def text(self, dry: bool = False) -> str:
        from core.report import human_bytes, objects
        lines = [f"{'would delete' if dry else 'deleted'}  {objects(self.count)}, {human_bytes(self.bytes)}"
                 " (local files the store no longer lists)"]
        lines += [f"  {human_bytes(size):>10}  {rel}" for rel, size in self.first]
        if self.count > len(self.first):
            lines.append(f"  ... and {self.count - len(self.first)} more")
        return "\n".join(lines)


def check_backup_dir(backup_dir: Path | None, output: Path) -> None:
    """--backup-dir must lie outside the output (and the output outside it): UsageError."""
    if backup_dir is None:
        return
    backup, out = Path(backup_dir).expanduser().resolve(), Path(output).expanduser().resolve()
    if backup == out or out in backup.parents or backup in out.parents:
        raise UsageError(f"--backup-dir {backup} must be outside the output folder {out} (and not hold it)")


def case_insensitive(out: Output) -> bool:
    """Whether the output's file system ignores case (macOS, Windows): a name in it answers to another case.
    With no name to try (an empty output), what the system usually does."""
    if FORCE_CASE_INSENSITIVE:
        return True
    try:
        names = os.listdir(out.root)
    except OSError:
        names = []
    for name in names:
        swapped = name.swapcase()
        if swapped != name and swapped not in names:
            return os.path.lexists(out.root / swapped)
    return sys.platform in ("darwin", "win32")


def local_files(out: Output, errors: list[str]) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file below the output, as (path below it, its stat), without following a symbolic link,
    without the tool's own files and folders (at every depth). A folder that cannot be read is named in
    `errors` (what it holds is not known: a mirror then deletes nothing)."""
    stack = [""]
    while stack:
        folder = stack.pop()
        try:
            with out.folder(folder, create=False) as handle, os.scandir(handle) as entries:
                found = [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries
                         if not entry.name.startswith(RESERVED_PREFIXES)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, LocalPathError) as exc:
            errors.append(f"{folder or '.'}: {getattr(exc, 'strerror', None) or exc}")
            continue
        for name, st in sorted(found, reverse=True):
            rel = f"{folder}/{name}" if folder else name
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
            elif stat.S_ISREG(st.st_mode):
                yield rel, st


def folded(path: str) -> str:
    """A path as a case-insensitive file system compares it (macOS's also decomposes accents: NFC first)."""
    return unicodedata.normalize("NFC", path).casefold()


def extraneous(out: Output, plan: Plan, covers: Callable[[str], bool],
               listed: Callable[[list[str], bool], set[str]], errors: list[str]) -> Iterator[tuple[str, int]]:
    """The local files a mirror deletes: within what the source lists (`covers(key)`), taken by the filter,
    and not among the paths `listed(paths, folded)` says the listing maps to (folded paths on a file system
    that ignores case). Folders that cannot be read are named in `errors`."""
    fold = case_insensitive(out)
    batch: list[tuple[str, int]] = []

    def flush():
        keys = [folded(rel) if fold else rel for rel, _ in batch]
        known = listed(keys, fold)
        for (rel, size), key in zip(batch, keys):
            if key not in known:
                yield rel, size
        batch.clear()
    for rel, st in local_files(out, errors):
        key = plan.strip + rel
        if covers(key) and plan.filter.wants(key, st.st_size, st.st_mtime):
            batch.append((rel, st.st_size))
            if len(batch) >= CHUNK:
                yield from flush()
    if batch:
        yield from flush()


def delete(out: Output, plan: Plan, doomed: list[tuple[str, int]], record: Callable[[list], None]) -> Deletion:
    """Remove (or move to plan.backup_dir) the files, then the folders that are left empty; `record(rows)`
    hears of each one as a change (key, DELETED, size). A file that cannot be removed stays, and the run says so
    (refused: it fails)."""
    result = Deletion()
    emptied: set[str] = set()
    errors: list[str] = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for rel, size in doomed:
        folder, _, name = rel.rpartition("/")
        try:
            with out.folder(folder, create=False) as handle:
                path, at = _at(handle, name)
                if plan.backup_dir is not None:
                    move_out(path, at, Path(plan.backup_dir) / rel, stamp)
                else:
                    os.unlink(path, dir_fd=at)
        except FileNotFoundError:
            continue
        except (OSError, LocalPathError) as exc:
            errors.append(f"{rel}: {getattr(exc, 'strerror', None) or exc}")
            continue
        result.count += 1
        result.bytes += size
        if len(result.first) < FIRST:
            result.first.append((rel, size))
        record([(plan.strip + rel, DELETED, size)])
        while folder:
            emptied.add(folder)
            folder = folder.rpartition("/")[0]
    for folder in sorted(emptied, key=lambda f: -f.count("/")):  # the deepest first
        parent, _, name = folder.rpartition("/")
        out.forget(folder)
        with contextlib.suppress(OSError), out.folder(parent, create=False) as handle:
            path, at = _at(handle, name)
            os.rmdir(path, dir_fd=at)  # only when empty
    if errors:
        result.refused = _not_all(errors, "could not be deleted")
    return result


def _not_all(errors: list[str], what: str) -> str:
    return f"deletion incomplete: {len(errors)} file(s) or folder(s) {what} (first: {errors[0]})"


def _checked(plan: Plan, doomed: list[tuple[str, int]], errors: list[str]) -> Deletion | None:
    """What stops a mirror once it knows what it would delete: a folder it could not read, more than
    --max-delete."""
    if errors:  # what an unreadable folder holds is not known: nothing is deleted, and the run says so
        return Deletion(refused=f"{_not_all(errors, 'could not be read')}; nothing was deleted"[:400])
    if plan.max_delete is not None and len(doomed) > plan.max_delete:
        return Deletion(len(doomed), sum(size for _, size in doomed), doomed[:FIRST],
                        refused=f"not deleting: {len(doomed)} files to delete, more than --max-delete"
                                f" {plan.max_delete}; nothing was deleted")
    return None


def blocked(listed: int, selected: int, plan: Plan) -> str:
    """Why a mirror must not delete although its listing and downloads went well: it listed nothing (a
    mistyped prefix, an emptied bucket, the wrong account would wipe the output), or nothing was selected
    where that is a failure (--fail-if-empty)."""
    if not listed:
        return "deletion skipped: nothing was listed (a mirror of nothing would delete everything here)"
    if plan.fail_if_empty and not selected:
        return "deletion skipped: nothing was selected (--fail-if-empty)"
    return ""


def move_out(path: str, at: int | None, target: Path, stamp: str) -> None:
    """Keep the file below the backup folder at the same path; a name already there gets the time added."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        stem, dot, ext = target.name.rpartition(".")
        target = target.with_name(f"{stem}.{stamp}.{ext}" if dot and stem else f"{target.name}.{stamp}")
    try:
        os.rename(path, target, src_dir_fd=at)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        src = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=at)
        with os.fdopen(src, "rb") as source, open(target, "xb") as copy:  # another file system: copy, then remove
            shutil.copyfileobj(source, copy, 1 << 20)
            st = os.fstat(source.fileno())
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.unlink(path, dir_fd=at)


def mirror(run, incomplete: str, listed: int, selected: int) -> Deletion:
    """A run's deletions, once it has listed and downloaded: nothing when the listing was incomplete or empty,
    the run was stopped or a download failed for a reason another run could change; nothing, and the run
    fails, when more than --max-delete would go."""
    plan = run.plan
    why = "the listing was incomplete" if incomplete else f"the run stopped ({run.halt.reason})" \
        if run.halt.reason else ""
    if not why and (blocking := run.manifest.blocking_failures(plan.run_id)):
        why = f"{blocking} download(s) failed for a reason another run could change (see the failure CSV)"
    if why:
        return Deletion(skipped=f"deletion skipped: {why}")
    if why := blocked(listed, selected, plan):
        return Deletion(skipped=why)
    errors: list[str] = []
    doomed = list(extraneous(run.out, plan, run.source.covers, run.manifest.listed, errors))
    return _checked(plan, doomed, errors) or \
        delete(run.out, plan, doomed, lambda rows: run.manifest.add_changes(rows, plan.run_id))


def mirror_shards(plan: Plan, shards: list[tuple[str, str, Callable[[str], bool]]], owner: dict, listed: int,
                  selected: int) -> Deletion:
    """A sharded run's deletions, by its parent once every shard has run: each shard (name, run id, what its
    listing covers) recorded the paths it listed in its own manifest, and deletes only within its own range;
    nothing at all when any shard failed for a reason another run could change."""
    from core.manifest import Manifest
    from core.model import MANIFEST_NAME, tool_file
    if why := blocked(listed, selected, plan):
        return Deletion(skipped=why)
    with Output(plan.output, owner=owner) as out:  # the whole output: no shard runs any more
        manifests = {name: Manifest(plan.output, tool_file(MANIFEST_NAME, name)) for name, _, _ in shards}
        try:
            blocking = sum(manifests[name].blocking_failures(run_id) for name, run_id, _ in shards)
            if blocking:
                return Deletion(skipped=f"deletion skipped: {blocking} download(s) failed for a reason another"
                                        " run could change (see the failure CSV)")
            errors: list[str] = []
            doomed = [found for name, _, covers in shards
                      for found in extraneous(out, plan, covers, manifests[name].listed, errors)]
            stop = _checked(plan, doomed, errors)
            if stop:
                return stop
            rows: list = []
            result = delete(out, plan, doomed, rows.extend)
            result.rows = rows
            return result
        finally:
            for manifest in manifests.values():
                manifest.close()
