"""url mode: the download links of a job come from the plugin, which answers each `refresh` ack with
`feishu_attachment_refresh` {order, downloadUrl} (or {order, error})."""
from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import Callable

from bridge import protocol as p
from core.errors import DownloadError

log = logging.getLogger("feishu-bridge")
REFRESH_WAIT = 120.0  # seconds to wait for the plugin's answer to a refresh ack

# The link generation a download task was handed last (each ranged part runs in its own task).
_handed: ContextVar[int] = ContextVar("handed_link_generation", default=0)


class PluginLinks:
    """url mode: download links come from the plugin, asked for with one `refresh` ack per file.

    One request per file at a time: concurrent needs (the ranged parts of a large file) share the pending
    request, and a part whose link another part has already replaced takes the new link instead of asking
    again. An answer nobody waits for (late, repeated) is ignored with a log line: an error ack without
    `order` would abort the plugin's whole job."""

    def __init__(self, send: Callable):
        self.send = send
        self.connected = True
        self.links: dict[int, tuple[str, int]] = {}  # order → (url, generation)
        self.pending: dict[int, asyncio.Future] = {}

    def offer(self, order: int | None, url: str) -> None:
        if order is not None and url:
            self.links[order] = (url, 1)

    def forget(self, order: int | None) -> None:
        """The next download of this file asks for a new link (round 2: the old one may be the problem)."""
        if order in self.links:
            self.links[order] = ("", self.links[order][1])

    def signer(self, req: p.FileRequest):
        async def sign(refresh: bool) -> str:
            if req.order is None:
                if refresh or not req.download_url:
                    raise DownloadError("the link expired and the file has no order to ask the plugin for a new one")
                return req.download_url
            url, generation = self.links.get(req.order, ("", 0))
            if not url or (refresh and _handed.get() >= generation):
                url, generation = await self._ask(req)
            _handed.set(generation)
            return url
        return sign

    async def _ask(self, req: p.FileRequest) -> tuple[str, int]:
        future = self.pending.get(req.order)
        if future is None:
            if not self.connected:
                raise DownloadError("the plugin disconnected: no new link can be asked for")
            loop = asyncio.get_running_loop()
            future = self.pending[req.order] = loop.create_future()
            timer = loop.call_later(REFRESH_WAIT, _fail, future,
                                    DownloadError("the plugin sent no new link in time", retryable=True))

            def done(f: asyncio.Future, order=req.order) -> None:
                timer.cancel()
                if self.pending.get(order) is f:
                    del self.pending[order]
                if not f.cancelled():
                    f.exception()  # retrieved: waiters may all have gone
            future.add_done_callback(done)
            await self.send(p.ack("refresh", "need a download link", stage="refresh", order=req.order,
                                  name=req.name))
        return await asyncio.shield(future)

    def answer(self, data) -> None:
        try:
            order = p.count(data.get("order"), "order") if isinstance(data, dict) else None
        except p.ProtocolError:
            order = None
        future = self.pending.get(order)
        if future is None or future.done():
            log.info("ignored a link from the plugin for order %s: none is being waited for (a late or repeated"
                     " answer)", str(order)[:20])
            return
        url = data.get("downloadUrl")
        if isinstance(url, str) and url.strip():
            generation = self.links.get(order, ("", 0))[1] + 1
            self.links[order] = (url.strip(), generation)
            future.set_result((url.strip(), generation))
        else:
            reason = data.get("error")
            reason = reason[:300] if isinstance(reason, str) and reason else "no downloadUrl in its answer"
            future.set_exception(DownloadError(f"the plugin could not get a link: {reason}"))

    def disconnect(self) -> None:
        self.connected = False
        for future in list(self.pending.values()):
            _fail(future, DownloadError("the plugin disconnected before sending a new link"))


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
