"""Which objects a run takes, in rclone's words: --include-suffix / --exclude patterns (core/paths.py's grammar),
--min-size / --max-size, --min-age / --max-age on the store's Last-Modified. The same filter decides for a local
file the store does not list (a mirror's deletion), with that file's own path, size and modification time."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from core.paths import listed_seconds, wanted

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "": 1024, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|M|y)?\s*$")
_AGE_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "M": 30 * 86400,
              "y": 365 * 86400}


def parse_size(text: str, name: str) -> int:
    """rclone's sizes: 100 (KiB, as rclone), 100B, 512k, 1M, 2G (binary units); ValueError naming the flag."""
    found = _SIZE.match(str(text))
    if not found:
        raise ValueError(f"{name + ': ' if name else ''}not a size: {text!r} (e.g. 512k, 1M, 2G; a bare number is"
                         " KiB, as rclone)")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def parse_age(text: str, name: str, now: float) -> float:
    """rclone's ages as the point in time they name: a duration back from `now` (7d, 12h, 30m, 1.5w) or a
    date (2024-01-31, 2024-01-31T08:00:00, local time unless it says otherwise); epoch seconds."""
    found = _AGE.match(str(text))
    if found:
        return now - float(found.group(1)) * _AGE_UNITS[found.group(2)]
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ValueError(f"{name + ': ' if name else ''}not an age: {text!r} (e.g. 7d, 12h, or a date 2024-01-31)") \
            from None
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()


@dataclass(frozen=True)
class Filter:
    """`include`/`exclude`: parsed patterns (core/paths.py parse_suffixes); sizes in bytes; `newer_than` /
    `older_than`: epoch seconds the Last-Modified must be after (--max-age) / before (--min-age)."""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    newer_than: float | None = None
    older_than: float | None = None

    def __bool__(self) -> bool:
        return any((self.include, self.exclude, self.min_size is not None, self.max_size is not None,
                    self.newer_than is not None, self.older_than is not None))

    def wants(self, key: str, size: int, modified: str | float | None) -> bool:
        """Whether a key (or a local file's key-equivalent path) with this size and time is taken. A size or
        time the source does not give is not filtered on."""
        if not wanted(key, self.include) or (self.exclude and wanted(key, self.exclude)):
            return False
        if size >= 0 and (self.min_size is not None and size < self.min_size
                          or self.max_size is not None and size > self.max_size):
            return False
        if self.newer_than is not None or self.older_than is not None:
            seconds = listed_seconds(modified) if modified not in (None, "") else None
            if seconds is not None and (self.newer_than is not None and seconds < self.newer_than
                                        or self.older_than is not None and seconds > self.older_than):
                return False
        return True

    def describe(self) -> str:
        """As the flags that made it, for a warning that everything was filtered out."""
        parts = []
        if self.include:
            parts.append(f"--include-suffix {','.join(self.include)}")
        if self.exclude:
            parts.append(f"--exclude {','.join(self.exclude)}")
        for flag, value in (("--min-size", self.min_size), ("--max-size", self.max_size)):
            if value is not None:
                parts.append(f"{flag} {value} B")
        for flag, value in (("--max-age", self.newer_than), ("--min-age", self.older_than)):
            if value is not None:
                parts.append(f"{flag} {datetime.fromtimestamp(value, timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
        return " ".join(parts)


def filter_of(include, exclude, min_size: str | None, max_size: str | None, min_age: str | None,
              max_age: str | None, now: float | None = None) -> Filter:
    """The filter of a run's flags (ages against `now`: the run's start, so all its batches agree)."""
    from core.paths import parse_suffixes
    now = time.time() if now is None else now
    return Filter(parse_suffixes(include), parse_suffixes(exclude),
                  parse_size(min_size, "--min-size") if min_size else None,
                  parse_size(max_size, "--max-size") if max_size else None,
                  parse_age(max_age, "--max-age", now) if max_age else None,
                  parse_age(min_age, "--min-age", now) if min_age else None)
