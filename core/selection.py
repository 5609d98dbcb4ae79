"""Which listed objects a run takes (the filter) and which of them are already here (the rerun rule)."""
from __future__ import annotations

import hashlib

from core.engine.verify import is_md5_etag
from core.errors import DownloadError
from core.model import UNKNOWN_SIZE, Counts, Outcome, Plan, RemoteObject
from core.paths import is_folder_marker, listed_seconds
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


def not_present(manifest, out: Output, todo: list[Item]) -> tuple[list[Item], list[Outcome]]:
    """Split objects into those to fetch and those already here. Here means: an earlier run recorded the
    same listed version done and the local file still has the size and modification time it was left
    with (rclone's size + mtime rule); or — no record (a lost manifest, a run killed before it wrote) —
    the file has the listed size and either the store's time (we set it on every file) or its MD5.
    Returns (to fetch, outcomes recording what was recognised without a record)."""
    done = manifest.done_entries([obj.key for obj, _ in todo])
    fetch, adopted = [], []
    for obj, rel in todo:
        row = done.get(obj.key)
        st = out.stat(rel)
        size = row.size if obj.size == UNKNOWN_SIZE and row is not None else obj.size
        if st is None or st.st_size != size:
            fetch.append((obj, rel))
        elif row is not None and (row.size, row.etag) == (size, obj.etag):
            if row.mtime_ns is None or row.mtime_ns == st.st_mtime_ns:
                continue
            fetch.append((obj, rel))  # changed here since it was downloaded
        elif _same_bytes(out, rel, obj, st):
            adopted.append(Outcome(obj.key, obj.size, obj.etag, 0, path=obj.path, mtime_ns=st.st_mtime_ns))
        else:
            fetch.append((obj, rel))
    return fetch, adopted


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
