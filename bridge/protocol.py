"""The Bitable plugin's WebSocket protocol: message names, validation and acknowledgements (no I/O).

Every message is {"type": ..., "data": {...}}. The plugin sends probe, config, link, refresh and
complete; the service answers everything with feishu_attachment_ack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

PROBE = "feishu_attachment_probe"
CONFIG = "feishu_attachment_config"
LINK = "feishu_attachment_link"
REFRESH = "feishu_attachment_refresh"
COMPLETE = "feishu_attachment_complete"
ACK = "feishu_attachment_ack"

MAX_FILES_PER_JOB = 100_000


class ProtocolError(ValueError):
    """A message the service refuses; its text goes back to the plugin in an error ack."""


def ack(status: str, message: str = "", **extra) -> str:
    return json.dumps({"type": ACK, "data": {"status": status, "message": message, **extra}},
                      ensure_ascii=False)


def parse(raw: str | bytes) -> tuple[str, dict]:
    try:
        msg = json.loads(raw)
    except ValueError:
        raise ProtocolError("invalid message: not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("invalid message: expected {\"type\": ..., \"data\": {...}}")
    data = msg.get("data") or {}
    if not isinstance(data, (dict, list)):
        raise ProtocolError("invalid message: data must be an object")
    return msg["type"], data


@dataclass
class JobConfig:
    job_id: str
    job_name: str
    zip_name: str
    zip_after_download: bool
    total: int
    concurrent: int
    download_mode: str
    app_token: str
    table_id: str

    @property
    def folder_name(self) -> str:
        return self.zip_name or self.job_name or self.job_id


def job_config(data: dict) -> JobConfig:
    if not isinstance(data, dict):
        raise ProtocolError("invalid config: data must be an object")
    mode = data.get("downloadMode") or "url"
    if mode not in ("url", "token"):
        raise ProtocolError(f"invalid config: downloadMode must be 'url' or 'token', not {mode!r}")
    try:
        total = int(data.get("total") or 0)
        concurrent = int(data.get("concurrent") or 0)
    except (TypeError, ValueError):
        raise ProtocolError("invalid config: total and concurrent must be numbers") from None
    if total < 0 or total > MAX_FILES_PER_JOB or concurrent < 0:
        raise ProtocolError(f"invalid config: total must be 0..{MAX_FILES_PER_JOB}, concurrent >= 0")
    config = JobConfig(
        job_id=str(data.get("jobId") or ""), job_name=str(data.get("jobName") or ""),
        zip_name=str(data.get("zipName") or ""), zip_after_download=bool(data.get("zipAfterDownload")),
        total=total, concurrent=concurrent, download_mode=mode,
        app_token=str(data.get("appToken") or ""), table_id=str(data.get("tableId") or ""))
    if not config.folder_name:
        raise ProtocolError("invalid config: one of jobId, jobName or zipName is required")
    if mode == "token" and not (config.app_token and config.table_id):
        raise ProtocolError("token mode needs appToken and tableId")
    return config


@dataclass
class FileRequest:
    name: str
    path: str
    order: int | None
    size: int
    token: str
    field_id: str
    record_id: str
    download_url: str

    @property
    def key(self) -> str:
        """Stable identity in the job's manifest."""
        if self.record_id and self.token:
            return f"{self.record_id}/{self.field_id}/{self.token}"
        return f"order/{self.order}"


def file_requests(data) -> list[FileRequest]:
    """One file, a list of files, or {files: [...]}."""
    items = data.get("files") if isinstance(data, dict) and "files" in data else data
    items = items if isinstance(items, list) else [items]
    return [_file_request(item) for item in items]


def _file_request(item) -> FileRequest:
    if not isinstance(item, dict):
        raise ProtocolError("invalid file: expected an object")
    name = str(item.get("name") or "").strip()
    order = item.get("order")
    url = str(item.get("downloadUrl") or "")
    if not name:
        raise ProtocolError("invalid file: name is missing")
    if order is not None:
        try:
            order = int(order)
        except (TypeError, ValueError):
            raise ProtocolError("invalid file: order must be a number") from None
    if not url and order is None:
        raise ProtocolError(f"invalid file {name!r}: no downloadUrl and no order to ask for one")
    try:
        size = max(0, int(item.get("size") or 0))
    except (TypeError, ValueError):
        size = 0
    return FileRequest(name=name, path=str(item.get("path") or ""), order=order, size=size,
                       token=str(item.get("token") or ""), field_id=str(item.get("fieldId") or ""),
                       record_id=str(item.get("recordId") or ""), download_url=url)
