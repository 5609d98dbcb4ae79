"""Which listed objects a run takes (the filter) and which of them are already here (the rerun rule)."""
from __future__ import annotations

import hashlib

from core.engine.verify import is_md5_etag
from core.errors import DownloadError
from core.model import CHANGED_IN_STORE, CHANGED_LOCALLY, NEW, UNKNOWN_SIZE, Counts, Outcome, Plan, RemoteObject
from core.paths import is_folder_marker, listed_seconds, target
from core.workarea import Output

Item = tuple[RemoteObject, str]  # an object and its path below the output


def select(objects: list[RemoteObject], plan: Plan) -> tuple[Counts, list[RemoteObject]]:
    """Drop folder markers and filtered-out keys; what is left is this run's selection."""
    counts = Counts()
    chosen = []
    for obj in objects:
        if is_folder_marker(obj.key):
            continue
        counts.listed += 1
        if plan.filter.wants(obj.key, obj.size, obj.modified):
            chosen.append(obj)
        else:
            counts.filtered_out += 1
    return counts, chosen


Change = tuple[str, str, int]  # key, what changed (core/model.py NEW, …), listed size


def listed_paths(objects: list[RemoteObject], plan: Plan) -> list[str]:
    """The local paths a listing page maps to (its keys that can be files), filtered out or not."""
    found = []
    for obj in objects:
        if not is_folder_marker(obj.key):
            try:
                found.append(target(obj, plan.strip))
            except DownloadError:
                pass  # an unsafe key has no local path to keep
    return found


def not_present(manifest, out: Output, todo: list[Item]) -> tuple[list[Item], list[Outcome], list[Change]]:
    """Split objects into those to fetch and those already here. Here means: an earlier run recorded the
    same listed version done and the local file still has the size and modification time it was left
    with (rclone's size + mtime rule); or — no record (a lost manifest, a run killed before it wrote) —
    the file has the listed size and either the store's time (we set it on every file) or its MD5.
    Returns (to fetch, outcomes recording what was recognised without a record, and why each one to fetch
    is fetched: new, changed in the store, changed locally)."""
    done = manifest.done_entries([obj.key for obj, _ in todo])
    fetch, adopted, changes = [], [], []
    for obj, rel in todo:
        row = done.get(obj.key)
        st = out.stat(rel)
        size = row.size if obj.size == UNKNOWN_SIZE and row is not None else obj.size
        same_version = row is not None and (row.size, row.etag) == (size, obj.etag)
        if st is not None and st.st_size == size:
            if same_version:
                if row.mtime_ns is None or row.mtime_ns == st.st_mtime_ns:
                    continue
                change = CHANGED_LOCALLY  # changed here since it was downloaded
            elif _same_bytes(out, rel, obj, st):
                adopted.append(Outcome(obj.key, obj.size, obj.etag, 0, path=obj.path, mtime_ns=st.st_mtime_ns))
                continue
            else:  # another version: the store's (we recorded an older one), or one put here without a record
                change = CHANGED_IN_STORE if row is not None else CHANGED_LOCALLY
        elif row is not None and not same_version:
            change = CHANGED_IN_STORE
        else:  # missing here (new, or gone since it was downloaded), or another size than it was left with
            change = NEW if st is None and row is None else CHANGED_LOCALLY
        fetch.append((obj, rel))
        changes.append((obj.key, change, obj.size))
    return fetch, adopted, changes


def _same_bytes(out: Output, rel: str, obj: RemoteObject, st) -> bool:
    seconds = listed_seconds(obj.modified)
    if seconds is not None and st.st_mtime_ns // 1_000_000_000 == seconds:
        return True
    if not is_md5_etag(obj.etag):
        return False
    md5 = hashlib.md5()
    try:
        with out.open_final(rel) as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
    except (OSError, DownloadError):
        return False
    return md5.hexdigest() == obj.etag.lower()
