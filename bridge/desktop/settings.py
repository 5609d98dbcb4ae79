"""The window's remembered settings: one JSON file readable by its owner only, on every OS."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CONFIG_NAME = "feishu-desktop.json"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base and sys.platform.startswith("win") and os.environ.get("APPDATA"):
        base = os.environ["APPDATA"]  # the user's roaming profile: only its owner may read it
    return Path(base or Path.home() / ".config") / "oss-bulk-downloader" / CONFIG_NAME


def load_config(path: Path | None = None) -> dict:
    try:
        data = json.loads((path or config_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(data: dict, path: Path | None = None) -> Path:
    """Write atomically, readable by the user only. The file is created with mode 0600 by os.open, never
    widened afterwards: no os.fchmod, which Windows' CPython lacks before 3.13 (there the mode only sets
    the read-only flag, and the file inherits the owner-only access of the user's profile folder)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # the mode applies only to a file this call creates
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    with open(fd, "wb") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))
    os.replace(tmp, path)
    return path
