"""Listing a source page by page, trusting nothing: every page is retried by the product's one policy,
and a listing that would end early or go round in circles is an error, never a short, successful run."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from core.engine import Stopped
from core.sources import Page, Source
from core.errors import ListingError, as_download_error, retrying_sync


def list_page(source: Source, token: str | None, attempts: int, backoff: float,
              slot: Callable = contextlib.nullcontext, folders: bool = False) -> Page:
    """One page (of the folders one level down, with `folders`), retried on retryable failures; ListingError
    saying why when it cannot be had."""
    try:
        for attempt in retrying_sync(attempts, backoff):
            with attempt:
                with slot():
                    return source.folders_page(token) if folders else source.list_page(token)
    except Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line
        err = as_download_error(exc)
        tries = f" after {attempts} attempts" if err.retryable and attempts > 1 else ""
        raise ListingError(f"listing failed{tries}: {err}") from None
    raise AssertionError("unreachable")


class ListingGuard:
    """What a sane listing looks like: truncated pages name where to go on, tokens never repeat, and keys
    of an object store come in strictly increasing order."""

    def __init__(self, ordered: bool):
        self.ordered = ordered
        self.seen: set[str] = set()
        self.last_key: str | None = None
        self.pages = 0
        self.objects = 0

    def check_keys(self, page: Page) -> None:
        """Before a page is used: its keys continue the listing."""
        self.pages += 1
        self.objects += len(page.objects)
        if not self.ordered or not page.objects:
            return
        keys = [o.key for o in page.objects]
        if self.last_key is not None and keys[0] <= self.last_key or any(a >= b for a, b in zip(keys, keys[1:])):
            raise ListingError(f"the store's listing went backwards at page {self.pages} (key {keys[0]!r} after"
                               f" {self.last_key!r}): it would list objects twice or for ever")
        self.last_key = keys[-1]

    def check_next(self, token: str | None, page: Page) -> None:
        """After a page is used: it says where the listing goes on, somewhere it has not been."""
        if not page.truncated:
            return
        where = f"after {self.objects} objects (page {self.pages})"
        if not page.next_token:
            raise ListingError(f"the store said the listing goes on {where} but gave no continuation token")
        if page.next_token == token or page.next_token in self.seen:
            raise ListingError(f"the store repeated a continuation token {where}: the listing would never end")
        self.seen.add(page.next_token)


def pages(source: Source, fetch: Callable[[str | None, int], Page]) -> Iterator[Page]:
    """Every page of the listing, checked by the guard. `fetch(token, page_no)` gets one page (e.g.
    `list_page` above, or a Prefect task around it)."""
    guard = ListingGuard(getattr(source, "ordered", False))
    token, page_no = None, 0
    while True:
        page = fetch(token, page_no)
        guard.check_keys(page)
        yield page
        guard.check_next(token, page)
        if not page.truncated:
            return
        token, page_no = page.next_token, page_no + 1


def folders(source: Source, attempts: int, backoff: float) -> list[str]:
    """The common prefixes one '/' level below the source's prefix, in key order (where a sharded job is cut),
    through the same retries and guard as every listing."""
    found = []
    for page in pages(source, lambda token, _: list_page(source, token, attempts, backoff, folders=True)):
        found += page.folders
    return found
