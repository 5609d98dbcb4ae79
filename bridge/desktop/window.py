"""The window: start/stop, the output folder (and a button to open it), advanced settings (host, port,
personal base token, downloads at once, allowed origins), a status card for the current job with a line
per finished job, and a log panel hidden by default, in Chinese or English.

The service runs on its own threads; everything it reports (events, log records) goes through one queue
that the Tk thread polls, so Tk is only ever touched from the Tk thread.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import tkinter as tk
from pathlib import Path
from tkinter import filedialog, ttk

from bridge.desktop.settings import load_config, save_config
from bridge.desktop.strings import STRINGS, event_lines

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11548
DEFAULT_CONCURRENCY = 5
POLL_MS = 100  # the event queue
STATUS_MS = 500  # svc.status()
HISTORY_LINES = 5
COUNTS = ("current", "completed", "pending", "failed")
SHORTCUTS = {"start": "<Control-s>", "stop": "<Control-e>", "lang": "<Control-l>", "log": "<Control-g>",
             "advanced": "<Control-j>", "quit": "<Control-q>"}


class QueueLogHandler(logging.Handler):
    """Hands the service's log records to the Tk thread; records that repeat an event are left out (the
    window says those in its own language)."""

    def __init__(self, events: queue.Queue):
        super().__init__(logging.INFO)
        self.events = events
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "bridge_event", False):
            return
        try:
            self.events.put(("log", self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def open_folder(path: Path) -> None:
    """Show a folder in the system's file manager."""
    if sys.platform.startswith("win"):
        os.startfile(path)  # noqa: S606 - a folder the user chose
    else:
        subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


class DesktopApp:
    def __init__(self, root: tk.Tk, *, output: str | None = None, host: str | None = None,
                 port: int | None = None, lang: str | None = None, trace: bool = False):
        self.root = root
        self.trace_on = trace
        self.events: queue.Queue = queue.Queue()
        self.service = None
        self.worker: threading.Thread | None = None
        self.closing = False
        self.message = ("ready", {}, False)  # the status line: a STRINGS key, its values, whether an error
        self._traced: dict[str, object] = {}
        self._geometry_job = None
        self._history: list[dict] = []

        saved = load_config()
        self.lang = lang or (saved.get("language") if saved.get("language") in STRINGS else "zh")
        self.output = tk.StringVar(value=output or saved.get("output") or str(Path.home() / "Downloads" / "feishu"))
        self.host = tk.StringVar(value=host or saved.get("host") or DEFAULT_HOST)
        self.port = tk.StringVar(value=str(port if port is not None else saved.get("port", DEFAULT_PORT)))
        self.concurrency = tk.StringVar(value=str(saved.get("download_concurrency", DEFAULT_CONCURRENCY)))
        origins = saved.get("allow_origins")
        self.origins = tk.StringVar(value=" ".join(origins) if isinstance(origins, list) else "")
        from bridge.cli import personal_base_token
        self.token = tk.StringVar(value=saved.get("personal_base_token") or personal_base_token(None))
        self.remember = tk.BooleanVar(value=bool(saved.get("personal_base_token")))
        self.proxy = tk.StringVar(value=saved.get("proxy") or "")
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
        root.minsize(560, 0)
        style = ttk.Style(root)
        if "clam" in style.theme_names() and sys.platform.startswith("linux"):
            style.theme_use("clam")  # the X11 default theme looks dated; Windows and macOS keep their native one
        background = style.lookup("TFrame", "background") or None  # for the plain tk widgets
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
        top.grid(row=0, column=0, columnspan=4, sticky="ew", pady=(0, 8))
        self.title = ttk.Label(top, font=("TkDefaultFont", 14, "bold"), name="title")
        self.title.pack(side="left")
        self.lang_button = ttk.Button(top, name="lang", width=8, command=self.toggle_language)
        self.lang_button.pack(side="right")

        label(main, "output", row=1, column=0)
        ttk.Entry(main, textvariable=self.output, name="output").grid(row=1, column=1, sticky="ew", pady=3)
        self.browse_button = ttk.Button(main, name="browse", command=self.browse)
        self.browse_button.grid(row=1, column=2, padx=(6, 0))
        self.open_button = ttk.Button(main, name="open_folder", command=self.open_output)
        self.open_button.grid(row=1, column=3, padx=(6, 0))

        self.advanced_button = ttk.Button(main, name="advanced", command=self.toggle_advanced)
        self.advanced_button.grid(row=3, column=0, columnspan=4, sticky="w", pady=(6, 0))
        adv = self.advanced = ttk.Frame(main, name="advanced_panel", padding=(16, 4, 0, 0))
        adv.columnconfigure(1, weight=1)
        label(adv, "host", row=0, column=0)
        ttk.Entry(adv, textvariable=self.host, name="host").grid(row=0, column=1, sticky="ew", pady=3)
        label(adv, "port", row=1, column=0)
        ttk.Entry(adv, textvariable=self.port, width=8, name="port").grid(row=1, column=1, sticky="w", pady=3)
        label(adv, "token", row=2, column=0)
        ttk.Entry(adv, textvariable=self.token, show="•", name="token").grid(row=2, column=1, sticky="ew", pady=3)
        self.remember_box = ttk.Checkbutton(adv, variable=self.remember, name="remember",
                                            command=self.remember_changed)
        self.remember_box.grid(row=2, column=2, sticky="w", padx=(6, 0))
        label(adv, "concurrency", row=3, column=0)
        ttk.Spinbox(adv, textvariable=self.concurrency, from_=1, to=64, width=6, name="concurrency").grid(
            row=3, column=1, sticky="w", pady=3)
        label(adv, "origins", row=4, column=0)
        ttk.Entry(adv, textvariable=self.origins, name="origins").grid(row=4, column=1, columnspan=2, sticky="ew",
                                                                        pady=3)
        self.origins_hint = ttk.Label(adv, name="origins_hint", foreground="#666666", wraplength=440)
        self.origins_hint.grid(row=5, column=1, columnspan=2, sticky="w")
        label(adv, "proxy", row=6, column=0)
        ttk.Entry(adv, textvariable=self.proxy, show="•", name="proxy").grid(row=6, column=1, columnspan=2, sticky="ew",
                                                                           pady=3)
        self.proxy_hint = ttk.Label(adv, name="proxy_hint", foreground="#666666", wraplength=440)
        self.proxy_hint.grid(row=7, column=1, columnspan=2, sticky="w")

        buttons = ttk.Frame(main)
        buttons.grid(row=5, column=0, columnspan=4, sticky="ew", pady=(10, 6))
        self.start_button = ttk.Button(buttons, name="start", command=self.start)
        self.start_button.pack(side="left")
        self.stop_button = ttk.Button(buttons, name="stop", command=self.stop)
        self.stop_button.pack(side="left", padx=(6, 0))

        self.card = ttk.LabelFrame(main, name="card", padding=10)
        self.card.grid(row=6, column=0, columnspan=4, sticky="ew", pady=4)
        self.connection = tk.Label(self.card, name="connection", font=("TkDefaultFont", 12, "bold"), anchor="w",
                                   bg=background)
        self.connection.grid(row=0, column=0, columnspan=4, sticky="w")
        self.job_line = tk.Label(self.card, name="job", anchor="w", bg=background)
        self.job_line.grid(row=1, column=0, columnspan=4, sticky="w", pady=(2, 6))
        self.count_values: dict[str, tk.StringVar] = {}
        for i, key in enumerate(COUNTS):
            self.card.columnconfigure(i, weight=1, uniform="counts")
            cell = ttk.Frame(self.card)
            cell.grid(row=2, column=i, sticky="w")
            var = self.count_values[key] = tk.StringVar(value="0")
            ttk.Label(cell, textvariable=var, font=("TkDefaultFont", 16, "bold"), name=f"count_{key}").pack(anchor="w")
            w = ttk.Label(cell, name=f"label_{key}")
            w.pack(anchor="w")
            self.labels[key] = w
        label(self.card, "history", row=3, column=0, columnspan=4).grid_configure(pady=(8, 0))
        self.history_text = tk.Label(self.card, name="history_list", anchor="w", justify="left", bg=background)
        self.history_text.grid(row=4, column=0, columnspan=4, sticky="w")

        self.status_line = tk.Label(main, name="statusline", anchor="w", justify="left", wraplength=520,
                                    bg=background)
        self.status_line.grid(row=7, column=0, columnspan=4, sticky="ew", pady=(6, 0))

        self.log_button = ttk.Button(main, name="log", command=self.toggle_log)
        self.log_button.grid(row=8, column=0, columnspan=4, sticky="w", pady=(8, 0))
        self.log_frame = ttk.Frame(main, name="log_panel")
        self.log_frame.columnconfigure(0, weight=1)
        self.log_frame.rowconfigure(0, weight=1)
        self.log_text = tk.Text(self.log_frame, name="log_text", height=10, width=76, state="disabled",
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
        self.open_button.configure(text=self.t("open_folder"))
        self.remember_box.configure(text=self.t("remember"))
        self.origins_hint.configure(text=self.t("origins_hint"))
        self.proxy_hint.configure(text=self.t("proxy_hint"))
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
        self._save_quietly()

    # -- panels and the form --------------------------------------------------------------------------
    def toggle_advanced(self) -> None:
        self.show_advanced = not self.show_advanced
        if self.show_advanced:
            self.advanced.grid(row=4, column=0, columnspan=4, sticky="ew")
        else:
            self.advanced.grid_remove()
        self.advanced_button.configure(text=self.t("advanced_hide" if self.show_advanced else "advanced_show"))
        self.trace("panels", advanced=self.show_advanced, log=self.show_log)

    def toggle_log(self) -> None:
        self.show_log = not self.show_log
        if self.show_log:
            self.log_frame.grid(row=9, column=0, columnspan=4, sticky="nsew", pady=(6, 0))
        else:
            self.log_frame.grid_remove()
        self.log_button.configure(text=self.t("log_hide" if self.show_log else "log_show"))
        self.trace("panels", advanced=self.show_advanced, log=self.show_log)

    def browse(self) -> None:
        folder = filedialog.askdirectory(parent=self.root, initialdir=self.output.get() or str(Path.home()),
                                         title=self.t("output"))
        if folder:
            self.output.set(folder)

    def open_output(self) -> None:
        folder = Path(self.output.get().strip()).expanduser()
        if not self.output.get().strip() or not folder.is_dir():
            self.show_message("folder_missing", error=True, path=str(folder))
            return
        try:
            open_folder(folder)
        except OSError as exc:
            self.show_message("cannot_open", error=True, reason=exc.strerror or str(exc))
            return
        self.trace("open_folder", path=str(folder))

    def remember_changed(self) -> None:
        try:
            path = self._save_settings()
        except OSError as exc:
            self.show_message("cannot_save", error=True, reason=exc.strerror or str(exc))
            return
        self.show_message("saved_token" if self.remember.get() else "forgot_token", path=path)

    def _save_settings(self) -> Path:
        """The form always; the token only while "remember" is ticked."""
        data = load_config()
        data.update(output=self.output.get().strip(), host=self.host.get().strip(), language=self.lang)
        for key, var in (("port", self.port), ("download_concurrency", self.concurrency)):
            try:
                data[key] = int(var.get())
            except ValueError:
                pass
        try:
            from bridge.origins import split
            data["allow_origins"] = split(self.origins.get())
        except ValueError:
            pass
        data["proxy"] = self.proxy.get().strip()  # the file is the owner's only (a proxy may hold a password)
        if self.remember.get() and self.token.get():
            data["personal_base_token"] = self.token.get()
        else:
            data.pop("personal_base_token", None)
        return save_config(data)

    def _save_quietly(self) -> None:
        try:
            self._save_settings()
        except Exception as exc:  # noqa: BLE001 - never in the way of starting or closing
            self.logger.warning("could not save the settings: %s", exc)

    # -- the status line ------------------------------------------------------------------------------
    def show_message(self, key: str, error: bool = False, **kwargs) -> None:
        self.message = (key, kwargs, error)
        self._render_status_line()

    def _render_status_line(self) -> None:
        key, kwargs, error = self.message
        text = self.t(key, **kwargs)
        self.status_line.configure(text=text, fg="#b3261e" if error else "#333333")
        self.trace("status", text=text, error=error)

    # -- the service ----------------------------------------------------------------------------------
    def _settings(self):
        from bridge.origins import split
        from bridge.service import BridgeSettings
        try:
            port = int(self.port.get().strip())
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            return self.show_message("bad_port", error=True)
        host = self.host.get().strip()
        if not host:
            return self.show_message("bad_host", error=True)
        output = self.output.get().strip()
        if not output:
            return self.show_message("bad_output", error=True)
        try:
            concurrency = int(self.concurrency.get().strip())
        except ValueError:
            concurrency = 0
        if not 1 <= concurrency <= 64:
            return self.show_message("bad_concurrency", error=True)
        try:
            origins = split(self.origins.get())
        except ValueError:
            bad = next(o for o in self.origins.get().replace(",", " ").split() if not _is_origin(o))
            return self.show_message("bad_origin", error=True, origin=bad)
        proxy = self.proxy.get().strip() or None  # empty: the system's or the environment's settings
        if proxy:
            from core.errors import UsageError
            from core.network import parse_proxy
            try:
                parse_proxy(proxy, self.t("proxy"))
            except UsageError as exc:
                return self.show_message("bad_proxy", error=True, reason=str(exc))
        return BridgeSettings(host=host, port=port, output=Path(output), personal_base_token=self.token.get().strip(),
                              download_concurrency=concurrency, allow_origins=origins, proxy=proxy)

    def start(self) -> None:
        if self.service is not None or self.worker is not None:
            return
        settings = self._settings()
        if settings is None:
            return
        self._save_quietly()
        from bridge.service import BridgeService
        service = BridgeService(settings, on_event=lambda kind, info: self.events.put((kind, info)))
        self.show_message("starting")
        self._busy()

        def run():
            from bridge.service import StartError
            try:
                service.start()
            except StartError as exc:
                self.events.put(("start_failed", (exc.key, exc.params)))
            except Exception as exc:  # noqa: BLE001 - shown in the status line, not as a traceback
                self.events.put(("start_failed", ("error", {"message": f"{type(exc).__name__}: {exc}"})))
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
            self.events.put(("stop_done", None))
        self.worker = threading.Thread(target=run, name="feishu-desktop-stop", daemon=True)
        self.worker.start()

    def _busy(self) -> None:
        self.start_button.state(["disabled"])
        self.stop_button.state(["disabled"])

    def _set_running(self, running: bool) -> None:
        self.start_button.state(["disabled"] if running else ["!disabled"])
        self.stop_button.state(["!disabled"] if running else ["disabled"])
        for name in ("host", "port", "token", "concurrency", "origins", "proxy"):
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
            key, params = payload
            self.worker = None
            self.show_message(key, error=True, **params)
            self._append_log(self.status_line.cget("text"))
            self._set_running(False)
        elif kind == "stop_done":
            self.worker = None
            self.show_message("stopped")
            self._set_running(False)
        elif kind == "status":
            pass  # the card is redrawn on its timer
        elif kind == "log":
            self._append_log(payload)
        else:
            for line in event_lines(self.lang, kind, payload):
                self._append_log(line)
            if kind == "job_finished":
                self._refresh_card()

    def _poll_status(self) -> None:
        self._refresh_card()
        if not self.closing:
            self.root.after(STATUS_MS, self._poll_status)

    def _refresh_card(self) -> None:
        status = {"connected": False, "job": "", "current": 0, "completed": 0, "pending": 0, "failed": 0,
                  "history": self._history}
        if self.service is not None:
            try:
                status = self.service.status()
            except RuntimeError:  # a job changed while we read it: next time
                return
            self._history = status["history"]
            state = "connected" if status["connected"] else "waiting"
            colour = "#1b7f3b" if status["connected"] else "#8a6d00"
        else:
            state, colour = "not_running", "#666666"
        self.connection.configure(text=self.t(state), fg=colour)
        job = self.t("job", name=status["job"]) if status["job"] else self.t("no_job")
        self.job_line.configure(text=job)
        for key in COUNTS:
            self.count_values[key].set(str(status[key]))
        history = [self.t("history_line", **h) for h in status["history"][-HISTORY_LINES:]]
        self.history_text.configure(text="\n".join(reversed(history)) or "—")
        self.trace("card", state=state, text=self.t(state), connected=status["connected"], job=job,
                   counts={key: status[key] for key in COUNTS}, history=history)

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
        self._save_quietly()
        self.logger.removeHandler(self.log_handler)
        self.trace("closed")
        self.root.destroy()

    # -- --trace: one JSON line per visible change, for tests and debugging -----------------------------
    def trace(self, event: str, **fields) -> None:
        if not self.trace_on:
            return
        line = json.dumps({"event": event, **fields}, sort_keys=True, ensure_ascii=False)
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


def _is_origin(text: str) -> bool:
    from bridge.origins import normalise
    try:
        normalise(text)
    except ValueError:
        return False
    return True


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
    # Ctrl-C in the terminal that started it, or SIGTERM: close as the window's close button does. Handled on
    # the Tk thread, and harmless twice (the executable's bootloader forwards what the terminal also sent).
    def close_soon(signum, frame):
        if not app.closing:
            root.after_idle(app.close)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, close_soon)
    root.mainloop()
    return 0
