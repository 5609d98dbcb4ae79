"""The streaming HTTP engine: one asyncio loop in a thread of its own, one aiohttp session and one request
semaphore per process. Sources only list and sign; every byte of every object is fetched here from a signed
URL, so OSS, S3, Feishu and plugin links share resume, ranged parts, integrity checks and the limits.

    loop + session + slots    this module
    fetch (whole, ranged)     core/engine/fetch.py
    small GETs on libcurl     core/engine/curl.py
    checks                    core/engine/verify.py
    final names (durable)     core/engine/commit.py
    rate, low speed           core/engine/limits.py
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Awaitable, Callable, Union

if TYPE_CHECKING:
    import aiohttp

from core.engine import fetch as _fetch
from core.engine.commit import GroupCommit
from core.engine.fetch import Fetched
from core.engine.limits import Bandwidth, RateLimit, parse_bwlimit
from core.engine.verify import bare_etag
from core.errors import HTTPStatusError, http_error
from core.model import Settings
from core.network import Network
from core.workarea import Output

MiB = 1 << 20
_URL = None  # yarl.URL, imported with aiohttp

# sign(refresh) -> URL, or (URL, extra headers) for links that need e.g. a bearer token; refresh=True means
# the previous link was refused as expired. May be async (a Feishu link is asked from the browser plugin).
Link = Union[str, tuple[str, dict]]
Signer = Callable[[bool], Union[Link, Awaitable[Link]]]


class Stopped(Exception):
    """The engine was closed (Ctrl-C): what finished is recorded, the rest resumes next run."""


def default_link_expired(err: HTTPStatusError) -> bool:
    return err.expired


class Engine:
    def __init__(self, concurrency: int = 5, connect_timeout: float = 10, read_timeout: float = 60,
                 part_size: int = 8 * MiB, multipart_threshold: int = 16 * MiB,
                 max_requests_per_second: float | None = None, low_speed_limit: float = 1024,
                 low_speed_time: float = 60, fsync: bool = False, network: Network | None = None,
                 bwlimit: str | None = None):
        self.concurrency = concurrency
        table = parse_bwlimit(bwlimit)
        self.bandwidth = Bandwidth(table) if any(rate for _, rate in table) else None
        # Proxies and certificates for every GET (aiohttp and curl alike); a run's source gives its own.
        self.network = network or Network.for_api()
        self._rate = RateLimit(max_requests_per_second) if max_requests_per_second else None
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.low_speed = (low_speed_limit, low_speed_time) if low_speed_limit > 0 and low_speed_time > 0 else None
        self._timeouts = (connect_timeout or None, read_timeout or None)
        self.bytes_done = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="transfer-engine", daemon=True)
        self._files = ThreadPoolExecutor(max_workers=2, thread_name_prefix="files")
        self.committer = GroupCommit(durable=fsync)
        self._slot = _Slot(self)
        self._sem: asyncio.Semaphore
        self._session = None  # made for the first GET: a run with nothing to fetch never imports aiohttp
        self._curl = None  # core.engine.curl.SmallGets, started for the first small GET; False: no pycurl

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Engine":
        self._thread.start()
        self.run(self._open_session())
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _open_session(self) -> None:
        self._sem = asyncio.Semaphore(self.concurrency)

    def _new_session(self):
        # Imported here: aiohttp costs ~0.15 s to import (it builds its TLS contexts then), a third of an
        # empty run's start-up.
        import aiohttp
        from yarl import URL
        global _URL
        _URL = URL
        connect, read = self._timeouts
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0, ttl_dns_cache=300,
                                         ssl=self.network.tls.context)
        # trust_env off: the proxy of each request is the product's one reading (core/network.py), passed below.
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect, sock_read=read), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.run(self._shutdown(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._files.shutdown(wait=True)
        self.committer.close()

    async def _shutdown(self) -> None:
        """Cancel what is in flight and wait for it, so its cleanup (manifest writes) is done on return."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._curl:
            self._curl.close()
        if self._session is not None:
            await self._session.close()

    def run(self, coro, timeout: float | None = None):
        """Run a coroutine on the engine's loop from any thread and wait for its result.

        Raises Stopped when the engine was closed (Ctrl-C) while it ran."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        except concurrent.futures.CancelledError:
            raise Stopped() from None

    def submit(self, coro) -> concurrent.futures.Future:
        """Start a coroutine on the engine's loop from another thread; its future at once."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def in_files(self, fn, *args):
        """Run a blocking file-system call in the engine's file threads (awaitable, on the loop)."""
        return asyncio.get_running_loop().run_in_executor(self._files, fn, *args)

    # -- the request limit ----------------------------------------------------------------------
    def slot(self) -> "_Slot":
        """`async with engine.slot():` one request of the concurrency (and the rate limit)."""
        return self._slot

    async def _acquire(self) -> None:
        await self._sem.acquire()
        if self._rate:
            await self._rate.wait()

    @contextlib.contextmanager
    def request_slot(self):
        """A slot of the same semaphore for a blocking request made in another thread (listing),
        so the total number of requests in flight never exceeds the concurrency."""
        asyncio.run_coroutine_threadsafe(self._acquire(), self._loop).result()
        try:
            yield
        finally:
            self._loop.call_soon_threadsafe(self._sem.release)

    # -- fetching --------------------------------------------------------------------------------
    def _small_gets(self):
        if self._curl is None:
            try:
                from core.engine.curl import SmallGets
            except ImportError:  # no pycurl (the executables, other platforms): every GET on aiohttp
                self._curl = False
            else:
                self._curl = SmallGets(self._loop, *self._timeouts, self.low_speed, self.network)
        return self._curl

    async def open(self, sign: Signer, headers: dict, expired: Callable,
                   small: int | None = None) -> aiohttp.ClientResponse:
        """GET with a freshly signed URL; one re-sign when the store says the link expired.
        `small`: the whole body is wanted in memory and the listing says it has this many bytes; then the
        GET goes to libcurl when it can, and the answer's body is in memory already (curl.Received)."""
        curl = self._small_gets() if small is not None else None
        if not (curl and curl.alive):
            curl = None
        for refresh in (False, True):
            link = sign(refresh)
            if type(link) is not str and inspect.isawaitable(link):
                link = await link
            url, extra = link if type(link) is tuple else (link, None)
            if curl is not None:
                resp = await curl.get(url, {**headers, **extra} if extra else headers, small)
            else:
                # encoded=True: the signature covers the exact percent-encoding the signer produced.
                session = self._session or self._new_session()
                proxy = self.network.proxy_for(url)
                resp = await session.get(_URL(url, encoded=True),
                                         headers={**headers, **extra} if extra else headers,
                                         **(proxy.aiohttp if proxy else {}))
            if resp.status in (200, 206):
                return resp
            body = await resp.read()
            resp.release()
            err = http_error(resp.status, body)
            if refresh or not expired(err):
                raise err
        raise AssertionError("unreachable")
    async def fetch(self, sign: Signer, out: Output, rel: str, size: int, etag: str = "",
                    expired: Callable[[HTTPStatusError], bool] = default_link_expired,
                    on_bytes: Callable[[int], None] | None = None) -> Fetched:
        """Download one object to `out`/`rel` (temp file in the work area, verified, then renamed).
        `size` and `etag` are what the listing said (UNKNOWN_SIZE / "" when the source gives none);
        `on_bytes(n)` hears of every chunk, on the loop, and
        `on_bytes(0)` of every request when it has its slot (its turn among the `concurrency`). Raises on failure."""
        etag = bare_etag(etag)
        if size >= self.multipart_threshold and size > self.part_size:
            return await _fetch.fetch_parts(self, sign, out, rel, size, etag, expired, on_bytes)
        return await _fetch.fetch_whole(self, sign, out, rel, size, etag, expired, on_bytes)


class _Slot:
    """A plain async context manager: a generator-based one costs several µs per request."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine):
        self.engine = engine

    async def __aenter__(self) -> None:
        await self.engine._acquire()

    async def __aexit__(self, *exc) -> None:
        self.engine._sem.release()


def engine_for(settings: Settings, network: Network | None = None) -> Engine:
    """A (not yet started) engine with a run's settings, reaching the servers through `network`."""
    return Engine(settings.concurrency, settings.connect_timeout, settings.read_timeout,
                  max_requests_per_second=settings.max_requests_per_second,
                  low_speed_limit=settings.low_speed_limit, low_speed_time=settings.low_speed_time,
                  fsync=settings.fsync, network=network, bwlimit=settings.bwlimit)
