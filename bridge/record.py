"""Each plugin job as a Prefect flow run (when Prefect is installed and a Prefect API is configured): its
summary and failures become artifacts in the UI next to the download flows'. The standalone desktop app
is built without Prefect: there the recorder is simply off."""
from __future__ import annotations

import contextvars
import importlib.util
import threading
import time

from core.model import Counts
from core.report import Summary

PREFECT = importlib.util.find_spec("prefect") is not None
_jobs: dict[str, tuple[threading.Event, dict]] = {}

if PREFECT:
    from prefect import flow
    from prefect.settings import PREFECT_API_URL

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


class JobRecorder:
    """Started by the service in its caller's context (where the Prefect settings live)."""

    def __init__(self):
        self.context = contextvars.copy_context()
        self.enabled = PREFECT and bool(self.context.run(PREFECT_API_URL.value))
        self.threads: list[threading.Thread] = []

    def begin(self, job_key: str, job_name: str, folder: str, total: int):
        """Returns finish(result) to call when the job is over, or None when Prefect is not configured."""
        if not self.enabled:
            return None
        event, result = threading.Event(), {}
        _jobs[job_key] = (event, result)
        thread = threading.Thread(target=self.context.copy().run, args=(plugin_job,),
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
