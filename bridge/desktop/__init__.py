"""`feishu-desktop` / `python -m bridge.desktop`: the download service for the Bitable plugin in a small
window (Tk). strings: what it says in each language; settings: what it remembers; window: the window."""
from bridge.desktop.window import DesktopApp, main

__all__ = ["DesktopApp", "main"]
