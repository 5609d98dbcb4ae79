"""The desktop app `feishu-desktop`, driven like a user would: a real window on a virtual X display (Xvfb),
real mouse clicks and key presses (xdotool), a real plugin client over WebSocket.

The app runs with --trace, printing each visible change (status line, status card, labels, widget
geometry) as a JSON line: the test clicks where the app says its buttons are and checks what it shows.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt-get install xvfb)")


# -- the X display ------------------------------------------------------------------------------------
def start_xvfb() -> tuple[subprocess.Popen, str]:
    for n in range(90, 200):
        if Path(f"/tmp/.X{n}-lock").exists() or Path(f"/tmp/.X11-unix/X{n}").exists():
            continue
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                time.sleep(0.2)
                return proc, f":{n}"
            time.sleep(0.05)
        stop_process(proc)
    pytest.fail("could not start Xvfb on any display :90-:199")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the app under test -------------------------------------------------------------------------------
class App:
    """`python -m bridge.desktop --trace` on the display; collects its JSON trace lines."""

    def __init__(self, display: str, home: Path, *args: str):
        self.display = display
        self.env = dict(os.environ, DISPLAY=display, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
                        PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        self.env.pop("PERSONAL_BASE_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge.desktop", "--trace", *args], cwd=home,
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, kind: str, since: int = 0, timeout: float = 10, **want) -> dict:
        """The first `kind` event at or after index `since` whose fields match `want` (callables test)."""
        def match(e):
            return e["event"] == kind and all(v(e.get(k)) if callable(v) else e.get(k) == v for k, v in want.items())
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.events[since:]:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    seen = [e for e in self.events if e["event"] == kind][-3:]
                    raise AssertionError(f"no {kind} event matching {want}; last ones: {seen};"
                                         f" stderr: {''.join(self.stderr)[-2000:]}")
                self.cond.wait(min(left, 0.2))

    def last(self, kind: str) -> dict:
        with self.cond:
            return [e for e in self.events if e["event"] == kind][-1]

    def settled_geometry(self, since: int, needs: str) -> dict:
        """The widget positions after the latest change, once a geometry event naming `needs` came."""
        self.wait("geometry", since, widgets=lambda w: needs in w)
        time.sleep(0.3)  # let a relayout in flight report too
        return self.last("geometry")["widgets"]

    # -- real X input ---------------------------------------------------------------------------------
    def xdotool(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, check=True, capture_output=True, text=True,
                              timeout=10).stdout

    def click(self, name: str, since: int = 0) -> None:
        x, y, w, h = self.settled_geometry(since, name)[name]
        self.xdotool("mousemove", str(x + w // 2), str(y + h // 2), "click", "1")

    def type_into(self, name: str, text: str, since: int = 0) -> None:
        self.click(name, since)
        self.xdotool("key", "End", *["BackSpace"] * 40)
        self.xdotool("type", "--delay", "10", text)

    def key(self, combo: str) -> None:
        x, y, w, h = self.last("geometry")["widgets"]["title"]
        self.xdotool("mousemove", str(x + 2), str(y + 2), "key", combo)


# -- a screenshot without ImageMagick: xwd's dump, written as PNG ---------------------------------------
def screenshot(env: dict, box: list[int], dest: Path) -> tuple[int, int]:
    """Capture the screen region box = [x, y, w, h] into a PNG; returns (bytes written, distinct colours)."""
    raw = subprocess.run(["xwd", "-root", "-silent"], env=env, check=True, capture_output=True, timeout=20).stdout
    (header_size, _version, _fmt, _depth, width, height, _xoff, byte_order, _unit, _bit_order, _pad, bpp,
     bytes_per_line, _vclass, red_mask, green_mask, blue_mask, _bits, _entries, ncolors) = struct.unpack(
        ">20I", raw[:80])
    assert bpp == 32, f"unexpected xwd pixel size {bpp}"
    data = raw[header_size + 12 * ncolors:]
    order = "<" if byte_order == 0 else ">"

    def shift(mask: int) -> int:
        return (mask & -mask).bit_length() - 1
    shifts = [(mask, shift(mask)) for mask in (red_mask, green_mask, blue_mask)]
    x0, y0, w, h = box
    w, h = min(w, width - x0), min(h, height - y0)
    rows, colours = [], set()
    for y in range(y0, y0 + h):
        line = data[y * bytes_per_line + 4 * x0: y * bytes_per_line + 4 * (x0 + w)]
        pixels = struct.unpack(f"{order}{w}I", line)
        row = bytearray()
        for px in pixels:
            rgb = bytes((px & m) >> s for m, s in shifts)
            row += rgb
        colours.update(pixels[::7])
        rows.append(b"\x00" + bytes(row))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(png)
    return len(png), len(colours)


def probe(port: int):
    """A plugin-like client: connects, probes, returns the open connection and the answer."""
    from websockets.sync.client import connect
    ws = connect(f"ws://127.0.0.1:{port}", open_timeout=5)
    ws.send(json.dumps({"type": "feishu_attachment_probe", "data": {}}))
    return ws, json.loads(ws.recv(timeout=5))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_desktop_app_drives_the_service(tmp_path):
    for tool, package in (("xdotool", "xdotool"), ("xwd", "x11-apps")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to drive and capture the window (apt-get install {package})")
    xvfb, display = start_xvfb()
    app = None
    ws = None
    taken = socket.socket()
    try:
        app = App(display, tmp_path, "--port", "0", "--output", str(tmp_path / "out"))
        # Chinese by default, service not running, advanced settings and log hidden.
        labels = app.wait("labels", lang="zh")
        assert labels["labels"]["start"] == "启动服务"
        app.wait("card", state="not_running")
        widgets = app.settled_geometry(0, "start")
        assert "port" not in widgets and "log_text" not in widgets and "advanced" in widgets
        window_ids = app.xdotool("search", "--sync", "--classname", "feishu-desktop").split()
        assert window_ids, "the window is not on the display"
        assert "飞书附件下载服务" in [app.xdotool("getwindowname", w).strip() for w in window_ids]
        config = tmp_path / "config" / "oss-bulk-downloader" / "feishu-desktop.json"

        # The token is masked, and saved (0600) only while "remember" is ticked.
        app.type_into("token", "pbt-secret-123")
        m = app.mark()
        app.click("remember")
        app.wait("status", m, text=lambda t: t.startswith("授权码已保存"))
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert json.loads(config.read_text())["personal_base_token"] == "pbt-secret-123"
        m = app.mark()
        app.click("remember")
        app.wait("status", m, text="已删除保存的授权码。")
        saved = json.loads(config.read_text())
        assert "personal_base_token" not in saved and saved["output"] == str(tmp_path / "out")
        assert stat.S_IMODE(config.stat().st_mode) == 0o600

        # Advanced settings: a bad port and a taken port are one line in the status line.
        m = app.mark()
        app.click("advanced")
        app.wait("panels", m, advanced=True)
        app.type_into("port", "99999", since=m)
        m = app.mark()
        app.click("start")
        app.wait("status", m, error=True, text="端口必须是 0–65535 之间的数字。")
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app.type_into("port", str(taken.getsockname()[1]))
        m = app.mark()
        app.click("start")
        failed = app.wait("status", m, error=True, text=lambda t: "cannot listen on" in t)
        assert failed["text"].startswith("错误：") and "Traceback" not in "".join(app.stderr)
        app.wait("running", m, running=False)
        app.type_into("port", "0")

        # Start (mouse): a plugin client can probe the service and the card shows it connected.
        m = app.mark()
        app.click("start")
        port = app.wait("running", m, running=True)["port"]
        assert port and port_open(port)
        ws, answer = probe(port)
        assert answer["type"] == "feishu_attachment_ack" and answer["data"]["stage"] == "server_info"
        card = app.wait("card", m, connected=True)
        assert card["text"] == "● 插件已连接"
        assert app.wait("status", m, text=f"服务运行中：ws://127.0.0.1:{port}")

        # The log panel (keyboard shortcut Ctrl+G) shows the service's log.
        m = app.mark()
        app.key("ctrl+g")
        app.wait("panels", m, log=True)
        app.wait("log", 0, text=lambda t: f"listening on ws://127.0.0.1:{port}" in t)
        widgets = app.settled_geometry(m, "log_text")
        size, colours = screenshot(app.env, widgets["window"], ARTIFACTS / "desktop-app.png")
        assert size > 10_000 and colours > 20, (size, colours)

        # Language switch (mouse): every label changes live, the card too.
        m = app.mark()
        app.click("lang")
        labels = app.wait("labels", m, lang="en")["labels"]
        assert labels == {"title": "Feishu attachment downloader", "start": "Start", "stop": "Stop", "lang": "中文",
                          "output": "Save to", "card": "Status"}
        assert app.wait("card", m, text="● Plugin connected")
        assert app.wait("status", m, text=f"Running on ws://127.0.0.1:{port}")

        # The plugin leaves; Stop (mouse) closes the port.
        ws.close()
        ws = None
        app.wait("card", m, state="waiting", connected=False)
        m = app.mark()
        app.click("stop", since=m)
        app.wait("running", m, running=False)
        app.wait("status", m, text="Service stopped.")
        assert not port_open(port)

        # Ctrl+S starts again; Ctrl+Q closes the window, which stops the service.
        m = app.mark()
        app.key("ctrl+s")
        port = app.wait("running", m, running=True)["port"]
        assert port_open(port)
        app.key("ctrl+q")
        app.wait("closed", m)
        assert app.proc.wait(15) == 0
        assert not port_open(port)
        saved = json.loads(config.read_text())
        assert saved["language"] == "en" and "personal_base_token" not in saved
    finally:
        taken.close()
        if ws is not None:
            ws.close()
        if app is not None:
            stop_process(app.proc)
        stop_process(xvfb)
