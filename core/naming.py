"""Safe local names for files whose names come from people (Bitable cells, the plugin): cleaned segments,
folders from fields, and `name_1.ext` for duplicates. Nothing produced here can leave the output folder."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.paths import MAX_NAME_BYTES, RESERVED_PREFIXES

UNCATEGORIZED = "未分类"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
# Names Windows refuses whatever the extension; files are often copied there.
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?$", re.IGNORECASE)


def _cap_bytes(text: str, limit: int) -> str:
    while len(text.encode("utf-8")) > limit:
        text = text[:-1]
    return text


def clean_segment(text: str, limit: int = 200) -> str:
    """One safe file or folder name: no separators, control or reserved characters, no dot names.
    A name longer than `limit` bytes is shortened before its extension, which it keeps."""
    text = _UNSAFE.sub("_", str(text)).strip().strip(".").strip()
    if _WINDOWS_RESERVED.match(text) or text.startswith(RESERVED_PREFIXES):
        text = "_" + text
    if len(text.encode("utf-8")) > limit:
        stem, ext = split_name(text)
        text = _cap_bytes(stem, limit - len(ext.encode("utf-8"))).rstrip(" .") + ext
    return text or "_"


def split_name(name: str) -> tuple[str, str]:
    """('report', '.pdf') from 'report.pdf'; an extension is short and has no spaces."""
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 16 and " " not in ext:
        return stem, "." + ext
    return name, ""


def cell_text(value, joiner: str = ",") -> str:
    """The text a person sees in a Bitable cell: text runs, options, people, links, numbers."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else ""
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for k in ("text", "name", "en_name", "link", "value"):
            if k in value:
                return cell_text(value[k], joiner)
        return ""
    if isinstance(value, list):
        parts = [cell_text(v, joiner) for v in value]
        runs = all(isinstance(v, dict) and "text" in v for v in value)  # one text cell split into runs
        return ("" if runs else joiner).join(p for p in parts if p)
    return str(value)


class UniquePaths:
    """Relative paths handed out so far (case-insensitively, as macOS and Windows compare them)."""

    def __init__(self):
        self._used: set[str] = set()

    def claim(self, folders: list[str], name: str) -> str:
        stem, ext = split_name(name)
        stem = _cap_bytes(stem, MAX_NAME_BYTES - len(ext.encode("utf-8")) - 8)
        for n in range(0, 1_000_000):
            rel = "/".join(folders + [f"{stem}_{n}{ext}" if n else f"{stem}{ext}"])
            if rel.casefold() not in self._used:
                self._used.add(rel.casefold())
                return rel
        raise ValueError(f"too many files named {name!r}")


@dataclass
class AttachmentNaming:
    """The plugin's naming rules: name from fields joined by a separator (original extension kept),
    up to two folder levels from fields, empty values into the 'uncategorized' folder."""
    name_fields: list[str] = field(default_factory=list)
    separator: str = "-"
    folder_fields: list[str] = field(default_factory=list)
    uncategorized: str = UNCATEGORIZED
    paths: UniquePaths = field(default_factory=UniquePaths, repr=False)

    def place(self, record: dict, attachment_name: str) -> str:
        """The relative path of one attachment of a record (its `fields` dict)."""
        # A cell holding only spaces is empty to a person: it goes where empty values go.
        folders = [clean_segment(cell_text(record.get(f), self.separator).strip() or self.uncategorized)
                   for f in self.folder_fields[:2]]
        original = clean_segment((attachment_name or "").strip() or "attachment")
        if self.name_fields:
            texts = [cell_text(record.get(f), self.separator).strip() for f in self.name_fields]
            joined = self.separator.join(t for t in texts if t)
            if joined:
                ext = split_name(original)[1]
                name = clean_segment(joined, 200 - len(ext.encode("utf-8"))) + ext
                return self.paths.claim(folders, name)
        return self.paths.claim(folders, original)
