"""One ZIP of a job folder, streamed file by file so memory stays flat for GB-sized jobs."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from core.paths import RESERVED_PREFIXES

# Already compressed: deflating them again costs CPU and saves nothing.
_STORED = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".heic", ".mp4", ".mov", ".avi", ".mkv", ".mp3", ".m4a",
           ".zip", ".rar", ".7z", ".gz", ".bz2", ".xz", ".docx", ".xlsx", ".pptx", ".pdf"}
CHUNK = 1 << 20


def _tool_file(name: str) -> bool:
    return name.startswith(RESERVED_PREFIXES)


def zip_folder(folder: Path, zip_path: Path, root: str | None = None) -> Path:
    """Write every file below `folder` (not the tool's own manifest, CSV or temp files) into `zip_path`,
    under `root/` when given. Written to a temp file beside it, then renamed: never a half ZIP."""
    folder, zip_path = Path(folder), Path(zip_path)
    tmp = zip_path.with_name(f".ossdl-{zip_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL|O_NOFOLLOW: a symbolic link planted at the temp name is never written through.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0),
                 0o644)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", allowZip64=True) as archive:
                for dirpath, dirnames, filenames in os.walk(folder):
                    dirnames[:] = sorted(d for d in dirnames if not _tool_file(d))  # the work area .ossdl/
                    for name in sorted(filenames):
                        if _tool_file(name):
                            continue
                        path = Path(dirpath) / name
                        rel = path.relative_to(folder).as_posix()
                        arcname = f"{root}/{rel}" if root else rel
                        method = zipfile.ZIP_STORED if path.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
                        info = zipfile.ZipInfo.from_file(path, arcname)
                        info.compress_type = method
                        with open(path, "rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                            while chunk := src.read(CHUNK):
                                dst.write(chunk)
            raw.flush()  # after the central directory, which closing the archive writes
            os.fsync(raw.fileno())
        os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)
    return zip_path
