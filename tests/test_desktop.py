"""The desktop app `feishu-desktop`, driven like a user would: a real window on a virtual X display (Xvfb),
real mouse clicks and key presses (xdotool), the published plugin's client (tests/plugin_client.py) over
WebSocket with links from the fake Feishu API.

The app runs with --trace, printing each visible change (status line, status card, labels, widget
geometry) as a JSON line: the test clicks where the app says its buttons are and checks what it shows.
"""
from __future__ import annotations

import asyncio
import json
import os
import select
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

from bridge.desktop.settings import save_config
from infra.proxy import ForwardProxy
from infra.feishu_server import FeishuServer
from tests.conftest import need_program
from tests.plugin_client import PublishedPlugin, cells_of

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# What a window test drives (tests/conftest.py need_program: skipped naming the package, failed under
# OSSDL_REQUIRE_SYSTEM=1): the X display, the mouse and keys, the screenshot, the Chinese labels' font.
DISPLAY_PROGRAMS = (("Xvfb", "xvfb"), ("xdotool", "xdotool"), ("xwd", "x11-apps"),
                    ("/usr/share/fonts/truetype/wqy/*", "fonts-wqy-microhei"))


def needs_display(test):
    for program, package in DISPLAY_PROGRAMS:
        test = pytest.mark.system(program, package)(test)
    return test


needs_tk = pytest.mark.system("import:_tkinter", "python3-tk")  # the app's window, in this Python


# -- the X display ------------------------------------------------------------------------------------
def start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on a display number it picks itself (-displayfd): no race with another test process, or a person,
    starting an X server at the same moment. It writes the number once it accepts connections."""
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip() if select.select([pipe], [], [], 10)[0] else ""
    if not number.isdigit():
        stop_process(proc)
        pytest.fail("Xvfb did not start: no display number on -displayfd within 10 s")
    return proc, f":{number}"


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

    def __init__(self, display: str, home: Path, *args: str, **env: str):
        self.display = display
        self.env = {**os.environ, "DISPLAY": display, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
                    "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT), **env}
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
        self.xdotool("key", "End", "shift+Home", "BackSpace")  # select all, delete
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


def probe(port: int, origin: str | None = None):
    """A plugin-like client: connects, probes, returns the open connection and the answer."""
    from websockets.sync.client import connect
    ws = connect(f"ws://127.0.0.1:{port}", open_timeout=5, origin=origin)
    ws.send(json.dumps({"type": "feishu_attachment_probe", "data": {}}))
    return ws, json.loads(ws.recv(timeout=5))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0



def need_tools() -> None:
    for program, package in DISPLAY_PROGRAMS:
        need_program(program, package)


def recording_opener(tmp_path: Path) -> tuple[Path, Path]:
    """An xdg-open that notes what it was asked to open (there is no desktop session to show it in)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "opened.txt"
    bin_dir.mkdir()
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{record}"\n')
    opener.chmod(0o755)
    return bin_dir, record


def run_plugin_job(plugin: PublishedPlugin, cells: list[dict], name: str) -> threading.Thread:
    ended: list[str] = []
    thread = threading.Thread(target=lambda: ended.append(asyncio.run(plugin.download_url_mode(cells, zip_name=name))),
                              daemon=True)
    thread.ended = ended
    thread.start()
    return thread


@needs_display
@needs_tk
def test_desktop_app_drives_the_service(tmp_path):
    need_tools()
    xvfb, display = start_xvfb()
    fs = FeishuServer(rate_per_second=0).start()
    fs.add_table("app", "tbl", [{"field_id": "fAtt", "field_name": "附件", "type": 17}])
    bin_dir, opened = recording_opener(tmp_path)
    out = tmp_path / "out"
    app = None
    ws = None
    taken = socket.socket()
    proxy = ForwardProxy().start()
    try:
        app = App(display, tmp_path, "--port", "0", "--output", str(out), PATH=f"{bin_dir}:{os.environ['PATH']}")
        # Chinese by default, service not running; advanced settings (with the token) and log hidden.
        labels = app.wait("labels", lang="zh")
        assert labels["labels"]["start"] == "启动服务"
        app.wait("card", state="not_running")
        widgets = app.settled_geometry(0, "start")
        assert {"advanced", "open_folder", "output"} <= set(widgets)
        assert not {"port", "token", "remember", "concurrency", "origins", "log_text"} & set(widgets)
        window_ids = app.xdotool("search", "--sync", "--classname", "feishu-desktop").split()
        assert window_ids, "the window is not on the display"
        assert "飞书附件下载服务" in [app.xdotool("getwindowname", w).strip() for w in window_ids]
        config = tmp_path / "config" / "oss-bulk-downloader" / "feishu-desktop.json"

        # "Open folder": a missing folder is one line; an existing one goes to the system's file manager.
        m = app.mark()
        app.click("open_folder")
        app.wait("status", m, error=True, text=f"文件夹不存在：{out}")
        out.mkdir()
        m = app.mark()
        app.click("open_folder")
        app.wait("open_folder", m, path=str(out))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (opened.exists() and opened.read_text().strip()):
            time.sleep(0.05)
        assert opened.read_text().splitlines() == [str(out)]

        # Advanced settings: the token is masked, and saved (0600) only while "remember" is ticked.
        m = app.mark()
        app.click("advanced")
        app.wait("panels", m, advanced=True)
        app.type_into("token", "pbt-secret-123", since=m)
        m = app.mark()
        app.click("remember")
        app.wait("status", m, text=lambda t: t.startswith("授权码已保存"))
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert json.loads(config.read_text())["personal_base_token"] == "pbt-secret-123"
        m = app.mark()
        app.click("remember")
        app.wait("status", m, text="已删除保存的授权码。")
        saved = json.loads(config.read_text())
        assert "personal_base_token" not in saved and saved["output"] == str(out)
        assert stat.S_IMODE(config.stat().st_mode) == 0o600

        # Bad values are one line each, in the window's language.
        app.type_into("port", "99999")
        m = app.mark()
        app.click("start")
        app.wait("status", m, error=True, text="端口必须是 0–65535 之间的数字。")
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        app.type_into("port", str(busy))
        m = app.mark()
        app.click("start")
        # Starting imports the service (and Prefect, for the job recorder): seconds on a loaded machine.
        app.wait("status", m, error=True, text=f"端口 {busy} 已被占用（可能另一个下载服务正在运行），请换一个端口。",
                 timeout=60)
        app.wait("running", m, running=False)
        app.type_into("port", "0")
        app.type_into("concurrency", "99")
        m = app.mark()
        app.click("start")
        app.wait("status", m, error=True, text="同时下载数必须是 1–64 之间的数字。")
        app.type_into("concurrency", "2")
        app.type_into("origins", "app.example.com")
        m = app.mark()
        app.click("start")
        app.wait("status", m, error=True, text=lambda t: t.startswith("“app.example.com”不是网页来源"))
        widgets = app.settled_geometry(0, "origins")
        size, colours = screenshot(app.env, widgets["window"], ARTIFACTS / "desktop-advanced.png")
        assert size > 10_000 and colours > 20, (size, colours)
        app.type_into("origins", "https://app.example.com")
        # The proxy field: what the service cannot use is one line; a proxy given carries every download.
        app.type_into("proxy", "socks5://127.0.0.1:1080")
        m = app.mark()
        app.click("start")
        app.wait("status", m, error=True, text=lambda t: t.startswith("代理设置无效：代理: socks proxies are not"))
        app.type_into("proxy", proxy.url)

        # Start (mouse): the origin typed in is allowed, others are refused with a line in the log.
        m = app.mark()
        app.click("start")
        port = app.wait("running", m, running=True, timeout=60)["port"]
        assert port and port_open(port)
        ws, answer = probe(port, origin="https://app.example.com")
        assert answer["type"] == "feishu_attachment_ack" and answer["data"]["stage"] == "server_info"
        assert app.wait("card", m, connected=True)["text"] == "● 插件已连接"
        ws.close()
        ws = None
        with pytest.raises(Exception, match="403"):
            probe(port, origin="https://evil.example.com")
        app.wait("log", m, text=lambda t: t.startswith("已拒绝来自 https://evil.example.com 的连接"))
        assert app.wait("status", m, text=f"服务运行中：ws://127.0.0.1:{port}")

        # A job: its own counters while it runs (pending = not started yet: in progress is not pending).
        cells = cells_of(fs, "app", "tbl", [(f"f{i}.txt", f"data {i}".encode(), "资料") for i in range(4)]
                         + [("secret.txt", b"no", "")])
        for cell in cells[:4]:
            fs.add_fault(cell["token"], "delay", seconds=1.5)
        fs.deny_file(cells[4]["token"])
        job = run_plugin_job(PublishedPlugin(port, fs), cells, "第一批")
        app.wait("card", m, job="当前任务：第一批", counts={"current": 2, "pending": 3, "completed": 0, "failed": 0},
                 timeout=20)
        job.join(60)
        assert job.ended == ["complete"]
        card = app.wait("card", m, job="当前没有任务", history=lambda h: len(h or []) == 1, timeout=20)
        assert card["history"][0].endswith("第一批：4 个成功，1 个失败")
        for i in range(4):
            app.wait("log", m, text=f"✓ 第一批：资料/f{i}.txt")
        app.wait("log", m, text=lambda t: t.startswith("✗ 第一批：secret.txt 下载失败："))
        app.wait("log", m, text=f"任务 第一批 结束：4 个成功，1 个失败。文件夹：{out / '第一批'}")
        app.wait("log", m, text=f"　ZIP：{out / '第一批.zip'}")
        app.wait("log", m, text=f"　失败清单：{out / '第一批' / '.oss-failed.csv'}")
        assert sum((r.path or "").startswith("/download/") for r in proxy.requests) >= 4  # through the proxy field

        # A second job is counted on its own: a second history line, nothing added to the first.
        m = app.mark()
        second = run_plugin_job(PublishedPlugin(port, fs),
                                cells_of(fs, "app", "tbl", [("g.txt", b"g", ""), ("h.txt", b"h", "")]), "第二批")
        second.join(60)
        card = app.wait("card", m, history=lambda h: len(h or []) == 2, timeout=20)
        assert card["history"][0].endswith("第一批：4 个成功，1 个失败")
        assert card["history"][1].endswith("第二批：2 个成功，0 个失败")
        assert card["counts"] == {"current": 0, "pending": 0, "completed": 0, "failed": 0}

        # The log panel (keyboard shortcut Ctrl+G), as a user sees it (advanced settings folded: Ctrl+J).
        m = app.mark()
        app.key("ctrl+j")
        app.wait("panels", m, advanced=False)
        app.key("ctrl+g")
        app.wait("panels", m, log=True)
        app.wait("log", 0, text=lambda t: f"ws://127.0.0.1:{port}" in t)
        widgets = app.settled_geometry(m, "log_text")
        size, colours = screenshot(app.env, widgets["window"], ARTIFACTS / "desktop-app.png")
        assert size > 10_000 and colours > 20, (size, colours)

        # Language switch (mouse): labels, card, history and messages, errors included, change live.
        m = app.mark()
        app.click("lang")
        labels = app.wait("labels", m, lang="en")["labels"]
        assert labels == {"title": "Feishu attachment downloader", "start": "Start", "stop": "Stop", "lang": "中文",
                          "output": "Save to", "card": "Status"}
        card = app.wait("card", m, text="○ Waiting for the plugin", job="No job running")
        assert card["history"][1].endswith("第二批: 2 saved, 0 failed")
        assert app.wait("status", m, text=f"Running on ws://127.0.0.1:{port}")
        missing = tmp_path / "gone"
        app.type_into("output", str(missing))
        m = app.mark()
        app.click("open_folder")
        app.wait("status", m, error=True, text=f"The folder does not exist: {missing}")
        with pytest.raises(Exception, match="403"):
            probe(port, origin="https://evil.example.com")
        app.wait("log", m, text=lambda t: t.startswith("Refused a connection from https://evil.example.com"))

        # Stop (mouse) closes the port.
        m = app.mark()
        app.click("stop")
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
        assert saved["download_concurrency"] == 2 and saved["allow_origins"] == ["https://app.example.com"]
        assert saved["proxy"] == proxy.url
    finally:
        taken.close()
        proxy.stop()
        if ws is not None:
            ws.close()
        if app is not None:
            stop_process(app.proc)
        stop_process(xvfb)
        fs.stop()


@needs_display
@needs_tk
def test_the_window_starts_and_closes_when_its_settings_cannot_be_saved(tmp_path):
    """On Windows before Python 3.13 saving used to raise (no os.fchmod): Start did nothing and the window
    could not be closed. A settings folder that cannot be written must not stop either."""
    need_tools()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    xvfb, display = start_xvfb()
    app = None
    try:
        app = App(display, tmp_path, "--port", "0", "--output", str(tmp_path / "out"), "--start",
                  XDG_CONFIG_HOME=str(blocker))
        port = app.wait("running", running=True, timeout=20)["port"]
        assert port_open(port)
        app.settled_geometry(0, "start")
        m = app.mark()
        app.key("ctrl+q")
        app.wait("closed", m)
        assert app.proc.wait(15) == 0
        assert not port_open(port)
    finally:
        if app is not None:
            stop_process(app.proc)
        stop_process(xvfb)


def test_settings_are_saved_owner_only_without_fchmod(tmp_path, monkeypatch):
    """As on Windows' CPython before 3.13, which has no os.fchmod; even with a permissive umask and a
    world-readable leftover temp file."""
    monkeypatch.delattr(os, "fchmod")
    path = tmp_path / "cfg" / "feishu-desktop.json"
    path.parent.mkdir()
    path.with_name(path.name + ".tmp").write_text("old")
    path.with_name(path.name + ".tmp").chmod(0o666)
    old_umask = os.umask(0)
    try:
        save_config({"personal_base_token": "pt-1"}, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"personal_base_token": "pt-1"}
    assert not path.with_name(path.name + ".tmp").exists()
