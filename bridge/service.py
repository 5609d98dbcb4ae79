"""The local WebSocket download service for the Bitable plugin.

It runs on the transfer engine's own event loop, so a download that needs a fresh link simply awaits the
plugin's `feishu_attachment_refresh` answer. Files go through the same engine, manifest and failure CSV
as the flows.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from bridge import protocol as p
from tasks.errors import DownloadError, UsageError, as_download_error
from tasks.feishu import DOMAINS, Attachment, FeishuClient, LinkBroker, link_expired
from tasks.keys import FAILED_CSV_NAME, prepare_output
from tasks.manifest import Manifest, Outcome
from tasks.naming import UniquePaths, clean_segment
from tasks.report import write_failed_csv
from tasks.transfer import UNKNOWN_SIZE, Engine
from tasks.workarea import Output

log = logging.getLogger("feishu-bridge")
ATTEMPTS = 3
REFRESH_WAIT = 120.0
PROGRESS_EVERY = 0.5
DEFAULT_ORIGINS = [
    re.compile(r"https://([a-z0-9-]+\.)*(feishu\.cn|feishu\.net|larksuite\.com|larkoffice\.com|feishucdn\.com)"),
    re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"),
    None,  # no Origin header: not a browser (scripts, the desktop app's own checks)
]

try:
    VERSION = metadata.version("oss-bulk-downloader")
except metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0+source"


@dataclass
class BridgeSettings:
    host: str = "127.0.0.1"
    port: int = 11548
    output: Path = Path("./downloads")
    download_concurrency: int = 5
    http_connect_timeout: float = 30.0
    download_read_timeout: float = 3600.0  # 0: no limit
    personal_base_token: str = field(default="", repr=False)
    allowed_origins: list = field(default_factory=lambda: list(DEFAULT_ORIGINS))
    max_message_bytes: int = 4 * 1024 * 1024
    feishu_base_url: str | None = None  # the Open API; None: Feishu's own
    api_requests_per_second: float = 2.0  # the personal base token's limit
    retry_backoff: float = 1.0


class Job:
    """One plugin job (one per connection): its folder, manifest, downloads and final report."""

    def __init__(self, service: "BridgeService", config: p.JobConfig, send: Callable):
        self.service, self.config, self.send = service, config, send
        settings = service.settings
        self.folder = _unique_folder(settings.output, clean_segment(config.folder_name))
        self.folder.mkdir(parents=True)
        self.out = Output(self.folder)
        self.manifest = Manifest(self.folder)
        self.limit = asyncio.Semaphore(min(config.concurrent or settings.download_concurrency,
                                           settings.download_concurrency))
        self.requests: dict[str, tuple[p.FileRequest, str]] = {}
        self.tasks: list[asyncio.Task] = []
        self.outcomes: dict[str, Outcome] = {}
        self.refreshes: dict[int, asyncio.Future] = {}
        self.paths = UniquePaths()
        # Token mode: links come from the Bitable API (the Feishu flow's code), batched within its rate limit.
        self.links = (LinkBroker(service.feishu_client(), config.table_id)
                      if config.download_mode == "token" else None)
        self.connected = True
        self.finished = False
        self.active = 0
        self.recorded = service.recorder.begin(f"{config.job_id or 'job'}-{id(self)}", config.folder_name,
                                               str(self.folder), config.total)
        self._progress_at = 0.0

    # -- files ------------------------------------------------------------------------------------
    def add(self, req: p.FileRequest) -> None:
        if len(self.requests) >= p.MAX_FILES_PER_JOB:
            raise p.ProtocolError(f"too many files: at most {p.MAX_FILES_PER_JOB} per job")
        if req.key in self.requests:
            raise p.ProtocolError(f"file {req.name!r} (order {req.order}) was already sent")
        if self.links is not None and not req.token:
            raise p.ProtocolError(f"invalid file {req.name!r}: token mode needs the attachment's token")
        rel = self._place(req)
        self.requests[req.key] = (req, rel)
        if self.links is not None:
            self.links.expect([_attachment(req)])
        self.tasks.append(asyncio.create_task(self._download(req, rel)))

    def _place(self, req: p.FileRequest) -> str:
        """A unique, safe relative path: the plugin's folder path and name, cleaned; name_1.ext on clashes."""
        folders = [clean_segment(s) for s in re.split(r"[/\\]+", req.path) if s.strip(" .")]
        try:
            return self.paths.claim(folders, clean_segment(req.name))
        except ValueError as exc:
            raise p.ProtocolError(str(exc)) from None

    async def _download(self, req: p.FileRequest, rel: str, fresh: bool = False) -> Outcome:
        """Up to ATTEMPTS tries (retryable errors only); the plugin hears of the result either way."""
        link = {"url": "" if fresh else req.download_url}

        async def sign(refresh: bool):
            if self.links is not None:
                return await self.links.link(_attachment(req), refresh or fresh)
            if refresh or not link["url"]:
                link["url"] = await self._fresh_link(req)
            return link["url"]

        async with self.limit:
            self.active += 1
            try:
                for attempts in range(1, ATTEMPTS + 1):
                    try:
                        got = await self.service.engine.fetch(sign, self.out, rel, req.size or UNKNOWN_SIZE, "",
                                                              link_expired)
                        break
                    except Exception as exc:  # noqa: BLE001 - reported to the plugin
                        error = as_download_error(exc)
                        if not error.retryable or attempts == ATTEMPTS:
                            return await self._failed(req, rel, attempts, error)
                        await asyncio.sleep(self.service.settings.retry_backoff * 2 ** (attempts - 1))
            finally:
                self.active -= 1
        outcome = Outcome(req.key, got.size, "", attempts, bytes_fetched=got.size, path=rel)
        self._finish(outcome)
        await self.send(p.ack("success", f"saved {rel}", stage="file", order=req.order, name=rel.rpartition("/")[2],
                              path=rel,
                              size=got.size))
        return outcome

    async def _failed(self, req: p.FileRequest, rel: str, attempts: int, error: DownloadError) -> Outcome:
        outcome = Outcome(req.key, req.size, "", attempts, str(error), error.retryable, path=rel)
        self._finish(outcome)
        await self.send(p.ack("error", f"{req.name}: {error}", stage="file", order=req.order, name=req.name,
                              attempts=attempts, reason=str(error)))
        return outcome

    async def _fresh_link(self, req: p.FileRequest) -> str:
        if req.order is None:
            raise DownloadError("the link expired and the file has no order to ask for a new one")
        if not self.connected:
            raise DownloadError("the plugin disconnected: no fresh link can be asked for")
        future = asyncio.get_running_loop().create_future()
        self.refreshes[req.order] = future
        await self.send(p.ack("refresh", "need a download link", order=req.order, stage="refresh"))
        try:
            return await asyncio.wait_for(future, REFRESH_WAIT)
        except asyncio.TimeoutError:
            raise DownloadError("the plugin sent no fresh link in time", retryable=True) from None
        finally:
            self.refreshes.pop(req.order, None)

    def on_refresh(self, data: dict) -> None:
        try:
            order = int(data.get("order"))
        except (TypeError, ValueError):
            raise p.ProtocolError("refresh without a valid order") from None
        future = self.refreshes.get(order)
        if future is None or future.done():
            raise p.ProtocolError(f"no link was requested for order {order}")
        if data.get("downloadUrl"):
            future.set_result(str(data["downloadUrl"]))
        else:
            future.set_exception(DownloadError(f"the plugin could not refresh the link: {data.get('error') or 'no URL'}"))

    def _finish(self, outcome: Outcome) -> None:
        self.outcomes[outcome.key] = outcome
        self.manifest.add([outcome], self.config.job_id or "job")
        self.service.changed()
        loop = asyncio.get_running_loop()
        if loop.time() - self._progress_at >= PROGRESS_EVERY:
            self._progress_at = loop.time()
            total = max(self.config.total, len(self.requests))
            done = len(self.outcomes)
            asyncio.create_task(self.send(p.ack("progress", f"{done}/{total}", stage="progress",
                                                percentage=round(100 * done / total, 1) if total else 0,
                                                completed=done, total=total)))

    # -- the end of a job -----------------------------------------------------------------------
    async def complete(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        retry = [self.requests[k] for k, o in self.outcomes.items() if not o.ok]
        if retry:  # once more, with fresh links
            await asyncio.gather(*(self._download(req, rel, fresh=True) for req, rel in retry),
                                 return_exceptions=True)
        loop = asyncio.get_running_loop()
        run_id = self.config.job_id or "job"
        csv_path, first_rows = await loop.run_in_executor(None, write_failed_csv, self.manifest, run_id,
                                                          self.out, FAILED_CSV_NAME, True)
        ok = sum(o.ok for o in self.outcomes.values())
        failed = len(self.outcomes) - ok
        if self.recorded:
            self.recorded({"listed": len(self.outcomes), "downloaded": ok, "failed": failed,
                           "bytes": sum(o.bytes_fetched for o in self.outcomes.values()),
                           "failed_csv": csv_path, "first_rows": first_rows})
        if self.config.zip_after_download:
            from tasks.zipper import zip_folder
            zip_path = self.folder.with_name(self.folder.name + ".zip")
            await loop.run_in_executor(None, zip_folder, self.folder, zip_path, self.folder.name)
            await self.send(p.ack("success", f"zipped {zip_path.name}", stage="zip", path=str(zip_path)))
        self.manifest.close()
        self.out.close()
        self.finished = True
        self.service.changed()
        await self.send(p.ack("success" if not failed else "error",
                              f"job finished: {ok} saved, {failed} failed", stage="job_complete",
                              jobId=self.config.job_id, completed=ok, failed=failed, folder=str(self.folder),
                              failedCsv=str(csv_path) if csv_path else None))


def _attachment(req: p.FileRequest) -> Attachment:
    return Attachment(req.token, req.field_id, req.record_id)


def _unique_folder(output: Path, name: str) -> Path:
    folder = output / name
    n = 0
    while folder.exists():
        n += 1
        folder = output / f"{name}_{n}"
    return folder


class BridgeService:
    def __init__(self, settings: BridgeSettings, on_event: Callable[[str, str], None] | None = None):
        self.settings = settings
        self.on_event = on_event or (lambda kind, message: None)
        self.engine: Engine | None = None
        self.jobs: list[Job] = []
        self.connections = 0
        self._feishu: FeishuClient | None = None
        self._server = None
        self.port = settings.port

    # -- lifecycle (called from any thread) -------------------------------------------------------
    def start(self) -> "BridgeService":
        s = self.settings
        s.output = prepare_output(s.output)
        from bridge.record import JobRecorder
        self.recorder = JobRecorder()
        if s.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: other machines on the network can reach this service", s.host)
        self.engine = Engine(s.download_concurrency, s.http_connect_timeout, s.download_read_timeout).__enter__()
        try:
            self._server = self.engine.run(self._listen())
        except OSError as exc:
            self.engine.close()
            raise UsageError(f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.on_event("started", f"listening on ws://{s.host}:{self.port}")
        log.info("listening on ws://%s:%s, saving to %s", s.host, self.port, s.output)
        return self

    async def _listen(self):
        return await serve(self._handle, self.settings.host, self.settings.port,
                           origins=self.settings.allowed_origins, max_size=self.settings.max_message_bytes)

    def stop(self) -> None:
        if self.engine is None:
            return
        if self._server is not None:
            self._server.close()
            self.engine.run(self._server.wait_closed(), timeout=10)
        for job in self.jobs:
            if not job.finished:
                job.manifest.close()
                job.out.close()
                if job.recorded:
                    job.recorded({"listed": len(job.requests), "downloaded": sum(o.ok for o in job.outcomes.values()),
                                  "failed": sum(not o.ok for o in job.outcomes.values())})
        if self._feishu is not None:
            self.engine.run(self._feishu.close(), timeout=10)
            self._feishu = None
        self.engine.close()  # cancels what is in flight; partial files stay resumable
        self.engine = None
        self.recorder.wait()
        self.on_event("stopped", "stopped")

    def status(self) -> dict:
        outcomes = [o for job in self.jobs for o in job.outcomes.values()]
        queued = sum(len(job.requests) for job in self.jobs)
        return {"connected": self.connections > 0, "completed": sum(o.ok for o in outcomes),
                "failed": sum(not o.ok for o in outcomes), "pending": queued - len(outcomes),
                "current": sum(job.active for job in self.jobs)}

    def changed(self) -> None:
        self.on_event("status", "")

    def feishu_client(self) -> FeishuClient:
        """One Bitable API client for the service: one rate limit for all token-mode jobs."""
        if self._feishu is None:
            s = self.settings
            self._feishu = FeishuClient(s.feishu_base_url or DOMAINS["feishu"], s.personal_base_token,
                                        s.api_requests_per_second, s.http_connect_timeout,
                                        s.download_read_timeout, backoff=s.retry_backoff)
        return self._feishu

    # -- one WebSocket connection -----------------------------------------------------------------
    async def _handle(self, ws) -> None:
        self.connections += 1
        self.changed()
        job: Job | None = None

        async def send(text: str) -> None:
            if job is None or job.connected:
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    pass
        try:
            async for raw in ws:
                try:
                    kind, data = p.parse(raw)
                    if kind == p.PROBE:
                        await send(p.ack("success", "ready", stage="server_info", version=VERSION))
                    elif kind == p.CONFIG:
                        if job is not None and not job.finished:
                            raise p.ProtocolError("a job is already running on this connection")
                        config = p.job_config(data)
                        if config.download_mode == "token" and not self.settings.personal_base_token:
                            raise p.ProtocolError("token mode needs a personal base token: set PERSONAL_BASE_TOKEN"
                                                  " or start the service with --personal-base-token")
                        job = Job(self, config, send)
                        self.jobs.append(job)
                        self.on_event("job", f"job {config.folder_name}: saving to {job.folder}")
                        await send(p.ack("success", "config accepted", stage="server_info", version=VERSION,
                                         jobId=config.job_id, folder=str(job.folder)))
                    elif kind == p.LINK:
                        if job is None:
                            raise p.ProtocolError("send feishu_attachment_config before any file")
                        for req in p.file_requests(data):
                            job.add(req)
                        self.changed()
                    elif kind == p.REFRESH:
                        if job is None:
                            raise p.ProtocolError("no job on this connection")
                        job.on_refresh(data)
                    elif kind == p.COMPLETE:
                        if job is None:
                            raise p.ProtocolError("no job on this connection")
                        asyncio.create_task(job.complete())
                    else:
                        raise p.ProtocolError(f"unknown message type {kind!r}")
                except p.ProtocolError as exc:
                    await send(p.ack("error", str(exc), stage="protocol"))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            if job is not None:
                job.connected = False  # the job goes on; links can no longer be refreshed
            self.changed()
