"""Each plugin job as a Prefect flow run (when Prefect is installed and a Prefect API is configured): its
summary and failures become artifacts in the UI next to the download flows'. The standalone desktop app
is built without Prefect: there the recorder is simply off."""
from __future__ import annotations

import contextvars
import importlib.util
import os
import sys
import threading
import time
import tomllib
from pathlib import Path

from core.model import Counts
from core.report import Summary

_jobs: dict[str, tuple[threading.Event, dict]] = {}


def _plugin_job():
    from prefect import flow

    @flow(name="feishu-plugin-job", persist_result=False)
    def plugin_job(job_key: str, job_name: str, folder: str, total: int) -> Summary:
        """Waits for the service to finish the job, then publishes what happened (no secrets in parameters)."""
        from tasks.artifacts import publish_summary
        event, result = _jobs[job_key]
        started = time.monotonic()
        event.wait()
        _jobs.pop(job_key, None)
        tally = Counts(listed=result.get("listed", 0), downloaded=result.get("downloaded", 0),
                      failed=result.get("failed", 0), bytes=result.get("bytes", 0))
        summary = Summary.of(tally, time.monotonic() - started, result.get("failed_csv"))
        publish_summary(summary, result.get("first_rows", []))
        return summary
    return plugin_job


def _may_name_an_api() -> bool:
    """False only when nothing Prefect reads its settings from can name an API: then the service neither
    records nor imports Prefect (~1 s of start-up, and its exit hooks on the way out)."""
    if importlib.util.find_spec("prefect") is None:
        return False
    if "prefect" in sys.modules or os.environ.get("PREFECT_API_URL"):
        return True  # already imported, asking costs nothing (and its settings context may be set in code)
    # Prefect also reads these in the cwd (a .env often holds only PERSONAL_BASE_TOKEN: that names no API).
    if Path("prefect.toml").is_file() or "PREFECT_" in _text(Path(".env")):
        return True
    if "[tool.prefect" in _text(Path("pyproject.toml")):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles_file = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(_text(profiles_file))
    except tomllib.TOMLDecodeError:
        return True  # let Prefect say what it makes of it
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


class JobRecorder:
    """Started by the service in its caller's context (where the Prefect settings live)."""

    def __init__(self):
        self.context = contextvars.copy_context()
        self.enabled = False
        if _may_name_an_api():
            from prefect.settings import PREFECT_API_URL
            self.enabled = bool(self.context.run(PREFECT_API_URL.value))
            self.plugin_job = _plugin_job() if self.enabled else None
        self.threads: list[threading.Thread] = []

    def begin(self, job_key: str, job_name: str, folder: str, total: int):
        """Returns finish(result) to call when the job is over, or None when Prefect is not configured."""
        if not self.enabled:
            return None
        event, result = threading.Event(), {}
        _jobs[job_key] = (event, result)
        thread = threading.Thread(target=self.context.copy().run, args=(self.plugin_job,),
                                  kwargs=dict(job_key=job_key, job_name=job_name, folder=folder, total=total),
                                  name=f"prefect-job-{job_key}", daemon=True)
        thread.start()
        self.threads.append(thread)

        def finish(values: dict) -> None:
            result.update(values)
            event.set()
        return finish

    def wait(self, timeout: float = 15.0) -> None:
        """Let the flow runs of finished jobs publish their summaries before the process goes."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
