"""Each plugin job as a Prefect flow run (when Prefect is installed and a Prefect API is configured): its
summary and failures become artifacts in the UI next to the download flows'. The standalone desktop app
is built without Prefect: there the recorder is simply off.

A job's record is written when the job ends, as one JSON file in the service's output
(`<output>/.oss-records/<when>-<id>.json`: written under a temporary name, then renamed, so a killed process
never leaves half a record). A sender thread turns the records into flow runs one by one and deletes each
file only once its flow run has finished; what it has not sent when the service stops (it gets what is left
of the stop's few seconds), or while the API cannot be reached, stays there and is sent by the next service
started on that output. No secret goes into a record or a flow run's parameters."""
from __future__ import annotations

import contextvars
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import tomllib
import uuid
from datetime import datetime
from pathlib import Path

from core.model import Counts
from core.report import Summary

log = logging.getLogger("feishu-bridge")
RECORDS_DIR = ".oss-records"  # in the service's output; dot names are the tool's own (no job folder has one)
RETRY_SECONDS = 30.0  # between attempts while the API cannot be reached (and rescans for other processes')
BUSY_SECONDS = 1.0  # between attempts to take the spool while another sender holds it
LOCK_NAME = "sending.lock"  # held while a sender sends: one at a time per output, across processes
_record: contextvars.ContextVar[dict] = contextvars.ContextVar("plugin_job_record")


def _plugin_job():
    from prefect import flow

    @flow(name="feishu-plugin-job", persist_result=False)
    def plugin_job(job_key: str, job_name: str, folder: str, total: int) -> Summary:
        """Publishes what one job of the service did, from its record (which the sender hands over out of
        the parameters: the failures' first rows can be long)."""
        from tasks.artifacts import publish_summary
        record = _record.get()
        tally = Counts(listed=record.get("listed", 0), downloaded=record.get("downloaded", 0),
                      failed=record.get("failed", 0), bytes=record.get("bytes", 0))
        summary = Summary.of(tally, record.get("seconds", 0.0), record.get("failed_csv"),
                             record.get("incomplete", ""),
                             notes=[f"job ran from {record.get('started')} to {record.get('ended')}"])
        publish_summary(summary, record.get("first_rows") or [])
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


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class JobRecorder:
    """Made by the service in its caller's context (where the Prefect settings live); `spool`: the folder
    records wait in (without one, nothing is recorded)."""

    def __init__(self, spool: Path | None = None):
        self.context = contextvars.copy_context()
        self.enabled = False
        if _may_name_an_api():
            from prefect.settings import PREFECT_API_URL
            self.enabled = bool(self.context.run(PREFECT_API_URL.value))
            self.plugin_job = _plugin_job() if self.enabled else None
        self.spool = spool
        self.thread: threading.Thread | None = None
        self._wake = threading.Event()  # a new record, or stop
        self._stopping = threading.Event()
        self._failing = False  # the last attempt could not reach the API (said once per streak)

    # -- the service's side ------------------------------------------------------------------------
    def start(self) -> "JobRecorder":
        """Sends what an earlier process left, then each record as it is written."""
        if self.enabled and self.spool is not None and self.thread is None:
            self.thread = threading.Thread(target=self.context.copy().run, args=(self._send_loop,),
                                           name="prefect-job-records", daemon=True)
            self.thread.start()
        return self

    def begin(self, job_key: str, job_name: str, folder: str, total: int):
        """Returns finish(values) to call when the job is over (once), or None when nothing is recorded.
        `values`: listed, downloaded, failed, bytes, failed_csv, first_rows, incomplete (all optional)."""
        if not self.enabled or self.spool is None:
            return None
        started, clock = _now(), time.monotonic()
        done = []

        def finish(values: dict) -> None:
            if done:
                return
            done.append(True)
            record = {"job_key": job_key, "job_name": job_name, "folder": folder, "total": total,
                      "started": started, "ended": _now(), "seconds": round(time.monotonic() - clock, 3)}
            for name in ("listed", "downloaded", "failed", "bytes"):
                record[name] = int(values.get(name) or 0)
            csv_path = values.get("failed_csv")
            record.update(failed_csv=str(csv_path) if csv_path else None,
                          first_rows=[list(row) for row in values.get("first_rows") or []],
                          incomplete=str(values.get("incomplete") or ""))
            try:
                self._write(record)
            except OSError as exc:
                log.warning("%s: the job's record could not be kept in %s: %s", job_name, self.spool,
                            exc.strerror or exc)
            self._wake.set()
        return finish

    def stop(self, timeout: float) -> None:
        """The sender finishes the flow run in hand if it can within `timeout`, and sends nothing more; what
        is left stays in the spool for the next start."""
        self._stopping.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(max(0.0, timeout))

    def _write(self, record: dict) -> None:
        self.spool.mkdir(exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.json"
        temp = self.spool / (name + ".tmp")
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.spool / name)

    # -- the sender (its own thread) -----------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            outcome = self._send_spooled()
            if self._stopping.is_set():
                return
            self._wake.wait(BUSY_SECONDS if outcome == "busy" else RETRY_SECONDS)

    def _send_spooled(self) -> str:
        """One pass over the spool, oldest first: 'sent', 'failing' (the API cannot be reached: try later) or
        'busy' (another sender has the spool)."""
        from core.workarea import _lock_file
        if not self.spool.is_dir():
            return "sent"
        try:
            fd = os.open(self.spool / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return "failing"
        try:
            if not _lock_file(fd):
                return "busy"
            for path in sorted(self.spool.glob("*.json")):
                if self._stopping.is_set():
                    break
                if not self._send(path):
                    return "failing"
            self._forget_stale_temps()
            return "sent"
        finally:
            os.close(fd)  # releases the lock

    def _send(self, path: Path) -> bool:
        """True when the record is done with (sent and deleted, or set aside); False to try again later."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("job_key"), str):
                raise ValueError("not a job record")
        except FileNotFoundError:
            return True
        except (OSError, ValueError) as exc:
            self._set_aside(path, ".bad", f"it cannot be read ({exc})")
            return True
        context = self.context.copy()
        context.run(_record.set, record)
        try:
            state = context.run(self.plugin_job, job_key=record["job_key"], job_name=str(record.get("job_name")),
                                folder=str(record.get("folder")), total=int(record.get("total") or 0),
                                return_state=True)
        except Exception as exc:  # noqa: BLE001 - the API is down or went away: the record waits
            if not self._failing:
                self._failing = True
                log.warning("job records wait in %s until the Prefect API can be reached (%s: %s)", self.spool,
                            type(exc).__name__, str(exc)[:200])
            return False
        self._failing = False
        if state.is_completed():
            path.unlink(missing_ok=True)
        else:
            self._set_aside(path, ".failed", f"its flow run ended {state.type.value}")
        return True

    def _set_aside(self, path: Path, suffix: str, why: str) -> None:
        log.warning("the job record %s is set aside (%s): %s", path.name, suffix, why)
        try:
            os.replace(path, path.with_name(path.name + suffix))
        except OSError:
            pass

    def _forget_stale_temps(self) -> None:
        """Temporary names a killed process left (a record being written lives for milliseconds)."""
        for temp in self.spool.glob("*.json.tmp"):
            try:
                if time.time() - temp.stat().st_mtime > 3600:
                    temp.unlink()
            except OSError:
                pass
