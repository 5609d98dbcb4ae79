"""Feishu Bitable attachments as a download source: records page by page, attachment cells as download
items, temporary download links asked for in batches within the base token's rate limit.

Plain asyncio + aiohttp on the transfer engine's loop (no Prefect here); the flow and the plugin's
WebSocket service both use it.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.sources import CHECK_ATTEMPTS, Page, Source
from core.errors import DownloadError, HTTPStatusError, UsageError, as_download_error, retrying
from core.model import RemoteObject
from core.naming import UNCATEGORIZED, AttachmentNaming
from core.engine import Engine
from core.engine.limits import RateLimit
from core.model import UNKNOWN_SIZE
from core.network import Network

if TYPE_CHECKING:
    import aiohttp

DOMAINS = {"feishu": "https://base-api.feishu.cn", "lark": "https://base-api.larksuite.com"}
ATTACHMENT_TYPE = 17
PAGE_SIZE = 500           # the records API's maximum
TMP_URL_BATCH = 5         # file tokens per batch_get_tmp_download_url call (the API's maximum)
LINK_TTL = 240.0          # re-ask a link older than this (Feishu's links live about 10 minutes)
LINK_STATUSES = {400, 401, 403, 404, 410}  # what Feishu answers for an expired or revoked link
# Codes that mean the personal base token itself is wrong, expired or lacks access to the base.
BAD_TOKEN_CODES = {99991661, 99991663, 99991668, 99991677, 1254301, 1254302}
NOT_FOUND_CODES = {1254040: "base (app_token) not found", 1254041: "table not found",
                   1254042: "view not found", 1254045: "field not found"}


def link_expired(err: HTTPStatusError) -> bool:
    """Feishu refuses an expired or revoked link with one of these: ask for a new link and try again."""
    return err.status in LINK_STATUSES


def link_signer(links: LinkBroker, att: Attachment, again: bool):
    """sign(refresh) for one attachment; a retry (`again`) asks a fresh link at once, its old one may have
    expired meanwhile."""
    first = [again]

    def sign(refresh: bool):
        refresh, first[0] = refresh or first[0], False
        return links.link(att, refresh)
    return sign


def token_from_env() -> str:
    """PERSONAL_BASE_TOKEN from the environment or ./.env ('' when unset)."""
    from dotenv import load_dotenv
    load_dotenv(Path.cwd() / ".env")
    return os.environ.get("PERSONAL_BASE_TOKEN", "").strip()


def api_error(status: int, code, message: str) -> Exception:
    """One place for what a Feishu API answer means: a usage problem, or a (maybe retryable) failure."""
    if code in BAD_TOKEN_CODES:
        return UsageError(f"Feishu refused the personal base token ({code}: {message}):"
                          " check that it is valid, not expired and allowed on this base")
    if code in NOT_FOUND_CODES:
        return UsageError(f"Feishu: {NOT_FOUND_CODES[code]} ({code})")
    return HTTPStatusError(status if status >= 400 else 400, str(code), message)


class FeishuClient:
    """The few Open API calls the downloader needs, with the bearer token and a shared rate limit."""

    def __init__(self, base_url: str, token: str, requests_per_second: float = 2.0,
                 connect_timeout: float = 10, read_timeout: float = 60, backoff: float = 1.0, attempts: int = 6,
                 network: Network | None = None):
        self.base_url = base_url.rstrip("/")
        self.network = network or Network.for_api()  # never the store's certificates, always verified
        self._token = token
        self._rate = RateLimit(requests_per_second) if requests_per_second else None
        self._timeouts = (connect_timeout, read_timeout or None)
        self._backoff, self._attempts = backoff, attempts
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the token
        return f"FeishuClient({self.base_url})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, params: list[tuple[str, str]], attempts: int | None = None) -> dict:
        """GET an API path; rate-limited and failing calls are retried by the product's one policy."""
        async for attempt in retrying(attempts or self._attempts, self._backoff):
            with attempt:
                return await self._get_once(path, params)
        raise AssertionError("unreachable")

    async def _get_once(self, path: str, params: list[tuple[str, str]]) -> dict:
        if self._session is None:
            import aiohttp  # when first used (its import costs ~0.15 s)
            connect, read = self._timeouts
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.network.tls.context),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read))
        if self._rate:
            await self._rate.wait()
        url = self.base_url + path
        proxy = self.network.proxy_for(url)
        async with self._session.get(url, params=params, headers={"Authorization": f"Bearer {self._token}"},
                                     **(proxy.aiohttp if proxy else {})) as resp:
            body = await resp.read()
            status = resp.status
        try:
            answer = json.loads(body)
        except ValueError:
            raise HTTPStatusError(status, "", "not a Feishu API answer") from None
        if status == 200 and answer.get("code") == 0:
            return answer.get("data") or {}
        raise api_error(status, answer.get("code"), str(answer.get("msg", ""))[:200])

    async def fields(self, app_token: str, table_id: str, attempts: int | None = None) -> list[dict]:
        found, page_token = [], ""
        while True:
            data = await self.get(f"/open-apis/bitable/v1/apps/{app_token}/tables/{table_id}/fields",
                                  [("page_size", "100")] + ([("page_token", page_token)] if page_token else []),
                                  attempts)
            found += data.get("items") or []
            page_token = data.get("page_token") or ""
            if not data.get("has_more") or not page_token:
                return found

    async def records(self, app_token: str, table_id: str, view_id: str | None, page_token: str | None,
                      page_size: int = PAGE_SIZE) -> tuple[list[dict], str | None, bool]:
        params = [("page_size", str(page_size))]
        params += [("view_id", view_id)] if view_id else []
        params += [("page_token", page_token)] if page_token else []
        data = await self.get(f"/open-apis/bitable/v1/apps/{app_token}/tables/{table_id}/records", params)
        return data.get("items") or [], data.get("page_token") or None, bool(data.get("has_more"))

    async def tmp_urls(self, file_tokens: list[str], extra: dict | None = None) -> dict[str, str]:
        params = [("file_tokens", t) for t in file_tokens]
        if extra:
            params.append(("extra", json.dumps(extra, separators=(",", ":"))))
        data = await self.get("/open-apis/drive/v1/medias/batch_get_tmp_download_url", params)
        return {item["file_token"]: item["tmp_download_url"] for item in data.get("tmp_download_urls") or []
                if item.get("tmp_download_url")}


@dataclass(frozen=True, slots=True)
class Attachment:
    file_token: str
    field_id: str = ""
    record_id: str = ""


class LinkBroker:
    """Temporary download links for attachments. Each API call asks for up to 5 files (the API's limit),
    topped up with the next expected files, so the base's 2 requests/s move 10 links/s, not 2."""

    def __init__(self, client: FeishuClient, table_id: str, ttl: float = LINK_TTL):
        self.client, self.table_id, self.ttl = client, table_id, ttl
        self._links: dict[str, tuple[str, float]] = {}
        self._waiting: dict[Attachment, list[asyncio.Future]] = {}
        self._upcoming: deque[Attachment] = deque(maxlen=10_000)
        self._worker: asyncio.Task | None = None

    def expect(self, attachments: list[Attachment]) -> None:
        """Files about to be downloaded (from the engine's thread or loop): fetched links ride along."""
        self._upcoming.extend(attachments)

    async def link(self, att: Attachment, refresh: bool = False) -> str:
        loop = asyncio.get_running_loop()
        cached = self._links.get(att.file_token)
        if cached and not refresh and loop.time() - cached[1] < self.ttl:
            return cached[0]
        future = loop.create_future()
        self._waiting.setdefault(att, []).append(future)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _next_batch(self, now: float) -> list[Attachment]:
        batch = list(self._waiting)[:TMP_URL_BATCH]
        while len(batch) < TMP_URL_BATCH and self._upcoming:
            att = self._upcoming.popleft()
            cached = self._links.get(att.file_token)
            if att not in batch and not (cached and now - cached[1] < self.ttl / 2):
                batch.append(att)
        return batch

    def _extra(self, batch: list[Attachment]) -> dict | None:
        """The bitablePerm payload that tables with advanced permissions require."""
        attachments: dict[str, dict[str, list[str]]] = {}
        for att in batch:
            if att.field_id and att.record_id:
                attachments.setdefault(att.field_id, {}).setdefault(att.record_id, []).append(att.file_token)
        return {"bitablePerm": {"tableId": self.table_id, "attachments": attachments}} if attachments else None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._next_batch(loop.time())
            urls, errors = await self._ask(batch)
            now = loop.time()
            for token, url in urls.items():
                self._links[token] = (url, now)
            for att in batch:
                for future in self._waiting.pop(att, []):
                    if future.done():
                        continue
                    if att.file_token in urls:
                        future.set_result(urls[att.file_token])
                    else:
                        future.set_exception(errors.get(att.file_token) or DownloadError(
                            "no download link: the attachment was deleted or you have no permission to it"))

    async def _ask(self, batch: list[Attachment]) -> tuple[dict[str, str], dict[str, Exception]]:
        """Links for a batch. Feishu refuses a whole batch (403) when one of its files is denied to the
        token: then each file is asked for alone, so only the denied one fails."""
        try:
            return await self.client.tmp_urls([a.file_token for a in batch], self._extra(batch)), {}
        except Exception as exc:  # noqa: BLE001 - handed to the waiters of this batch
            if len(batch) == 1 or not _refused_batch(exc):
                return {}, {a.file_token: exc for a in batch}
        urls, errors = {}, {}
        for att in batch:
            got, failed = await self._ask([att])
            urls.update(got)
            errors.update(failed)
        return urls, errors


def _refused_batch(exc: Exception) -> bool:
    """A refusal that may concern only some of the batch's files (not the token, not the rate limit)."""
    return isinstance(exc, HTTPStatusError) and exc.status in (400, 403, 404) and not exc.retryable


@dataclass
class BitableTable:
    """Which table to read; holds no secret (the token lives only in the client)."""
    app_token: str
    table_id: str
    view_id: str | None = None
    attachment_fields: list[str] = field(default_factory=list)  # names or ids; empty: all attachment fields
    page_size: int = PAGE_SIZE


@dataclass(frozen=True)
class FeishuSpec:
    """The Feishu flow's source as data: the table, the naming rules, the Open API's address and limits.
    The personal base token is not in here: whoever opens the run brings it."""
    table: BitableTable
    name_fields: tuple[str, ...] = ()
    name_separator: str = "-"
    folder_fields: tuple[str, ...] = ()
    uncategorized: str = UNCATEGORIZED
    base_url: str = DOMAINS["feishu"]
    requests_per_second: float = 2.0
    connect_timeout: float = 10
    read_timeout: float = 60
    backoff: float = 1.0

    def naming(self) -> AttachmentNaming:
        return AttachmentNaming(list(self.name_fields), self.name_separator, list(self.folder_fields),
                                self.uncategorized)

    def client(self, token: str, network: Network | None = None) -> FeishuClient:
        return FeishuClient(self.base_url, token, self.requests_per_second, self.connect_timeout,
                            self.read_timeout, backoff=self.backoff, network=network)

    def source(self, token: str, engine: Engine) -> "BitableSource":
        """On the engine's network: the run's proxy for the API and for the file links alike."""
        return BitableSource(self.table, self.client(token, engine.network), engine, self.naming())


def _attachment(obj: RemoteObject) -> Attachment:
    record_id, field_id, file_token = obj.key.split("/", 2)
    return Attachment(file_token, field_id, record_id)


def _size(cell: dict) -> int:
    """The attachment's size as the cell gives it (checked against what arrives), or unknown."""
    try:
        size = int(cell.get("size"))
    except (TypeError, ValueError):
        return UNKNOWN_SIZE
    return size if size >= 0 else UNKNOWN_SIZE


class BitableSource(Source):
    """The attachments of a Bitable table, one item per file of an attachment cell. Records are read page by
    page; links come from the LinkBroker (batched within the token's rate limit).

    Item key: `record_id/field_id/file_token` (stable); local path: from the naming rules."""

    ordered = False  # records come in the table's order, not by key

    def __init__(self, source: BitableTable, client: FeishuClient, engine: Engine, naming: AttachmentNaming):
        self.source, self.client, self.engine, self.naming = source, client, engine, naming
        self.links = LinkBroker(client, source.table_id)
        self._fields: dict[str, str] | None = None  # attachment field name → id

    def check(self) -> None:
        try:
            self._fields = self.engine.run(self._attachment_fields())
        except Exception as exc:  # noqa: BLE001 - what cannot be reached at the start is one line, exit 2
            error = as_download_error(exc)
            if not error.retryable:
                raise
            raise self.client.network.unreachable(f"the Feishu API at {self.client.base_url}", self.client.base_url,
                                                  error) from None

    async def _attachment_fields(self) -> dict[str, str]:
        s = self.source
        fields = await self.client.fields(s.app_token, s.table_id, CHECK_ATTEMPTS)  # before the run: fail soon
        names = {f.get("field_name", ""): f for f in fields}
        attachments = {f["field_name"]: f["field_id"] for f in fields if f.get("type") == ATTACHMENT_TYPE}
        if not attachments:
            raise UsageError(f"table {s.table_id} has no attachment field")
        chosen = {}
        for wanted in s.attachment_fields:
            match = [n for n, fid in attachments.items() if wanted in (n, fid)]
            if not match:
                raise UsageError(f"{wanted!r} is not an attachment field of the table"
                                 f" (attachment fields: {', '.join(attachments)})")
            chosen[match[0]] = attachments[match[0]]
        for rule in self.naming.name_fields + self.naming.folder_fields:
            if rule not in names:
                raise UsageError(f"naming field {rule!r} is not a field of the table")
        return chosen or attachments

    def list_page(self, token: str | None) -> Page:
        if self._fields is None:
            self.check()
        s = self.source
        records, next_token, more = self.engine.run(
            self.client.records(s.app_token, s.table_id, s.view_id, token, s.page_size))
        objects = []
        for record in records:
            values = record.get("fields") or {}
            for name, field_id in self._fields.items():
                for cell in values.get(name) or []:
                    if not isinstance(cell, dict) or not cell.get("file_token"):
                        continue
                    att = Attachment(cell["file_token"], field_id, record.get("record_id", ""))
                    objects.append(RemoteObject(f"{att.record_id}/{field_id}/{att.file_token}",
                                                _size(cell),
                                                path=self.naming.place(values, cell.get("name", ""))))
        return Page(objects, next_token if more else None, more)

    def upcoming(self, objects: list[RemoteObject]) -> None:
        """Files about to be downloaded (not those already present): their links ride along in the batches
        of the files before them, five per API call."""
        self.links.expect([_attachment(obj) for obj in objects])

    def signer(self, obj: RemoteObject, again: bool = False):
        """`again`: a retry, whose old link may have expired."""
        return link_signer(self.links, _attachment(obj), again)

    def link_expired(self, err: HTTPStatusError) -> bool:
        return link_expired(err)

    def close(self) -> None:
        self.engine.run(self.client.close())
