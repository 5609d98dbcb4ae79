"""The published Bitable plugin's side of the local download service, in Python, message for message.

Read from baitaotao521/download-files: Form.vue (requestDesktopClientVersion, ensureDesktopClientVersion,
MIN_DESKTOP_CLIENT_VERSION), src/utils/index.js (compareSemanticVersions) and
src/components/downloader/WebSocketDownloader.js (download, _bindLifecycle, _pushTokenFilesInBatches).
Links come from the fake Feishu Open API, as the plugin's getAttachmentUrl gets them from Feishu.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter

import aiohttp
from websockets.asyncio.client import connect

from infra.feishu_server import GOOD_TOKEN, FeishuServer

MIN_DESKTOP_CLIENT_VERSION = "1.1.8"
ACK = "feishu_attachment_ack"
PLUGIN_ORIGIN = "https://ext.baseopendev.com"  # where published Bitable plugins appear to be served


def compare_semantic_versions(left, right) -> int:
    """src/utils/index.js: major.minor.patch, a leading v ignored, Number.parseInt per part (NaN → 0)."""
    def parse(value):
        parts = []
        for item in str(value or "").strip().lstrip("vV").split("."):
            digits = ""
            for ch in item.strip():
                if ch.isdigit() or (not digits and ch in "+-"):
                    digits += ch
                else:
                    break
            try:
                parts.append(int(digits))
            except ValueError:
                parts.append(0)
        return (parts + [0, 0, 0])[:3]
    a, b = parse(left), parse(right)
    return (a > b) - (a < b)


def js_number(value) -> float:
    """JavaScript's Number(value) for what JSON can carry."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else 0.0
        except ValueError:
            return math.nan
    return math.nan


def positive_integer(value) -> int | None:
    number = js_number(value)
    return int(number) if math.isfinite(number) and number.is_integer() and number > 0 else None


class PublishedPlugin:
    def __init__(self, port: int, fs: FeishuServer, origin: str = PLUGIN_ORIGIN):
        self.url = f"ws://127.0.0.1:{port}"  # buildWebSocketUrl('127.0.0.1', port)
        self.fs, self.origin = fs, origin
        self.acks: list[dict] = []
        self.fatal: list[dict] = []           # error acks without a positive order: the plugin aborts here
        self.refresh_asked: Counter = Counter()
        self.concurrent_refresh: list[int] = []  # a refresh ack for an order whose link was still being fetched
        self.hold: set[int] = set()           # orders whose refresh the plugin never answers (a stuck tab)
        self.stale_first: set[int] = set()    # orders whose first link has expired when it arrives
        self.answered: Counter = Counter()
        self.progress: dict[int, list[int]] = {}
        self.results: dict[int, str] = {}     # order → last status (success / error)
        self.retry_stage: dict | None = None
        self.zip: dict | None = None
        self.job_complete: dict | None = None
        self.fallback_config_sent = False

    # -- Form.vue: the version gate before every job ------------------------------------------------
    async def server_version(self) -> str:
        """requestDesktopClientVersion: probe (no data); after 0.8 s the old clients' fallback, a config
        job named 'probe'; the first server_info ack's version, within 3 s."""
        async with connect(self.url, origin=self.origin) as ws:
            await ws.send(json.dumps({"type": "feishu_attachment_probe"}))
            loop = asyncio.get_running_loop()
            fallback_at, deadline = loop.time() + 0.8, loop.time() + 3.0
            while True:
                wait = (deadline if self.fallback_config_sent else fallback_at) - loop.time()
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(0.0, wait))
                except TimeoutError:
                    if self.fallback_config_sent:
                        raise AssertionError("websocket_connection_failed: no server_info in 3 s") from None
                    self.fallback_config_sent = True
                    await ws.send(json.dumps({"type": "feishu_attachment_config", "data": {
                        "concurrent": 1, "zipAfterDownload": False, "jobId": f"probe_{int(time.time() * 1000)}",
                        "jobName": "probe", "zipName": "probe", "total": 0, "downloadMode": "url"}}))
                    continue
                payload = json.loads(raw)
                data = payload.get("data") or {}
                if payload.get("type") == ACK and data.get("stage") == "server_info":
                    return str(data.get("version") or "").strip()

    async def accepts_service(self) -> bool:
        """ensureDesktopClientVersion."""
        version = await self.server_version()
        return bool(version) and compare_semantic_versions(version, MIN_DESKTOP_CLIENT_VERSION) >= 0

    # -- WebSocketDownloader.download, url mode ("本地客户端下载", channel websocket) -------------------
    async def download_url_mode(self, cells: list[dict], zip_name: str = "", zip_after: bool = True,
                                close_after: int | None = None, send_complete: bool = True) -> str:
        """Returns how the job ended for the plugin: 'complete', 'fatal' or 'closed'. `close_after` closes
        the tab once that many files have a result; `send_complete=False` closes it before complete."""
        by_order = {c["order"]: c for c in cells}
        async with aiohttp.ClientSession() as http, connect(self.url, origin=self.origin) as ws:
            self.http = http
            lifecycle = asyncio.create_task(self._bind_lifecycle(ws, by_order, close_after))
            job_id = str(int(time.time() * 1000))
            await self._send(ws, "feishu_attachment_config", {
                "concurrent": 1, "zipAfterDownload": zip_after, "jobId": job_id, "jobName": zip_name or job_id,
                "zipName": zip_name or job_id, "total": len(cells), "downloadMode": "url"})
            for n, cell in enumerate(cells, 1):
                await self._send(ws, "feishu_attachment_link", {k: cell[k] for k in (
                    "name", "path", "order", "size", "token", "fieldId", "recordId")})
                if n % 50 == 0:
                    await asyncio.sleep(0)
            if send_complete:
                await self._send(ws, "feishu_attachment_complete", {"jobId": job_id})
            return await lifecycle  # leaving the block closes the socket, as the plugin's finally does

    async def _send(self, ws, type_: str, data) -> None:
        await ws.send(json.dumps({"type": type_, "data": data}, ensure_ascii=False))

    async def _bind_lifecycle(self, ws, by_order: dict, close_after: int | None) -> str:
        inflight: dict[int, asyncio.Task] = {}
        answering: set[asyncio.Task] = set()
        async for raw in ws:
            payload = json.loads(raw)
            if payload.get("type") != ACK:
                continue
            data = payload.get("data") or {}
            self.acks.append(data)
            order, status, stage = positive_integer(data.get("order")), data.get("status"), data.get("stage")
            if stage == "server_info":
                continue
            if order is not None:
                if status == "progress":
                    if isinstance(data.get("percentage"), (int, float)):
                        self.progress.setdefault(order, []).append(min(max(data["percentage"], 0), 99))
                elif status == "refresh":
                    self.refresh_asked[order] += 1
                    task = asyncio.create_task(self._answer_refresh(ws, order, by_order, inflight))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
                else:
                    self.results[order] = "success" if status == "success" else "error"
                    if close_after is not None and len(self.results) >= close_after:
                        return "closed"
                continue
            if stage == "zip":
                self.zip = data
            elif stage == "retry_failed_files":
                self.retry_stage = data
            elif stage == "job_complete":
                self.job_complete = data
                return "complete"
            elif status == "error":
                self.fatal.append(data)
                return "fatal"
        return "closed"

    async def _answer_refresh(self, ws, order: int, by_order: dict, inflight: dict) -> None:
        """onRefreshUrl: one link fetch per order at a time (shared), answered at once and in parallel."""
        if order in self.hold:
            return
        if order in inflight:
            self.concurrent_refresh.append(order)
            task = inflight[order]
        else:
            task = inflight[order] = asyncio.create_task(self._attachment_url(by_order.get(order)))
            task.add_done_callback(lambda _t: inflight.pop(order, None))
        try:
            url = await task
            answer = {"order": order, "downloadUrl": url}
        except Exception as exc:  # noqa: BLE001 - the plugin sends the reason instead of a link
            answer = {"order": order, "error": str(exc) or "file_download_failed"}
        self.answered[order] += 1
        await self._send(ws, "feishu_attachment_refresh", answer)

    async def _attachment_url(self, cell: dict | None) -> str:
        """browserDownloader.getAttachmentUrl: a fresh temporary link from Feishu."""
        if cell is None:
            raise RuntimeError("file_download_failed")
        async with self.http.get(f"{self.fs.base_url}/open-apis/drive/v1/medias/batch_get_tmp_download_url",
                                 params={"file_tokens": cell["token"]},
                                 headers={"Authorization": f"Bearer {GOOD_TOKEN}"}) as resp:
            body = await resp.json()
        urls = (body.get("data") or {}).get("tmp_download_urls") or []
        if not urls:
            raise RuntimeError(f"Feishu refused the link: {body.get('msg')}")
        if cell["order"] in self.stale_first:
            self.stale_first.discard(cell["order"])
            self.fs.revoke_links(cell["token"])  # expired by the time the service uses it
        return urls[0]["tmp_download_url"]

    # -- WebSocketDownloader.download, token mode (channel websocket_auth) -------------------------------
    async def download_token_mode(self, cells: list[dict], app_token: str, table_id: str, zip_name: str = "",
                                  zip_after: bool = True, batch_size: int = 50) -> None:
        """Config, {files: [...]} batches, complete, and the socket closed at once: no ack is read."""
        async with connect(self.url, origin=self.origin) as ws:
            job_id = str(int(time.time() * 1000))
            await self._send(ws, "feishu_attachment_config", {
                "concurrent": 1, "zipAfterDownload": zip_after, "jobId": job_id, "jobName": zip_name or job_id,
                "zipName": zip_name or job_id, "total": len(cells), "downloadMode": "token",
                "tableId": table_id, "appToken": app_token})
            for i in range(0, len(cells), batch_size):
                await self._send(ws, "feishu_attachment_link", {"files": [
                    {k: c[k] for k in ("name", "path", "order", "size", "token", "fieldId", "recordId")}
                    for c in cells[i:i + batch_size]]})
            await self._send(ws, "feishu_attachment_complete", {"jobId": job_id})


def cells_of(fs: FeishuServer, app: str, table: str, files: list[tuple[str, bytes, str]],
             field_id: str = "fAtt") -> list[dict]:
    """Records with one attachment each; the plugin's cellList entries for them (order from 1)."""
    cells = []
    for order, (name, data, path) in enumerate(files, 1):
        cell = fs.add_file(data, name)
        fs.add_record(app, table, f"rec{order}", {"附件": [cell]})
        cells.append({"name": name, "path": path, "order": order, "size": len(data), "token": cell["file_token"],
                      "fieldId": field_id, "recordId": f"rec{order}"})
    return cells
