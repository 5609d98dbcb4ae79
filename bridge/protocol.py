"""The Bitable plugin's WebSocket protocol: message names, validation and acknowledgements (no I/O).

Every message is {"type": ..., "data": {...}}. The plugin sends probe, config, link, refresh and
complete; the service answers everything with feishu_attachment_ack.

The published plugin (baitaotao521/download-files, Form.vue and WebSocketDownloader.js) is the client:
- it sends the probe without `data` and refuses a service whose `server_info` ack carries a `version`
  below its MIN_DESKTOP_CLIENT_VERSION (1.1.8), compared as major.minor.patch;
- an ack with a positive `order` concerns that file only (status success / progress / refresh, any
  other status marks the file failed); an ack without one is a job event (stage zip,
  retry_failed_files, job_complete) or, with status "error", aborts the whole job.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

PROBE = "feishu_attachment_probe"
CONFIG = "feishu_attachment_config"
LINK = "feishu_attachment_link"
REFRESH = "feishu_attachment_refresh"
COMPLETE = "feishu_attachment_complete"
ACK = "feishu_attachment_ack"

# The level of the desktop-client protocol this service implements: the original desktop service 1.1.8
# (probe, url and token modes, refresh, per-file progress, retry_failed_files). The plugin compares it
# with its MIN_DESKTOP_CLIENT_VERSION; the package's own version travels separately as serviceVersion.
PROTOCOL_VERSION = "1.1.8"

MAX_FILES_PER_JOB = 100_000


class ProtocolError(ValueError):
    """A message the service refuses; its text goes back to the plugin in an error ack, with the file's
    `order` when it concerns one file (so the plugin fails that file, not the whole job)."""

    def __init__(self, message: str, order: int | None = None):
        super().__init__(message)
        self.order = order


def ack(status: str, message: str = "", **extra) -> str:
    return json.dumps({"type": ACK, "data": {"status": status, "message": message, **extra}},
                      ensure_ascii=False)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"invalid message: number {text[:20]} is out of range")
    return value


def _no_constants(name: str):
    raise ProtocolError(f"invalid message: {name} is not a number JSON allows")


def parse(raw: str | bytes, max_bytes: int | None = None) -> tuple[str, dict | list]:
    if max_bytes is not None and len(raw) > max_bytes:
        raise ProtocolError(f"message too large (more than {max_bytes} bytes): send the files in smaller"
                            " batches")
    try:
        msg = json.loads(raw, parse_float=_finite, parse_constant=_no_constants)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("invalid message: nested too deeply") from None
    except ValueError:
        raise ProtocolError("invalid message: not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("invalid message: expected {\"type\": ..., \"data\": {...}}")
    data = msg.get("data")
    if data is None:
        data = {}
    if not isinstance(data, (dict, list)):
        raise ProtocolError("invalid message: data must be an object")
    return msg["type"], data


def text(value, name: str, order: int | None = None) -> str:
    """A field that must be a plain value (never a nested structure, which could be arbitrarily deep)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        raise ProtocolError(f"invalid {name}: expected text", order)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ProtocolError(f"invalid {name}: expected text", order)


def count(value, name: str, order: int | None = None) -> int:
    """A whole number >= 0 (numbers may arrive as 3, 3.0 or "3")."""
    if value is None or value == "":
        return 0
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"invalid {name}: expected a whole number", order)
    if value < 0:
        raise ProtocolError(f"invalid {name}: must not be negative", order)
    return value


@dataclass
class JobConfig:
    job_id: str
    job_name: str
    zip_name: str
    zip_after_download: bool
    total: int
    concurrent: int  # what the plugin asked for (always 1); the service's own setting decides
    download_mode: str
    app_token: str
    table_id: str

    @property
    def folder_name(self) -> str:
        return self.zip_name or self.job_name or self.job_id


def job_config(data) -> JobConfig:
    if not isinstance(data, dict):
        raise ProtocolError("invalid config: data must be an object")
    mode = text(data.get("downloadMode"), "downloadMode") or "url"
    if mode not in ("url", "token"):
        raise ProtocolError(f"invalid config: downloadMode must be 'url' or 'token', not {mode[:40]!r}")
    total = count(data.get("total"), "config: total")
    concurrent = count(data.get("concurrent"), "config: concurrent")
    if total > MAX_FILES_PER_JOB:
        raise ProtocolError(f"invalid config: total must be 0..{MAX_FILES_PER_JOB}")
    config = JobConfig(
        job_id=text(data.get("jobId"), "jobId").strip(), job_name=text(data.get("jobName"), "jobName").strip(),
        zip_name=text(data.get("zipName"), "zipName").strip(), zip_after_download=data.get("zipAfterDownload") is True,
        total=total, concurrent=concurrent, download_mode=mode,
        app_token=text(data.get("appToken"), "appToken").strip(), table_id=text(data.get("tableId"), "tableId").strip())
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


def file_items(data) -> list:
    """One file, a list of files, or {files: [...]}."""
    items = data.get("files") if isinstance(data, dict) and "files" in data else data
    return items if isinstance(items, list) else [items]


def file_request(item) -> FileRequest:
    if not isinstance(item, dict):
        raise ProtocolError("invalid file: expected an object")
    order = None
    if item.get("order") is not None:
        order = count(item.get("order"), "file: order")
    name = text(item.get("name"), "file: name", order).strip()
    url = text(item.get("downloadUrl"), "file: downloadUrl", order).strip()
    if not name:
        raise ProtocolError("invalid file: name is missing", order)
    if not url and order is None:
        raise ProtocolError(f"invalid file {name[:100]!r}: no downloadUrl and no order to ask for one")
    try:
        size = count(item.get("size"), "file: size", order)
    except ProtocolError:
        size = 0  # only used for progress and the choice of ranged parts; the server says the real size
    return FileRequest(name=name, path=text(item.get("path"), "file: path", order), order=order, size=size,
                       token=text(item.get("token"), "file: token", order).strip(),
                       field_id=text(item.get("fieldId"), "file: fieldId", order).strip(),
                       record_id=text(item.get("recordId"), "file: recordId", order).strip(), download_url=url)
