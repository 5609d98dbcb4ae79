"""What gets downloaded and where it lands: key → local path, the filter, unsafe and reserved names."""
from __future__ import annotations

import functools
import os
import re
from datetime import datetime
from pathlib import Path

from typing import TYPE_CHECKING

from core.errors import UnsafeKeyError

if TYPE_CHECKING:
    from core.model import RemoteObject

RESERVED_PREFIXES = (".oss-", ".ossdl")  # manifests and CSVs (also per shard), the work area .ossdl/
MAX_NAME_BYTES = 255


def prefix_folder(prefix: str) -> str:
    """The part of the prefix that is stripped from keys: up to and including its last '/'."""
    return prefix[: prefix.rfind("/") + 1]


def parse_suffixes(value: str | list[str] | None) -> tuple[str, ...]:
    """The --include-suffix filter: comma-separated plain suffixes (`.jpg`, `png`) and glob patterns
    (`*.jpg`, `photos/**/*.png`), lower-cased; ValueError naming a pattern that cannot be read."""
    items = value.split(",") if isinstance(value, str) else (value or [])
    out = []
    for item in items:
        item = item.strip().lower()
        if not item:
            continue
        if is_glob(item):
            _glob_regex(item)  # refuse a broken pattern now, not once per key
            out.append(item)
        else:
            out.append(item if item.startswith(".") else "." + item)
    return tuple(out)


def is_glob(item: str) -> bool:
    return any(c in item for c in "*?[")


def is_folder_marker(key: str) -> bool:
    return key.endswith("/")


def wanted(key: str, suffixes: tuple[str, ...]) -> bool:
    return not suffixes or _matcher(suffixes)(key.lower())


@functools.lru_cache(maxsize=64)
def _matcher(suffixes: tuple[str, ...]):
    plain = tuple(s for s in suffixes if not is_glob(s))
    globs = [_glob_regex(s) for s in suffixes if is_glob(s)]
    if not globs:
        return lambda key: key.endswith(plain)
    either = re.compile("|".join(f"(?:{g})" for g in globs))
    return lambda key: key.endswith(plain) or either.search(key) is not None


def _glob_regex(pattern: str) -> str:
    """A glob as a regex matching the end of a key at a '/' boundary (as rclone does), so `*.jpg` means
    any .jpg and `photos/**/*.png` any .png below any folder named photos: `*` and `?` stay within one
    path segment, `**` crosses them, `**/` may also match no folder at all, `[...]` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "^", "]") else i + 1)
            if end < 0:
                raise ValueError(f"unclosed '[' in pattern {pattern!r}")
            body = pattern[i + 1:end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "(?:^|/)" + "".join(out) + "$"


def relative_path(key: str, strip: str) -> str:
    """The object's path below the output folder, or UnsafeKeyError saying why there is none."""
    rel = key[len(strip):] if key.startswith(strip) else key
    if not rel:
        raise UnsafeKeyError("unsafe key: empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise UnsafeKeyError("unsafe key: control character")
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if len(seps) > 1 and any(s in rel for s in seps - {"/"}):
        raise UnsafeKeyError("unsafe key: path separator inside a name")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeKeyError(f"unsafe key: {repr(part) if part else 'empty'} path segment")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafeKeyError(f"name too long: a path segment exceeds {MAX_NAME_BYTES} bytes")
        if part.startswith(RESERVED_PREFIXES):
            # At every depth: the tool's files and work area must never be a key's landing place.
            raise UnsafeKeyError(f"reserved name: {part} (names starting with .oss- or .ossdl are the tool's)")
    return rel


def target(obj: RemoteObject, strip: str) -> str:
    """An object's path below the output; a source-chosen `path` is checked by the same rules as a key."""
    return relative_path(obj.path or obj.key, "" if obj.path else strip)


def local_path(output: Path, key: str, strip: str, path: str = "") -> Path:
    """Where an object lands; a source-chosen `path` is checked by the same rules as a key."""
    return output.joinpath(*relative_path(path or key, "" if path else strip).split("/"))


def listed_seconds(modified: str | float) -> int | None:
    """The listing's LastModified in whole seconds since the epoch (S3: ISO 8601 text; OSS: a number)."""
    if isinstance(modified, (int, float)):
        return int(modified)
    if not modified:
        return None
    try:
        return int(datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def prepare_output(output: str | Path) -> Path:
    """Create the output folder and check it is a writable folder, or raise UsageError. (Opening it for
    a run — tasks/workarea.Output — makes the work area in it, which proves it for real.)"""
    from core.errors import UsageError
    path = Path(output).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UsageError(f"output folder {path} is not writable: {exc.strerror or exc}") from None
    return path
