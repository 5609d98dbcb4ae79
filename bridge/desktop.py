"""`feishu-desktop` / `python -m bridge.desktop`: the download service for the Bitable plugin in a small window.

Start/stop, the output folder, a personal base token (remembered only when asked), host and port under
"advanced settings", a live status card and an optional log panel, in Chinese or English.

The service runs on its own threads; everything it reports (events, log records) goes through one queue
that the Tk thread polls, so Tk is only ever touched from the Tk thread.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

CONFIG_NAME = "feishu-desktop.json"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11548
POLL_MS = 100  # the event queue
STATUS_MS = 500  # svc.status()

# Every label in the window, per language. Keys are also the widgets' names where a widget shows one.
STRINGS = {
    "zh": {
        "title": "飞书附件下载服务",
        "lang": "English",
        "output": "保存到",
        "browse": "浏览…",
        "token": "个人授权码",
        "remember": "记住授权码",
        "advanced_show": "▸ 高级设置",
        "advanced_hide": "▾ 高级设置",
        "host": "监听地址",
        "port": "端口",
        "start": "启动服务",
        "stop": "停止服务",
        "card": "服务状态",
        "connected": "● 插件已连接",
        "waiting": "○ 等待插件连接",
        "not_running": "○ 服务未启动",
        "current": "正在下载",
        "completed": "已完成",
        "pending": "等待中",
        "failed": "失败",
        "log_show": "显示日志",
        "log_hide": "隐藏日志",
        "ready": "就绪：点击“启动服务”。",
        "starting": "正在启动…",
        "stopping": "正在停止…",
        "running": "服务运行中：ws://{host}:{port}",
        "stopped": "服务已停止。",
        "bad_port": "端口必须是 0–65535 之间的数字。",
        "bad_host": "请填写监听地址。",
        "bad_output": "请选择保存文件夹。",
        "error": "错误：{message}",
        "saved_token": "授权码已保存到 {path}",
        "forgot_token": "已删除保存的授权码。",
    },
    "en": {
        "title": "Feishu attachment downloader",
        "lang": "中文",
        "output": "Save to",
        "browse": "Browse…",
        "token": "Personal base token",
        "remember": "Remember token",
        "advanced_show": "▸ Advanced settings",
        "advanced_hide": "▾ Advanced settings",
        "host": "Host",
        "port": "Port",
        "start": "Start",
        "stop": "Stop",
        "card": "Status",
        "connected": "● Plugin connected",
        "waiting": "○ Waiting for the plugin",
        "not_running": "○ Service not running",
        "current": "Downloading",
        "completed": "Completed",
        "pending": "Pending",
        "failed": "Failed",
        "log_show": "Show log",
        "log_hide": "Hide log",
        "ready": "Ready: click “Start”.",
        "starting": "Starting…",
        "stopping": "Stopping…",
        "running": "Running on ws://{host}:{port}",
        "stopped": "Service stopped.",
        "bad_port": "The port must be a number from 0 to 65535.",
        "bad_host": "Enter a host to listen on.",
        "bad_output": "Choose a folder to save to.",
        "error": "Error: {message}",
        "saved_token": "Token saved in {path}",
        "forgot_token": "The saved token was removed.",
    },
}
COUNTS = ("current", "completed", "pending", "failed")
SHORTCUTS = {"start": "<Control-s>", "stop": "<Control-e>", "lang": "<Control-l>", "log": "<Control-g>",
             "advanced": "<Control-j>", "quit": "<Control-q>"}


# -- the remembered settings --------------------------------------------------------------------------
def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "oss-bulk-downloader" / CONFIG_NAME


def load_config(path: Path | None = None) -> dict:
    try:
        data = json.loads((path or config_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(data: dict, path: Path | None = None) -> Path:
    """Write the settings readable by the user only (0600), atomically."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


class QueueLogHandler(logging.Handler):
    """Hands the service's log records to the Tk thread."""

    def __init__(self, events: queue.Queue):
        super().__init__(logging.INFO)
        self.events = events
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.put(("log", self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class DesktopApp:
    def __init__(self, root: tk.Tk, *, output: str | None = None, host: str | None = None,
                 port: int | None = None, lang: str | None = None, trace: bool = False):
        self.root = root
        self.trace_on = trace
        self.events: queue.Queue = queue.Queue()
        self.service = None
        self.worker: threading.Thread | None = None
        self.closing = False
        self.message = ("ready", {})  # the status line: a STRINGS key (re-rendered on language switch) ...
        self.error_text = ""  # ... or an error from the service, shown as is after the "error" prefix
        self._traced: dict[str, object] = {}
        self._geometry_job = None

        saved = load_config()
        self.lang = lang or (saved.get("language") if saved.get("language") in STRINGS else "zh")
        self.output = tk.StringVar(value=output or saved.get("output") or str(Path.home() / "Downloads" / "feishu"))
        self.host = tk.StringVar(value=host or saved.get("host") or DEFAULT_HOST)
        self.port = tk.StringVar(value=str(port if port is not None else saved.get("port", DEFAULT_PORT)))
        from bridge.cli import personal_base_token
        self.token = tk.StringVar(value=saved.get("personal_base_token") or personal_base_token(None))
        self.remember = tk.BooleanVar(value=bool(saved.get("personal_base_token")))
        self.show_advanced = False
        self.show_log = False

        self.log_handler = QueueLogHandler(self.events)
        self.logger = logging.getLogger("feishu-bridge")
        self.logger.addHandler(self.log_handler)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)

        self._build()
        self.relabel()
        self._set_running(False)
        for action, sequence in SHORTCUTS.items():
            root.bind_all(sequence, lambda _e, a=action: self._shortcut(a))
        root.protocol("WM_DELETE_WINDOW", self.close)
        root.bind("<Configure>", lambda _e: self._schedule_geometry())
        root.after(POLL_MS, self._poll_events)
        root.after(STATUS_MS, self._poll_status)

    # -- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        root = self.root
        root.minsize(520, 0)
        style = ttk.Style(root)
        if "clam" in style.theme_names() and sys.platform.startswith("linux"):
            style.theme_use("clam")  # the X11 default theme looks dated; Windows and macOS keep their native one
        background = style.lookup("TFrame", "background") or None  # for the two plain tk.Labels
        main = ttk.Frame(root, padding=12, name="main")
        main.pack(fill="both", expand=True)
        main.columnconfigure(1, weight=1)
        self.labels: dict[str, ttk.Widget] = {}  # widget -> STRINGS key, relabelled live

        def label(parent, key, **grid):
            w = ttk.Label(parent, name=f"label_{key}")
            w.grid(sticky="w", padx=(0, 8), pady=3, **grid)
            self.labels[key] = w
            return w

        top = ttk.Frame(main)
        top.grid(row=0, column=0, columnspan=3, sticky="ew", pady=(0, 8))
        self.title = ttk.Label(top, font=("TkDefaultFont", 14, "bold"), name="title")
        self.title.pack(side="left")
        self.lang_button = ttk.Button(top, name="lang", width=8, command=self.toggle_language)
        self.lang_button.pack(side="right")

        label(main, "output", row=1, column=0)
        ttk.Entry(main, textvariable=self.output, name="output").grid(row=1, column=1, sticky="ew", pady=3)
        self.browse_button = ttk.Button(main, name="browse", command=self.browse)
        self.browse_button.grid(row=1, column=2, padx=(6, 0))

        label(main, "token", row=2, column=0)
        ttk.Entry(main, textvariable=self.token, show="•", name="token").grid(row=2, column=1, sticky="ew", pady=3)
        self.remember_box = ttk.Checkbutton(main, variable=self.remember, name="remember",
                                            command=self.remember_changed)
        self.remember_box.grid(row=2, column=2, sticky="w", padx=(6, 0))

        self.advanced_button = ttk.Button(main, name="advanced", command=self.toggle_advanced)
        self.advanced_button.grid(row=3, column=0, columnspan=3, sticky="w", pady=(6, 0))
        self.advanced = ttk.Frame(main, name="advanced_panel", padding=(16, 4, 0, 0))
        self.advanced.columnconfigure(1, weight=1)
        label(self.advanced, "host", row=0, column=0)
        ttk.Entry(self.advanced, textvariable=self.host, name="host").grid(row=0, column=1, sticky="ew", pady=3)
        label(self.advanced, "port", row=1, column=0)
        ttk.Entry(self.advanced, textvariable=self.port, width=8, name="port").grid(row=1, column=1, sticky="w",
                                                                                    pady=3)

        buttons = ttk.Frame(main)
        buttons.grid(row=5, column=0, columnspan=3, sticky="ew", pady=(10, 6))
        self.start_button = ttk.Button(buttons, name="start", command=self.start)
        self.start_button.pack(side="left")
        self.stop_button = ttk.Button(buttons, name="stop", command=self.stop)
        self.stop_button.pack(side="left", padx=(6, 0))

        self.card = ttk.LabelFrame(main, name="card", padding=10)
        self.card.grid(row=6, column=0, columnspan=3, sticky="ew", pady=4)
        self.connection = tk.Label(self.card, name="connection", font=("TkDefaultFont", 12, "bold"), anchor="w",
                                   bg=background)
        self.connection.grid(row=0, column=0, columnspan=4, sticky="w", pady=(0, 6))
        self.count_values: dict[str, tk.StringVar] = {}
        for i, key in enumerate(COUNTS):
            self.card.columnconfigure(i, weight=1, uniform="counts")
            cell = ttk.Frame(self.card)
            cell.grid(row=1, column=i, sticky="w")
            var = self.count_values[key] = tk.StringVar(value="0")
            ttk.Label(cell, textvariable=var, font=("TkDefaultFont", 16, "bold"), name=f"count_{key}").pack(anchor="w")
            w = ttk.Label(cell, name=f"label_{key}")
            w.pack(anchor="w")
            self.labels[key] = w

        self.status_line = tk.Label(main, name="statusline", anchor="w", justify="left", wraplength=480,
                                    bg=background)
        self.status_line.grid(row=7, column=0, columnspan=3, sticky="ew", pady=(6, 0))

        self.log_button = ttk.Button(main, name="log", command=self.toggle_log)
        self.log_button.grid(row=8, column=0, columnspan=3, sticky="w", pady=(8, 0))
        self.log_frame = ttk.Frame(main, name="log_panel")
        self.log_frame.columnconfigure(0, weight=1)
        self.log_frame.rowconfigure(0, weight=1)
        self.log_text = tk.Text(self.log_frame, name="log_text", height=10, width=70, state="disabled",
                                wrap="word", font="TkFixedFont")
        self.log_text.grid(row=0, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(self.log_frame, command=self.log_text.yview)
        scroll.grid(row=0, column=1, sticky="ns")
        self.log_text.configure(yscrollcommand=scroll.set)
        main.rowconfigure(9, weight=1)

    # -- language -------------------------------------------------------------------------------------
    def t(self, key: str, **kwargs) -> str:
        return STRINGS[self.lang][key].format(**kwargs)

    def relabel(self) -> None:
        self.root.title(self.t("title"))
        self.title.configure(text=self.t("title"))
        self.lang_button.configure(text=self.t("lang"))
        self.browse_button.configure(text=self.t("browse"))
        self.remember_box.configure(text=self.t("remember"))
        self.advanced_button.configure(text=self.t("advanced_hide" if self.show_advanced else "advanced_show"))
        self.start_button.configure(text=self.t("start"))
        self.stop_button.configure(text=self.t("stop"))
        self.card.configure(text=self.t("card"))
        self.log_button.configure(text=self.t("log_hide" if self.show_log else "log_show"))
        for key, widget in self.labels.items():
            widget.configure(text=self.t(key))
        self._render_status_line()
        self._refresh_card()
        self.trace("labels", lang=self.lang, labels={
            "title": self.t("title"), "start": self.start_button.cget("text"), "stop": self.stop_button.cget("text"),
            "lang": self.lang_button.cget("text"), "output": self.t("output"), "card": self.t("card")})

    def toggle_language(self) -> None:
        self.lang = "en" if self.lang == "zh" else "zh"
        self.relabel()
        self._save_settings()

    # -- panels and the form --------------------------------------------------------------------------
    def toggle_advanced(self) -> None:
        self.show_advanced = not self.show_advanced
        if self.show_advanced:
            self.advanced.grid(row=4, column=0, columnspan=3, sticky="ew")
        else:
            self.advanced.grid_remove()
        self.advanced_button.configure(text=self.t("advanced_hide" if self.show_advanced else "advanced_show"))
        self.trace("panels", advanced=self.show_advanced, log=self.show_log)

    def toggle_log(self) -> None:
        self.show_log = not self.show_log
        if self.show_log:
            self.log_frame.grid(row=9, column=0, columnspan=3, sticky="nsew", pady=(6, 0))
        else:
            self.log_frame.grid_remove()
        self.log_button.configure(text=self.t("log_hide" if self.show_log else "log_show"))
        self.trace("panels", advanced=self.show_advanced, log=self.show_log)

    def browse(self) -> None:
        folder = filedialog.askdirectory(parent=self.root, initialdir=self.output.get() or str(Path.home()),
                                         title=self.t("output"))
        if folder:
            self.output.set(folder)

    def remember_changed(self) -> None:
        try:
            path = self._save_settings()
        except OSError as exc:
            self.show_error(str(exc))
            return
        self.show_message("saved_token" if self.remember.get() else "forgot_token", path=path)

    def _save_settings(self) -> Path:
        """Folder, host, port and language always; the token only while "remember" is ticked."""
        data = load_config()
        data.update(output=self.output.get().strip(), host=self.host.get().strip(), language=self.lang)
        try:
            data["port"] = int(self.port.get())
        except ValueError:
            pass
        if self.remember.get() and self.token.get():
            data["personal_base_token"] = self.token.get()
        else:
            data.pop("personal_base_token", None)
        return save_config(data)

    # -- the status line ------------------------------------------------------------------------------
    def show_message(self, key: str, **kwargs) -> None:
        self.message, self.error_text = (key, kwargs), ""
        self._render_status_line()

    def show_error(self, text: str) -> None:
        self.message, self.error_text = ("error", {"message": text}), text
        self._render_status_line()

    def _render_status_line(self) -> None:
        key, kwargs = self.message
        text = self.t(key, **kwargs)
        self.status_line.configure(text=text, fg="#b3261e" if key.startswith(("error", "bad_")) else "#333333")
        self.trace("status", text=text, error=key.startswith(("error", "bad_")))

    # -- the service ----------------------------------------------------------------------------------
    def _settings(self):
        from bridge.service import BridgeSettings
        try:
            port = int(self.port.get().strip())
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            self.show_message("bad_port")
            return None
        host = self.host.get().strip()
        if not host:
            self.show_message("bad_host")
            return None
        output = self.output.get().strip()
        if not output:
            self.show_message("bad_output")
            return None
        return BridgeSettings(host=host, port=port, output=Path(output), personal_base_token=self.token.get().strip())

    def start(self) -> None:
        if self.service is not None or self.worker is not None:
            return
        settings = self._settings()
        if settings is None:
            return
        try:
            self._save_settings()
        except OSError as exc:
            self.logger.warning("could not save the settings: %s", exc)
        from bridge.service import BridgeService
        service = BridgeService(settings, on_event=lambda kind, message: self.events.put((kind, message)))
        self.show_message("starting")
        self._busy()

        def run():
            from tasks.errors import UsageError
            try:
                service.start()
            except UsageError as exc:
                self.events.put(("start_failed", str(exc)))
            except Exception as exc:  # noqa: BLE001 - shown in the status line, not as a traceback
                self.events.put(("start_failed", f"{type(exc).__name__}: {exc}"))
            else:
                self.events.put(("start_ok", service))
        self.worker = threading.Thread(target=run, name="feishu-desktop-start", daemon=True)
        self.worker.start()

    def stop(self) -> None:
        if self.service is None or self.worker is not None:
            return
        service, self.service = self.service, None
        self.show_message("stopping")
        self._busy()

        def run():
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001
                self.events.put(("log", f"stop: {exc}"))
            self.events.put(("stop_done", ""))
        self.worker = threading.Thread(target=run, name="feishu-desktop-stop", daemon=True)
        self.worker.start()

    def _busy(self) -> None:
        self.start_button.state(["disabled"])
        self.stop_button.state(["disabled"])

    def _set_running(self, running: bool) -> None:
        self.start_button.state(["disabled"] if running else ["!disabled"])
        self.stop_button.state(["!disabled"] if running else ["disabled"])
        for name in ("host", "port"):
            self.advanced.nametowidget(name).state(["disabled"] if running else ["!disabled"])
        self._refresh_card()
        port = self.service.port if self.service else None
        self.trace("running", running=running, port=port)

    def _poll_events(self) -> None:
        try:
            while True:
                kind, payload = self.events.get_nowait()
                self._handle_event(kind, payload)
        except queue.Empty:
            pass
        if not self.closing:
            self.root.after(POLL_MS, self._poll_events)

    def _handle_event(self, kind: str, payload) -> None:
        if kind == "start_ok":
            self.worker, self.service = None, payload
            self.show_message("running", host=payload.settings.host, port=payload.port)
            self._set_running(True)
        elif kind == "start_failed":
            self.worker = None
            self.show_error(payload)
            self._append_log(f"error: {payload}")
            self._set_running(False)
        elif kind == "stop_done":
            self.worker = None
            self.show_message("stopped")
            self._set_running(False)
        elif kind == "status":
            self._refresh_card()
        elif kind == "log":
            self._append_log(payload)
        elif payload and kind not in ("started", "stopped"):  # these repeat what the logger says
            self._append_log(f"{kind}: {payload}")

    def _poll_status(self) -> None:
        self._refresh_card()
        if not self.closing:
            self.root.after(STATUS_MS, self._poll_status)

    def _refresh_card(self) -> None:
        status = {"connected": False, "current": 0, "completed": 0, "pending": 0, "failed": 0}
        if self.service is not None:
            try:
                status = self.service.status()
            except RuntimeError:  # a job changed while we read it: next time
                return
            state = "connected" if status["connected"] else "waiting"
            colour = "#1b7f3b" if status["connected"] else "#8a6d00"
        else:
            state, colour = "not_running", "#666666"
        self.connection.configure(text=self.t(state), fg=colour)
        for key in COUNTS:
            self.count_values[key].set(str(status[key]))
        self.trace("card", state=state, text=self.t(state), connected=status["connected"],
                   counts={key: status[key] for key in COUNTS})

    def _append_log(self, line: str) -> None:
        self.log_text.configure(state="normal")
        self.log_text.insert("end", line + "\n")
        lines = int(self.log_text.index("end-1c").split(".")[0])
        if lines > 2000:
            self.log_text.delete("1.0", f"{lines - 2000}.0")
        self.log_text.see("end")
        self.log_text.configure(state="disabled")
        self.trace("log", text=line)

    # -- keyboard, closing ----------------------------------------------------------------------------
    def _shortcut(self, action: str) -> str:
        {"start": self.start, "stop": self.stop, "lang": self.toggle_language, "log": self.toggle_log,
         "advanced": self.toggle_advanced, "quit": self.close}[action]()
        return "break"

    def close(self) -> None:
        """Closing the window stops the service (waiting for a start or stop in progress)."""
        if self.closing:
            return
        self.closing = True
        if self.worker is not None:
            self.worker.join(30)
            try:
                while True:
                    kind, payload = self.events.get_nowait()
                    if kind == "start_ok":
                        self.service = payload
            except queue.Empty:
                pass
        if self.service is not None:
            try:
                self.service.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"feishu-desktop: stopping the service failed: {exc}", file=sys.stderr)
            self.service = None
        try:
            self._save_settings()
        except OSError:
            pass
        self.logger.removeHandler(self.log_handler)
        self.trace("closed")
        self.root.destroy()

    # -- --trace: one JSON line per visible change, for tests and debugging -----------------------------
    def trace(self, event: str, **fields) -> None:
        if not self.trace_on:
            return
        line = json.dumps({"event": event, **fields}, sort_keys=True)
        if event in ("card", "geometry") and self._traced.get(event) == line:
            return  # refreshed on a timer: only changes
        self._traced[event] = line
        print(line, flush=True)

    def _schedule_geometry(self) -> None:
        if not self.trace_on or self.closing:
            return
        if self._geometry_job is not None:
            self.root.after_cancel(self._geometry_job)
        self._geometry_job = self.root.after(150, self._trace_geometry)

    def _trace_geometry(self) -> None:
        """Where each named, visible widget is on the screen, so a test can click it."""
        self._geometry_job = None
        widgets = {}

        def walk(w):
            for child in w.winfo_children():
                name = child.winfo_name()
                if not name.startswith("!") and child.winfo_viewable():
                    widgets[name] = [child.winfo_rootx(), child.winfo_rooty(), child.winfo_width(),
                                     child.winfo_height()]
                walk(child)
        walk(self.root)
        widgets["window"] = [self.root.winfo_rootx(), self.root.winfo_rooty(), self.root.winfo_width(),
                             self.root.winfo_height()]
        self.trace("geometry", widgets=widgets)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="feishu-desktop", description="The Bitable plugin's download service, in a window.")
    p.add_argument("--output", default=None, help="where files are saved (default: the last one used)")
    p.add_argument("--host", default=None, help=f"listen address (default: the last one used, or {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=None,
                   help=f"WebSocket port, 0 for any free one (default: the last one used, or {DEFAULT_PORT})")
    p.add_argument("--lang", choices=sorted(STRINGS), default=None, help="interface language (default zh)")
    p.add_argument("--start", action="store_true", help="start the service right away")
    p.add_argument("--trace", action="store_true", help="print each change of the window as a JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        root = tk.Tk(className="feishu-desktop")
    except tk.TclError as exc:
        print(f"error: cannot open a window: {exc}", file=sys.stderr)
        return 2
    app = DesktopApp(root, output=args.output, host=args.host, port=args.port, lang=args.lang, trace=args.trace)
    if args.start:
        root.after_idle(app.start)
    try:
        root.mainloop()
    except KeyboardInterrupt:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
