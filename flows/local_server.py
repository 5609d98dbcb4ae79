"""Prefect for one command: a temporary server in a session of its own (or the configured one, checked), and
Prefect's console lines kept off the command's console.

Without PREFECT_API_URL Prefect starts such a server itself, but as a child in the terminal's foreground
process group: Ctrl-C typed at the terminal kills it too, and the flow then spends minutes reporting its
crash to a dead API. This one is Prefect's own app started the same way (no UI, ephemeral mode), but in a new
session, so Ctrl-C reaches only the command, which records the run as Crashed and then stops the server."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ADDRESS_IN_USE = 3  # uvicorn's exit status when the port was taken after we picked it
PROXY_VARIABLES = {f"{name}_proxy" for name in ("http", "https", "all", "no")} | {"OSSDL_PROXY"}
SERVER_START_TIMEOUT = 90.0
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OSS_ACCESS_KEY_ID",
           "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN", "PERSONAL_BASE_TOKEN"}


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: SIGTERM when the command dies without stopping us (kill -9, a closed terminal)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TemporaryServer:
    def __init__(self):
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "TemporaryServer":
        """Start it and return at once: it gets ready (~10 s) while the command lists and asks."""
        import prefect
        from prefect.settings import get_current_settings
        # The store's credentials (maybe typed in at the terminal) are none of the server's business.
        # Nor is a proxy (which may hold a password): the server talks to its clients on loopback only.
        env = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "PREFECT_API_URL"
               and k.lower() not in {p.lower() for p in PROXY_VARIABLES}}
        env.update(get_current_settings().to_environment_variables(exclude_unset=True),
                   PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
        own_session = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else
                       {"start_new_session": True, "preexec_fn": _die_with_parent if sys.platform == "linux" else None})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, **own_session)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Return when its API answers; RuntimeError with the server's last words when it does not."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code == ADDRESS_IN_USE:
                self.port = _free_port()
                self.start()
                continue
            if code is not None:
                raise RuntimeError(f"the temporary Prefect server exited with status {code}: {self._last_words()}")
            with contextlib.suppress(OSError):
                if _healthy(self.api_url):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s"
                                   f" ({self._last_words()}); set PREFECT_API_URL to a running server")
            time.sleep(0.1)

    def stop(self, wait: float = 5.0) -> None:
        """SIGTERM (it finishes its writes), SIGKILL if it has not gone after `wait` seconds; 0: do not wait."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self.process.terminate()
        if not wait:
            return
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _last_words(self) -> str:
        self._log.seek(0)
        lines = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else "no output"


def _healthy(api_url: str, timeout: float = 2) -> bool:
    """Whether a Prefect API answers its health check (directly: a loopback server is never behind a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{api_url}/health", timeout=timeout) as answer:
        return answer.status == 200


def start_temporary_server() -> TemporaryServer | None:
    """Without a Prefect API to report to, start a temporary server now, in a session of its own; it gets
    ready while the command lists and asks. None when PREFECT_API_URL (or the profile) names a server."""
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    import atexit
    server = TemporaryServer().start()
    atexit.register(server.stop)  # registered before Prefect's own exit hooks, so it runs after them
    return server


def prefect_ready(server: TemporaryServer | None, terminal: bool, flow: str):
    """The flow ("module:name"), with Prefect quiet on the console and its API answering: the temporary
    server once it is ready, or the configured one (UsageError naming the setting when it does not answer)."""
    from flows.console import console
    if server is None:
        from prefect.settings import get_current_settings
        _check_api(get_current_settings().api.url)
    else:
        message = "starting a temporary Prefect server for this run (PREFECT_API_URL is not set) …"
        if terminal:
            with console().status(message):
                server.wait_ready(SERVER_START_TIMEOUT)
        else:
            print(message, file=sys.stderr, flush=True)
            server.wait_ready(SERVER_START_TIMEOUT)
        from prefect.context import refresh_global_settings_context
        os.environ["PREFECT_API_URL"] = server.api_url
        # Prefect's client reads the proxy variables too: our own loopback server is reached directly.
        name = "no_proxy" if "no_proxy" in os.environ else "NO_PROXY"
        os.environ[name] = ",".join(filter(None, [os.environ.get(name, ""), f"127.0.0.1:{server.port}"]))
        refresh_global_settings_context()
    import importlib
    module, name = flow.split(":")
    loaded = getattr(importlib.import_module(module), name)
    quiet_prefect()
    return loaded


def _check_api(url: str | None) -> None:
    """A configured API that does not answer is bad input (exit 2), not objects that failed."""
    if not url:
        return
    from prefect.client.orchestration import get_client

    from core.errors import UsageError
    with get_client(sync_client=True) as client:  # Prefect's own proxy, certificates and API key
        failed = client.api_healthcheck()
    if failed is not None:
        raise UsageError(f"the Prefect API at {url} (PREFECT_API_URL) does not answer ({type(failed).__name__}):"
                         " start it (make server), point PREFECT_API_URL at a running server, or run without"
                         " Prefect: --no-prefect")


class _OtherWarnings(logging.Handler):
    """Instead of Prefect's console handler on the root logger: other libraries' warnings, one line each
    (through rich's redirection while the live display runs); Prefect's records stay in its API logs."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("prefect"):
            print(f"warning: {record.name}: {record.getMessage()}", file=sys.stderr)


def quiet_prefect() -> None:
    """Prefect's console lines (server start, flow run start and end, task runs) off the command's console:
    they stay in the flow run's logs in Prefect. After the flow's import: importing Prefect installs them."""
    from prefect.logging.handlers import APILogHandler
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            if not isinstance(handler, APILogHandler) and isinstance(handler, logging.StreamHandler):
                logger.removeHandler(handler)
    logging.getLogger().addHandler(_OtherWarnings())
    # One task run per listing page or batch: their "Finished in state Completed()" is noise in the run's logs.
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
