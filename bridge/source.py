"""A plugin job's files as a source for the runner: pushed over the WebSocket instead of listed. Their links
come from the plugin in url mode (bridge/links.py: one refresh ack per file at a time) and from the Bitable
API in token mode (the Feishu flow's LinkBroker, five links per call within the token's rate limit)."""
from __future__ import annotations

import queue

from bridge import protocol as p
from bridge.links import PluginLinks
from core.engine import Stopped
from core.errors import HTTPStatusError
from core.model import UNKNOWN_SIZE, RemoteObject
from core.sources import Page, Source
from core.sources.feishu import Attachment, LinkBroker, link_expired, link_signer


class PluginSource(Source):
    """Its pages are the batches of files the plugin sends (one link message each), in the order sent;
    the listing ends when the job is complete (or the plugin went away)."""

    ordered = False
    lists_by_request = False  # waiting for the plugin's next message takes no request slot

    def __init__(self, plugin_links: PluginLinks | None = None, token_links: LinkBroker | None = None):
        self.plugin_links, self.token_links = plugin_links, token_links
        self.requests: dict[str, p.FileRequest] = {}
        self._pages: queue.Queue[list[RemoteObject] | None] = queue.Queue()

    def add(self, req: p.FileRequest, rel: str) -> RemoteObject:
        """A file the plugin sent, as an object for round 1 (its path chosen by the service)."""
        self.requests[req.key] = req
        if self.plugin_links is not None:
            self.plugin_links.offer(req.order, req.download_url)
        return RemoteObject(req.key, req.size or UNKNOWN_SIZE, path=rel)

    def feed(self, objects: list[RemoteObject]) -> None:
        """A page for the run loop (from the service's loop)."""
        self._pages.put(objects)

    def end(self) -> None:
        """No more pages: the listing ends once the pages fed are taken."""
        self._pages.put(None)

    def stop(self) -> None:
        """The service stops: the run loop ends where it is (Stopped), without a report."""
        self._pages.put(Stopped)

    def list_page(self, token: str | None) -> Page:
        """The next batch the plugin sent, waiting for it (in the run loop's thread)."""
        objects = self._pages.get()
        if objects is None or objects is Stopped:
            self._pages.put(objects)  # for good
            if objects is Stopped:
                raise Stopped()
            return Page([])
        return Page(objects, str(int(token or 0) + 1), truncated=True)

    def retry_possible(self) -> bool:
        """url mode needs the plugin for new links: round 2 only while it is connected."""
        return self.token_links is not None or self.plugin_links.connected

    def upcoming(self, objects: list[RemoteObject]) -> None:
        if self.token_links is not None:
            self.token_links.expect([_attachment(self.requests[obj.key]) for obj in objects])

    def signer(self, obj: RemoteObject, again: bool = False):
        """`again`: a retry of round 2, whose old link may be the problem: the first sign asks anew."""
        req = self.requests[obj.key]
        if self.token_links is None:
            if again:
                self.plugin_links.forget(req.order)
            return self.plugin_links.signer(req)
        return link_signer(self.token_links, _attachment(req), again)

    def link_expired(self, err: HTTPStatusError) -> bool:
        return link_expired(err)


def _attachment(req: p.FileRequest) -> Attachment:
    return Attachment(req.token, req.field_id, req.record_id)
