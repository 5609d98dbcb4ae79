"""A temporary Prefect server for one command, in a session of its own.

Without PREFECT_API_URL Prefect starts such a server itself, but as a child in the terminal's foreground
process group: Ctrl-C typed at the terminal kills it too, and the flow then spends minutes reporting its
crash to a dead API. This one is Prefect's own app started the same way (no UI, ephemeral mode), but in a new
session, so Ctrl-C reaches only the command, which records the run as Crashed and then stops the server."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ADDRESS_IN_USE = 3  # uvicorn's exit status when the port was taken after we picked it
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
        env = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "PREFECT_API_URL"}
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
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                    if answer.status == 200:
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
