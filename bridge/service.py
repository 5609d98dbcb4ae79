"""The local WebSocket download service for the Bitable plugin.

It runs on the transfer engine's own event loop, so a download that needs a fresh link simply awaits the
plugin's `feishu_attachment_refresh` answer. Files go through the same engine, manifest and failure CSV
as the flows.

Concurrency: `download_concurrency` downloads at once per job, in both modes. The plugin always sends
`concurrent: 1`, which would make a job serial; in url mode the links come from the browser, in token
mode from the Bitable API, whose calls are kept under the token's rate limit by the shared client (five
links per call), so parallel downloads cost no extra API calls.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import Callable

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from bridge import protocol as p
from bridge.links import PluginLinks
from bridge.origins import Origins
from bridge.source import PluginSource
from core.engine import MiB, Engine, engine_for
from core.errors import UsageError
from core.model import MANIFEST_NAME, Plan, Settings
from core.network import Network
from core.naming import UniquePaths, clean_segment
from core.paths import prepare_output
from core.report import human_bytes
from core.run import Events, LocalBatches, close_run, open_run, run_job
from core.sources.feishu import DOMAINS, FeishuClient, LinkBroker
from core.workarea import WORK_DIR

log = logging.getLogger("feishu-bridge")
MAX_ATTEMPTS = 3  # per file in all, round 1 and round 2: the flows' default
PROGRESS_EVERY = 0.5  # seconds between progress acks, per file and per job
PROGRESS_MIN_BYTES = 4 * MiB  # smaller files only get their result
STOP_SECONDS = 4.0  # stop() returns within this, even when a client ignores the close handshake

try:
    VERSION = metadata.version("oss-bulk-downloader")
except metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0+source"


class StartError(UsageError):
    """The service cannot start; `key` and `params` let a window say it in its own language."""

    def __init__(self, key: str, message: str, **params):
        super().__init__(message)
        self.key, self.params = key, params


@dataclass
class BridgeSettings:
    host: str = "127.0.0.1"
    port: int = 11548
    output: Path = Path("./downloads")
    download_concurrency: int = 5
    http_connect_timeout: float = 30.0
    download_read_timeout: float = 3600.0  # 0: no limit
    personal_base_token: str = field(default="", repr=False)
    allow_origins: list[str] = field(default_factory=list)  # besides Feishu/Lark pages and localhost
    max_message_bytes: int = 8 * MiB  # larger messages get an error ack (the plugin sends 50 files a batch)
    max_frame_bytes: int = 64 * MiB  # larger ones are not even read: the connection is closed (1009)
    feishu_base_url: str | None = None  # the Open API; None: Feishu's own
    api_requests_per_second: float = 2.0  # the personal base token's limit
    retry_backoff: float = 1.0
    bwlimit: str | None = None  # rclone's --bwlimit over all the service's downloads together
    # An http:// proxy for the downloads and the Open API (the desktop app's field); None: the environment's
    # (and on Windows/macOS the system's), '' none. May hold a password: never logged.
    proxy: str | None = field(default=None, repr=False)


@dataclass
class _File:
    req: p.FileRequest
    rel: str
    state: str = "queued"  # queued | active | done | failed
    size: int = 0  # bytes saved


class PluginJob(Events):
    """One plugin job (one per connection): its folder, and a run of the one run loop (core/run.py) whose pages
    are the batches of files the plugin sends, in a thread of its own; round 2 and the report follow complete
    (or a disconnect). What the runner does to each file comes back here (Events, on the engine's loop) as the
    plugin's acks, the log and the desktop's counters."""

    def __init__(self, service: "BridgeService", config: p.JobConfig, send: Callable):
        self.service, self.config, self.send = service, config, send
        settings = service.settings
        self.name = config.folder_name
        self.folder = _new_folder(settings.output, clean_segment(self.name))
        self.files: dict[str, _File] = {}
        self.paths = UniquePaths()
        # Token mode: links come from the Bitable API (the Feishu flow's client), batched within its rate
        # limit; url mode: from the plugin.
        self.plugin_links = PluginLinks(send) if config.download_mode == "url" else None
        self.source = PluginSource(self.plugin_links, LinkBroker(service.feishu_client(), config.table_id)
                                   if config.download_mode == "token" else None)
        plan = Plan(self.folder, config.job_id or "job", max_attempts=MAX_ATTEMPTS,
                    retry_backoff=settings.retry_backoff, path_column=True, label=f"{self.name} (plugin)",
                    report_changes=False)
        self.run = open_run(plan, service.engine, self.source, events=self)
        self.batches = LocalBatches(self.run)
        self.summary = _in_thread(run_job, self.run, self.batches)  # waits for pages until complete
        self.batch: list = []  # the files of the message being read: one page
        self.accepting = True
        self.connected = True
        self.complete_requested = False
        self.finishing: asyncio.Task | None = None
        self.finished = False
        self.closed = False
        self.result: dict = {}
        self._background: set[asyncio.Task] = set()
        self._progress_at = 0.0
        self.recorded = service.recorder.begin(f"{plan.run_id}-{id(self)}", self.name, str(self.folder),
                                               config.total)

    # -- counters (the desktop's status card) -------------------------------------------------------
    def counts(self) -> dict:
        states = [f.state for f in self.files.values()]
        done, failed, active = states.count("done"), states.count("failed"), states.count("active")
        expected = max(self.config.total, len(states)) if self.accepting else len(states)  # all sent
        return {"name": self.name, "folder": str(self.folder), "completed": done, "failed": failed,
                "current": active, "pending": expected - done - failed - active}

    # -- files ------------------------------------------------------------------------------------
    def add(self, item) -> None:
        req = p.file_request(item)
        if not self.accepting:
            raise p.ProtocolError("the job is finishing: no more files are taken", req.order)
        if len(self.files) >= p.MAX_FILES_PER_JOB:
            raise p.ProtocolError(f"too many files: at most {p.MAX_FILES_PER_JOB} per job", req.order)
        if req.key in self.files:
            raise p.ProtocolError(f"file {req.name[:100]!r} (order {req.order}) was already sent", req.order)
        if self.source.token_links is not None and not req.token:
            raise p.ProtocolError(f"invalid file {req.name[:100]!r}: token mode needs the attachment's token",
                                  req.order)
        folders = [clean_segment(s) for s in req.path.replace("\\", "/").split("/") if s.strip(" .")]
        try:
            rel = self.paths.claim(folders, clean_segment(req.name))
        except ValueError as exc:
            raise p.ProtocolError(str(exc), req.order) from None
        self.files[req.key] = _File(req, rel)
        obj = self.source.add(req, rel)
        self.source.upcoming([obj])  # token mode: its link rides along with the next API call
        self.batch.append(obj)

    def sent(self) -> None:
        """The end of a link message: its files are the run loop's next page."""
        if self.batch:
            self.source.feed(self.batch)
            self.batch = []

    # -- what the runner does to each file (Events, on the loop) ----------------------------------------
    def outcome(self, obj, outcome) -> None:
        f = self.files[obj.key]
        req = f.req
        if outcome.ok:
            f.state, f.size = "done", outcome.bytes_fetched
            log.info("%s: saved %s (%s)", self.name, f.rel, human_bytes(f.size), extra={"bridge_event": True})
            self.service.event("file", job=self.name, ok=True, path=f.rel, size=f.size)
            self._spawn(self.send(p.ack("success", f"saved {f.rel}", stage="file", order=req.order,
                                        name=f.rel.rpartition("/")[2], path=f.rel, size=f.size)))
        else:
            f.state = "failed"
            log.warning("%s: failed %s: %s", self.name, f.rel, outcome.error, extra={"bridge_event": True})
            self.service.event("file", job=self.name, ok=False, path=f.rel, error=outcome.error)
            self._spawn(self.send(p.ack("error", f"{req.name}: {outcome.error}", stage="file", order=req.order,
                                        name=req.name, path=f.rel, attempts=outcome.attempts,
                                        reason=outcome.error)))
        self.service.changed()
        loop = asyncio.get_running_loop()
        if loop.time() - self._progress_at >= PROGRESS_EVERY:  # the job as a whole (no order)
            self._progress_at = loop.time()
            c = self.counts()
            total = c["completed"] + c["failed"] + c["current"] + c["pending"]
            done = c["completed"] + c["failed"]
            self._spawn(self.send(p.ack("progress", f"{done}/{total}", stage="progress",
                                        percentage=round(100 * done / total, 1) if total else 0,
                                        completed=c["completed"], failed=c["failed"], total=total)))

    def progress(self, obj):
        """on_bytes for one attempt: the file is "current" once a request for it has its slot (the runner
        has more files in hand than requests in flight); a progress ack at most every PROGRESS_EVERY seconds
        (large files)."""
        f = self.files[obj.key]
        order, size = f.req.order, f.req.size
        loop = asyncio.get_running_loop()
        state = {"bytes": 0, "at": loop.time(), "sent": -1}

        def on_bytes(n: int) -> None:
            if f.state != "active":  # queued, or a failure of round 1 being retried
                f.state = "active"
                self.service.changed()
            if order is None or size < PROGRESS_MIN_BYTES:
                return
            state["bytes"] += n
            now = loop.time()
            if now - state["at"] >= PROGRESS_EVERY:
                percentage = min(99, state["bytes"] * 100 // size)
                if percentage > state["sent"]:
                    state["at"], state["sent"] = now, percentage
                    self._spawn(self._send_progress(f, percentage))
        return on_bytes

    async def _send_progress(self, f: _File, percentage: int) -> None:
        if f.state == "active":  # not after its result
            await self.send(p.ack("progress", f"{percentage}%", stage="progress", order=f.req.order,
                                  percentage=percentage, name=f.req.name))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the end of a job -----------------------------------------------------------------------
    def complete(self) -> None:
        self.complete_requested = True
        self._finish_soon()

    def disconnected(self) -> None:
        """The plugin's socket closed. Token mode: the job goes on alone (the plugin closes right after
        complete). Url mode: what has a link goes on; nothing new can be asked for; the job is finished
        either way, so its CSV, ZIP and log line exist."""
        self.connected = False
        if self.plugin_links is not None:
            self.plugin_links.disconnect()
        if not self.complete_requested and not self.finished:
            log.warning("%s: the plugin disconnected before the job was complete; finishing with the %d"
                        " file(s) it sent", self.name, len(self.files), extra={"bridge_event": True})
            self.service.event("disconnected", job=self.name, files=len(self.files))
        self._finish_soon()

    def _finish_soon(self) -> None:
        if self.finishing is None:
            self.accepting = False
            self.sent()
            self.source.end()  # the listing ends with the files sent so far; round 2 and the report follow
            self.finishing = asyncio.create_task(self._finish())

    def retrying(self, count: int) -> None:
        log.info("%s: retrying %d failed file(s) with new links", self.name, count, extra={"bridge_event": True})
        self.service.event("retry", job=self.name, count=count)
        self._spawn(self.send(p.ack("success", f"retrying {count} failed file(s)", stage="retry_failed_files",
                                    failed=count)))

    async def _finish(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._report(await self.summary)
        except Exception as exc:  # noqa: BLE001 - one line, and the job still ends
            log.error("%s: the job could not be finished: %s: %s", self.name, type(exc).__name__, exc,
                      extra={"bridge_event": True})
            self.service.event("refused", reason=f"{self.name}: {type(exc).__name__}: {exc}")
            await loop.run_in_executor(None, self.close)
            self.result = {**self.counts(), "csv": None, "zip": None, "finished_at": time.strftime("%H:%M:%S")}
            self.finished = True
            self._record(incomplete=f"the job could not be finished: {type(exc).__name__}: {exc}")
            self.service.changed()
            await self.send(p.ack("error", f"the job could not be finished: {type(exc).__name__}: {exc}",
                                  stage="protocol"))

    async def _report(self, summary) -> None:
        loop = asyncio.get_running_loop()
        csv_path = summary.failed_csv
        first_rows = self.batches.first_rows
        if not self.files:
            await loop.run_in_executor(None, self._discard_empty)
            log.info("%s: no files were sent; nothing kept", self.name, extra={"bridge_event": True})
        c = self.counts()
        zip_path = None
        if self.config.zip_after_download and c["completed"]:
            from core.zipper import zip_folder
            try:
                zip_path = self.folder.with_name(self.folder.name + ".zip")
                await loop.run_in_executor(None, zip_folder, self.folder, zip_path, self.folder.name)
            except OSError as exc:
                log.error("%s: the ZIP could not be written: %s", self.name, exc.strerror or exc,
                          extra={"bridge_event": True})
                self.service.event("zip_failed", job=self.name, reason=str(exc.strerror or exc))
                zip_path = None
            else:
                await self.send(p.ack("success", f"zipped {zip_path.name}", stage="zip", path=str(zip_path)))
        await loop.run_in_executor(None, self.close)
        self.result = {**c, "csv": str(csv_path) if csv_path else None, "zip": str(zip_path) if zip_path else None,
                       "finished_at": time.strftime("%H:%M:%S")}
        self.finished = True
        self._record(failed_csv=csv_path, first_rows=first_rows)
        if self.files:
            log.info("%s: job finished: %d saved, %d failed in %s%s%s", self.name, c["completed"], c["failed"],
                     self.folder, f"; failures listed in {csv_path}" if csv_path else "",
                     f"; ZIP: {zip_path}" if zip_path else "", extra={"bridge_event": True})
        self.service.event("job_finished", **self.result)
        await self.send(p.ack("success" if not c["failed"] else "error",
                              f"job finished: {c['completed']} saved, {c['failed']} failed", stage="job_complete",
                              jobId=self.config.job_id, completed=c["completed"], failed=c["failed"],
                              folder=str(self.folder), failedCsv=self.result["csv"], zip=self.result["zip"]))

    def close(self) -> None:
        """The job's manifest and output (its lock); the service's engine goes on. Off the loop."""
        if not self.closed:
            self.closed = True
            close_run(self.run)

    def _discard_empty(self) -> None:
        """A job without a single file leaves no folder behind (its manifest and work area only)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            (self.folder / (MANIFEST_NAME + suffix)).unlink(missing_ok=True)
        shutil.rmtree(self.folder / WORK_DIR, ignore_errors=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass

    def abandon(self) -> None:
        """The service stops with this job unfinished (its engine closed: what was in flight is cancelled):
        what finished stays recorded; reruns resume."""
        self.source.stop()  # the run loop stops where it is: no round 2, no report (partial files stay)
        self.summary.thread.join(STOP_SECONDS)
        self.close()
        self._record(incomplete="the service stopped before the job ended")

    def _record(self, **extra) -> None:
        """The job's record for Prefect (bridge/record.py), when recording is on."""
        if self.recorded:
            c = self.counts()
            self.recorded({"listed": len(self.files), "downloaded": c["completed"], "failed": c["failed"],
                           "bytes": sum(f.size for f in self.files.values()), **extra})


def _in_thread(fn, *args) -> asyncio.Future:
    """`fn(*args)` in a thread of its own (a job's run loop waits on the plugin for minutes: not a pool's
    thread), as a future of the calling loop; `.thread` is the thread."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def work() -> None:
        try:
            result = fn(*args)
            outcome = lambda: future.done() or future.set_result(result)  # noqa: E731
        except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits it
            outcome = lambda exc=exc: future.done() or future.set_exception(exc)  # noqa: E731 - exc outlives the block
        try:
            loop.call_soon_threadsafe(outcome)
        except RuntimeError:  # the loop is closed: the service stopped, nobody waits
            pass
    future.thread = threading.Thread(target=work, name="plugin-job", daemon=True)
    future.thread.start()
    return future


def _new_folder(output: Path, name: str) -> Path:
    """output/name, or name_1, name_2 ... when that folder or its ZIP exists (an earlier job's)."""
    n = 0
    while True:
        folder = output / (f"{name}_{n}" if n else name)
        if not folder.with_name(folder.name + ".zip").exists():
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                pass
        n += 1


class BridgeService:
    def __init__(self, settings: BridgeSettings, on_event: Callable[[str, dict], None] | None = None):
        self.settings = settings
        self.on_event = on_event or (lambda kind, info: None)
        self.origins = Origins(settings.allow_origins)
        self.engine: Engine | None = None
        self.jobs: list[PluginJob] = []
        self.connections = 0
        self.stopping = False
        self._feishu: FeishuClient | None = None
        self._server = None
        self.port = settings.port

    # -- lifecycle (called from any thread) -------------------------------------------------------
    def start(self) -> "BridgeService":
        s = self.settings
        try:
            s.output = prepare_output(s.output)
        except UsageError as exc:
            raise StartError("output_not_writable", str(exc), path=str(s.output)) from None
        from bridge.record import RECORDS_DIR, JobRecorder
        self.recorder = JobRecorder(s.output / RECORDS_DIR)  # off unless a Prefect API is configured
        if s.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: other machines on the network can reach this service", s.host)
        try:
            network = Network.for_api(s.proxy, "the proxy setting")
        except UsageError as exc:
            raise StartError("bad_proxy", str(exc), reason=str(exc)) from None
        self.engine = engine_for(self.run_settings(), network).__enter__()
        try:
            self._server = self.engine.run(self._listen())
        except OSError as exc:
            self.engine.close()
            self.engine = None
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                raise StartError("port_in_use", f"cannot listen on {s.host}:{s.port}: the port is in use"
                                 " (another download service may be running)", host=s.host, port=s.port) from None
            raise StartError("cannot_listen", f"cannot listen on {s.host}:{s.port}: {reason}", host=s.host,
                             port=s.port, reason=reason) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.recorder.start()  # sends what an earlier service left in the output, then each job's record
        log.info("listening on ws://%s:%s, saving to %s, %d downloads at once", s.host, self.port, s.output,
                 s.download_concurrency, extra={"bridge_event": True})
        self.event("started", host=s.host, port=self.port, output=str(s.output))
        return self

    async def _listen(self):
        s = self.settings
        return await serve(self._handle, s.host, s.port, process_request=self._check_origin,
                           max_size=s.max_frame_bytes, close_timeout=1,
                           logger=_OneLine(logging.getLogger("websockets.server")))

    def stop(self) -> None:
        """Within STOP_SECONDS, also when a client ignores the close handshake. Unfinished jobs stay
        resumable: their manifests say what is done."""
        if self.engine is None:
            return
        deadline = time.monotonic() + STOP_SECONDS
        self.stopping = True
        if self._server is not None:
            self._server.close()
            try:
                self.engine.run(self._server.wait_closed(), timeout=2.0)
            except TimeoutError:
                log.info("a client did not close its connection in time: dropped")
        if self._feishu is not None:
            try:
                self.engine.run(self._feishu.close(), timeout=0.5)
            except TimeoutError:
                pass
            self._feishu = None
        self.engine.close()  # cancels what is in flight; partial files stay resumable
        self.engine = None
        for job in self.jobs:
            if not job.finished:
                job.abandon()
        self.recorder.stop(deadline - time.monotonic())  # records not sent yet stay for the next start
        self.event("stopped")

    def run_settings(self) -> Settings:
        """How hard the service's one engine pushes, for all its jobs: `download_concurrency` requests in
        flight (the plugin's own `concurrent: 1` is not obeyed: README)."""
        s = self.settings
        return Settings(concurrency=s.download_concurrency, connect_timeout=s.http_connect_timeout,
                        read_timeout=s.download_read_timeout, bwlimit=s.bwlimit)

    def status(self) -> dict:
        """The current job's counters (the latest unfinished one) and a line per finished job."""
        jobs = list(self.jobs)
        current = next((j for j in reversed(jobs) if not j.finished), None)
        counts = current.counts() if current else {"name": "", "current": 0, "completed": 0, "pending": 0,
                                                    "failed": 0}
        return {"connected": self.connections > 0, **counts, "job": counts["name"],
                "history": [dict(j.result, name=j.name) for j in jobs if j.finished and j.files]}

    def changed(self) -> None:
        self.on_event("status", {})

    def event(self, kind: str, **info) -> None:
        self.on_event(kind, info)

    def feishu_client(self) -> FeishuClient:
        """One Bitable API client for the service: one rate limit for all token-mode jobs."""
        if self._feishu is None:
            s = self.settings
            self._feishu = FeishuClient(s.feishu_base_url or DOMAINS["feishu"], s.personal_base_token,
                                        s.api_requests_per_second, s.http_connect_timeout,
                                        s.download_read_timeout, backoff=s.retry_backoff,
                                        network=self.engine.network)
        return self._feishu

    # -- one WebSocket connection -----------------------------------------------------------------
    def _check_origin(self, connection, request):
        origins = request.headers.get_all("Origin")
        origin = origins[0] if len(origins) == 1 else None if not origins else ", ".join(origins)
        if self.origins.allows(origin):
            return None
        origin = origin[:200]
        log.warning("refused a connection from %s: not a Feishu/Lark page; to allow it, start with"
                    " --allow-origin %s (desktop app: advanced settings, allowed origins)", origin, origin,
                    extra={"bridge_event": True})
        self.event("origin_refused", origin=origin)
        return connection.respond(HTTPStatus.FORBIDDEN, "This page may not use the download service.\n")

    async def _handle(self, ws) -> None:
        self.connections += 1
        self.changed()
        job: PluginJob | None = None
        sending = asyncio.Lock()

        async def send(text: str) -> None:
            async with sending:
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    pass
        try:
            async for raw in ws:
                try:
                    job = await self._message(raw, job, send)
                except p.ProtocolError as exc:
                    log.warning("refused a message: %s", exc, extra={"bridge_event": True})
                    self.event("refused", reason=str(exc))
                    await send(_error_ack(exc))
                except Exception as exc:  # noqa: BLE001 - one line; the connection stays usable
                    reason = f"{type(exc).__name__}: {exc}"
                    log.error("could not handle a message: %s", reason, extra={"bridge_event": True})
                    self.event("refused", reason=reason)
                    await send(p.ack("error", f"internal error: {type(exc).__name__}", stage="protocol"))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            if job is not None and not job.finished and not self.stopping:
                job.disconnected()
            self.changed()

    async def _message(self, raw, job: PluginJob | None, send: Callable) -> PluginJob | None:
        kind, data = p.parse(raw, self.settings.max_message_bytes)
        if kind == p.PROBE:
            await send(p.ack("success", "ready", stage="server_info", version=p.PROTOCOL_VERSION,
                             serviceVersion=VERSION))
        elif kind == p.CONFIG:
            if job is not None and not job.finished:
                raise p.ProtocolError("a job is already running on this connection")
            config = p.job_config(data)
            if config.download_mode == "token" and not self.settings.personal_base_token:
                raise p.ProtocolError("token mode needs a personal base token: set PERSONAL_BASE_TOKEN"
                                      " or start the service with --personal-base-token")
            job = PluginJob(self, config, send)
            self.jobs.append(job)
            n = self.settings.download_concurrency
            log.info("%s: new %s-mode job of %d file(s), saving to %s, %d downloads at once", job.name,
                     config.download_mode, config.total, job.folder, n, extra={"bridge_event": True})
            self.event("job_started", job=job.name, folder=str(job.folder), mode=config.download_mode,
                       total=config.total)
            await send(p.ack("success", "config accepted", stage="server_info", version=p.PROTOCOL_VERSION,
                             serviceVersion=VERSION, jobId=config.job_id, folder=str(job.folder), concurrency=n))
        elif kind == p.LINK:
            if job is None:
                raise p.ProtocolError("send feishu_attachment_config before any file")
            for item in p.file_items(data):
                try:
                    job.add(item)
                except p.ProtocolError as exc:  # this file only; the batch's other files go on
                    log.warning("%s: refused a file: %s", job.name, exc, extra={"bridge_event": True})
                    self.event("refused", reason=str(exc))
                    await send(_error_ack(exc))
            job.sent()
            self.changed()
        elif kind == p.REFRESH:
            if job is None or job.plugin_links is None:
                log.info("ignored a link from the plugin: no url-mode job on this connection")
            else:
                job.plugin_links.answer(data)
        elif kind == p.COMPLETE:
            if job is None:
                raise p.ProtocolError("no job on this connection")
            job.complete()
        else:
            raise p.ProtocolError(f"unknown message type {kind[:60]!r}")
        return job


class _OneLine(logging.LoggerAdapter):
    """websockets logs a traceback for each malformed handshake (a browser opening the port as a web page,
    a port scanner): one line with the reason instead."""

    def process(self, msg, kwargs):
        if kwargs.pop("exc_info", None) and sys.exc_info()[1] is not None:
            msg = f"{msg}: {str(sys.exc_info()[1]).replace('%', '%%')}"
        return msg, kwargs


def _error_ack(exc: p.ProtocolError) -> str:
    if exc.order is not None:
        return p.ack("error", str(exc), stage="file", order=exc.order)
    return p.ack("error", str(exc), stage="protocol")
