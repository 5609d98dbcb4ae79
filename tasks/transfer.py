"""The streaming HTTP engine: one asyncio loop, one aiohttp session and one request semaphore per process.

Backends only list and sign; every byte of every object is fetched here from a signed URL, so OSS, S3
and Feishu links share resume, ranged parts, integrity checks and the concurrency cap.

What "done" means here: a file gets its final name only when the bytes written are exactly the listed
size, every 206 covered exactly the range asked for, the store's checksum matched where it gives one
(an MD5 ETag, OSS's CRC64), and the version is the one listed (If-Match on the listed ETag). A partial
file is resumed only when it belongs to the same version (size, ETag and the store's validator).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import inspect
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Awaitable, Callable, Union

import aiohttp
import crcmod
from yarl import URL

from tasks.errors import DownloadError, HTTPStatusError, IntegrityError, TooSlow, http_error
from tasks.workarea import Output

MiB = 1 << 20
CHUNK = 256 * 1024
SMALL_BODY = 256 * 1024  # bodies up to this size are read into memory and written by the committer
UNKNOWN_SIZE = -1        # a source that gives no size (some plugin links): the response's length is checked
_MD5_ETAG = re.compile(r"^[0-9a-fA-F]{32}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

# sign(refresh) -> URL, or (URL, extra headers) for links that need e.g. a bearer token; refresh=True means
# the previous link was refused as expired. May be async (a Feishu link is asked from the browser plugin).
Link = Union[str, tuple[str, dict]]
Signer = Callable[[bool], Union[Link, Awaitable[Link]]]


class Stopped(Exception):
    """The engine was closed (Ctrl-C): what finished is recorded, the rest resumes next run."""


def default_link_expired(err: HTTPStatusError) -> bool:
    return err.expired


@dataclass(slots=True)
class Fetched:
    size: int
    etag: str
    mtime_ns: int  # the local file's modification time as stored: a later change to the file is noticed


class RateLimit:
    """Spaces request starts evenly: at most `rate` per second for the whole process."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next_at = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, self.next_at)
        self.next_at = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class _Crc64:
    """OSS's CRC64-ECMA (crcmod's C extension, the one oss2 uses)."""

    def __init__(self):
        self._crc = crcmod.Crc(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)

    def update(self, data: bytes) -> None:
        self._crc.update(data)

    def value(self) -> str:
        return str(self._crc.crcValue)


class _Md5:
    def __init__(self):
        self._md5 = hashlib.md5()

    def update(self, data: bytes) -> None:
        self._md5.update(data)

    def value(self) -> str:
        return self._md5.hexdigest()


def bare_etag(value: str | None) -> str:
    """An ETag without W/ and quotes, lower case: how listings and headers are compared."""
    value = (value or "").strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def is_md5_etag(etag: str) -> bool:
    return bool(_MD5_ETAG.match(etag))


def _integrity_check(headers, etag: str):
    """(hasher, expected, name) for what the store lets us verify, or None."""
    crc = headers.get("x-oss-hash-crc64ecma")
    if crc:
        return _Crc64(), crc, "crc64"
    # An S3 ETag is the body's MD5 only for single-part, non-KMS objects.
    etag = bare_etag(headers.get("ETag") or etag)
    kms = "kms" in (headers.get("x-amz-server-side-encryption", "") + headers.get(
        "x-oss-server-side-encryption", "")).lower()
    if is_md5_etag(etag) and not kms:
        return _Md5(), etag, "md5"
    return None


def _verify(check) -> None:
    hasher, expected, name = check
    if hasher.value() != expected:
        raise IntegrityError(f"{name} mismatch: the downloaded bytes are damaged")


def _validator(headers) -> str:
    """What identifies the version a response belongs to: its ETag, else its Last-Modified."""
    etag = bare_etag(headers.get("ETag"))
    return f"etag:{etag}" if etag else (f"date:{headers['Last-Modified']}" if headers.get("Last-Modified") else "")


_modified_cache: dict[str, int | None] = {}


def _modified_ns(headers) -> int | None:
    """The object's Last-Modified as a file time (the local copy keeps the store's time, as rclone does)."""
    value = headers.get("Last-Modified")
    if not value:
        return None
    if value not in _modified_cache:  # objects of one upload batch share a few values
        if len(_modified_cache) > 4096:
            _modified_cache.clear()
        try:
            _modified_cache[value] = int(parsedate_to_datetime(value).timestamp()) * 1_000_000_000
        except (TypeError, ValueError, OverflowError):
            _modified_cache[value] = None
    return _modified_cache[value]


def _syncfs_function():
    """Linux's syncfs(2): one call makes every written file of the file system durable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs if hasattr(libc, "syncfs") else None
    except OSError:
        return None


_syncfs = _syncfs_function()
_UTIME_FD = os.utime in os.supports_fd


@dataclass(slots=True)
class _Finished:
    """A download waiting for its commit: an open temp file, or (small objects) the body in memory."""
    out: Output
    temp: str
    rel: str
    size: int
    fd: int | None = None
    body: bytes | None = None
    check: tuple | None = None
    mtime_ns: int | None = None  # wanted (the store's Last-Modified); then the one the file system stored


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    """pwrite may write less than asked (a disk filling up): what it did not write must not become a hole
    of zeros in a file whose checksum was computed from the bytes received."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _stamp(fd: int, wanted: int | None, size: int) -> int:
    """Give the file the store's time; check, one last time, that the file holds every byte received."""
    if wanted is not None and _UTIME_FD:
        os.utime(fd, ns=(wanted, wanted))
    st = os.fstat(fd)
    if st.st_size != size:
        raise IntegrityError(f"size mismatch: the file on disk has {st.st_size} of {size} bytes")
    return st.st_mtime_ns


def _commit_group(items: list[_Finished]) -> list[BaseException | None]:
    """Write the in-memory bodies, make the whole group durable, then give each file its final name.

    Runs in one thread, away from the event loop: open() of a new file blocks on the journal while a
    sync runs, so the loop must never do it. fsync per file costs ~230 µs here; one syncfs for the
    group costs a fraction of that per file. Either way no file gets its final name before its bytes
    are on disk."""
    errors: list[BaseException | None] = [None] * len(items)
    for i, item in enumerate(items):
        try:
            if item.body is not None:
                if item.check:
                    item.check[0].update(item.body)
                    _verify(item.check)
                item.fd = item.out.create_temp(item.temp)
                _write_all(item.fd, item.body)
            item.mtime_ns = _stamp(item.fd, item.mtime_ns, item.size)
        except BaseException as exc:  # noqa: BLE001 - reported to that file's download
            errors[i] = exc
    open_fds = [it.fd for it, err in zip(items, errors) if it.fd is not None and err is None]
    synced = _syncfs is not None and bool(open_fds) and _syncfs(open_fds[0]) == 0
    for i, item in enumerate(items):
        try:
            if item.fd is not None:
                if errors[i] is None and not synced:
                    os.fsync(item.fd)
                os.close(item.fd)
                item.fd = None
            if errors[i] is None:
                item.out.install(item.temp, item.rel)
        except BaseException as exc:  # noqa: BLE001
            errors[i] = exc
        if errors[i] is not None:
            with contextlib.suppress(OSError):
                item.out.remove_temp(item.temp)  # damaged, or no place for it: no use to a rerun
    return errors


class _GroupCommit:
    """Queues finished downloads; up to `parallel` committers each take what is queued (at most GROUP
    files), so groups grow with the load, a lone file waits for nobody, and file creation — slow on a
    busy disk — runs in several threads at once."""

    GROUP = 256

    def __init__(self, parallel: int = 4):
        self.executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="commit")
        self.parallel = parallel
        self.queue: list = []
        self.running = 0

    async def commit(self, item: _Finished) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.queue.append((item, done))
        if self.running < self.parallel:
            self.running += 1
            loop.create_task(self._drain())
        await asyncio.shield(done)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.queue:
                group, self.queue = self.queue[:self.GROUP], self.queue[self.GROUP:]
                errors = await loop.run_in_executor(self.executor, _commit_group, [item for item, _ in group])
                for (_, done), err in zip(group, errors):
                    if not done.done():
                        done.set_exception(err) if err else done.set_result(None)
        finally:
            self.running -= 1


class _Pace:
    """curl's low-speed limit: fewer than `limit` bytes/s over `seconds` fails the transfer as too slow,
    so a trickling server cannot hold a run for ever (a read timeout never fires while bytes trickle)."""

    __slots__ = ("limit", "seconds", "loop", "since", "at")

    def __init__(self, limit: float, seconds: float):
        self.limit, self.seconds = limit, seconds
        self.loop = asyncio.get_running_loop()
        self.since, self.at = self.loop.time(), 0

    def check(self, got: int) -> None:
        now = self.loop.time()
        if now - self.since >= self.seconds:
            if got - self.at < self.limit * self.seconds:
                raise TooSlow(f"too slow: less than {self.limit:g} bytes/s for {self.seconds:g} s")
            self.since, self.at = now, got


class Engine:
    def __init__(self, concurrency: int = 5, connect_timeout: float = 10, read_timeout: float = 60,
                 part_size: int = 8 * MiB, multipart_threshold: int = 16 * MiB,
                 max_requests_per_second: float | None = None, low_speed_limit: float = 1024,
                 low_speed_time: float = 60):
        self.concurrency = concurrency
        self._rate = RateLimit(max_requests_per_second) if max_requests_per_second else None
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.low_speed = (low_speed_limit, low_speed_time) if low_speed_limit > 0 and low_speed_time > 0 else None
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout or None,
                                              sock_read=read_timeout or None)
        self.bytes_done = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="transfer-engine", daemon=True)
        self._files = ThreadPoolExecutor(max_workers=2, thread_name_prefix="files")
        self._committer = _GroupCommit()
        self._sem: asyncio.Semaphore
        self._session: aiohttp.ClientSession

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Engine":
        self._thread.start()
        self.run(self._open_session())
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _open_session(self) -> None:
        self._sem = asyncio.Semaphore(self.concurrency)
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.run(self._shutdown(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._files.shutdown(wait=True)
        self._committer.executor.shutdown(wait=True)

    async def _shutdown(self) -> None:
        """Cancel what is in flight and wait for it, so its cleanup (manifest writes) is done on return."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._session.close()

    def run(self, coro, timeout: float | None = None):
        """Run a coroutine on the engine's loop from any thread and wait for its result.

        Raises Stopped when the engine was closed (Ctrl-C) while it ran."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        except concurrent.futures.CancelledError:
            raise Stopped() from None

    def in_files(self, fn, *args):
        """Run a blocking file-system call in the engine's file threads (awaitable, on the loop)."""
        return asyncio.get_running_loop().run_in_executor(self._files, fn, *args)

    # -- the request limit ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def slot(self):
        async with self._sem:
            if self._rate:
                await self._rate.wait()
            yield

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
    async def _open(self, sign: Signer, headers: dict, expired: Callable) -> aiohttp.ClientResponse:
        """GET with a freshly signed URL; one re-sign when the store says the link expired."""
        for refresh in (False, True):
            link = sign(refresh)
            if inspect.isawaitable(link):
                link = await link
            url, extra = link if isinstance(link, tuple) else (link, None)
            # encoded=True: the signature covers the exact percent-encoding the signer produced.
            resp = await self._session.get(URL(url, encoded=True), headers={**headers, **extra} if extra else headers)
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
        `on_bytes(n)` hears of every chunk, on the loop. Raises on failure."""
        etag = bare_etag(etag)
        if size >= self.multipart_threshold and size > self.part_size:
            return await self._fetch_parts(sign, out, rel, size, etag, expired, on_bytes)
        return await self._fetch_whole(sign, out, rel, size, etag, expired, on_bytes)

    def _listed_version(self, resp, etag: str) -> None:
        got = bare_etag(resp.headers.get("ETag"))
        if etag and got and got != etag:
            raise DownloadError("the object changed since it was listed (its ETag differs): rerun to fetch the"
                                " new version")

    async def _fetch_whole(self, sign, out: Output, rel: str, size: int, etag: str, expired, on_bytes) -> Fetched:
        part, meta = out.temp_name(rel, "part"), out.temp_name(rel, "meta")
        offset, version = 0, ""
        if size > SMALL_BODY:
            offset, version = await self.in_files(_resumable, out, part, meta, rel, size, etag)
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        async with self.slot():
            try:
                resp = await self._open(sign, headers, expired)
            except HTTPStatusError as err:
                if offset and err.status in (412, 416):  # the partial file's version is gone: start over
                    await self.in_files(_discard, out, part, meta)
                    return await self._fetch_whole(sign, out, rel, size, etag, expired, on_bytes)
                if err.status == 412:
                    raise DownloadError("the object changed since it was listed (If-Match failed): rerun to fetch"
                                        " the new version") from None
                raise
            try:
                self._listed_version(resp, etag)
                if resp.status == 206:
                    if not offset or _validator(resp.headers) != version or \
                            _content_range(resp.headers) != (offset, size - 1, size):
                        await self.in_files(_discard, out, part, meta)
                        raise IntegrityError("the store answered the resume with other bytes than asked for;"
                                             " the partial file was discarded")
                else:
                    offset = 0
                length = resp.content_length
                expected = size if size != UNKNOWN_SIZE else (None if length is None else length)
                if length is not None and expected is not None and offset + length != expected:
                    raise IntegrityError(f"size mismatch: the store is sending {offset + length} bytes,"
                                         f" the listing said {expected}")
                check = _integrity_check(resp.headers, etag)
                mtime = _modified_ns(resp.headers)
                if offset == 0 and expected is not None and expected <= SMALL_BODY:
                    # Small object: the body stays in memory and one thread writes, syncs and renames a
                    # whole group of them; the loop never waits on the disk.
                    body = await self._read_small(resp, expected, on_bytes)
                    finished = _Finished(out, part, rel, len(body), body=body, check=check, mtime_ns=mtime)
                    written = len(body)
                else:
                    fd = await self.in_files(_open_part, out, part, meta, offset, rel, size, etag,
                                             _validator(resp.headers))
                    try:
                        written = await self._stream_to(resp, fd, offset, check, on_bytes)
                        if expected is not None and written != expected:
                            raise IntegrityError(f"size mismatch: got {written} of {expected} bytes")
                        if check:
                            _verify(check)
                    except IntegrityError:
                        os.close(fd)
                        await self.in_files(_discard, out, part, meta)
                        raise
                    except BaseException:
                        os.close(fd)  # a broken stream leaves what arrived, for the next attempt to resume
                        raise
                    out.remove_temp(meta)
                    finished = _Finished(out, part, rel, written, fd=fd, mtime_ns=mtime)
            finally:
                resp.release()
        await self._committer.commit(finished)
        return Fetched(written, bare_etag(resp.headers.get("ETag")) or etag, finished.mtime_ns)

    async def _read_small(self, resp, expected: int, on_bytes) -> bytes:
        if self.low_speed:  # the whole small body within the low-speed window (or its length at that speed)
            limit, seconds = self.low_speed
            try:
                async with asyncio.timeout(seconds + expected / limit):
                    body = await resp.read()
            except TimeoutError:
                raise TooSlow(f"too slow: less than {limit:g} bytes/s for {seconds:g} s") from None
        else:
            body = await resp.read()
        if len(body) != expected:
            raise IntegrityError(f"size mismatch: got {len(body)} of {expected} bytes")
        self.bytes_done += len(body)
        if on_bytes:
            on_bytes(len(body))
        return body

    async def _stream_to(self, resp, fd: int, offset: int, check, on_bytes) -> int:
        """Append the body to the temp file at `offset`, hashing it; returns the bytes in the file."""
        if offset and check:
            await self.in_files(_hash_fd, fd, check[0], offset)
        pace = _Pace(*self.low_speed) if self.low_speed else None
        written, pos = 0, offset
        async for chunk in resp.content.iter_chunked(CHUNK):
            _pwrite_all(fd, chunk, pos)
            pos += len(chunk)
            if check:
                check[0].update(chunk)
            written += len(chunk)
            self.bytes_done += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            if pace:
                pace.check(written)
        return pos

    async def _fetch_parts(self, sign, out: Output, rel: str, size: int, etag: str, expired, on_bytes) -> Fetched:
        """Large object: parallel ranged GETs into a preallocated temp file, each under its own slot."""
        temp = out.temp_name(rel, "parts")
        fd = await self.in_files(out.create_temp, temp)
        seen_headers: list = []
        try:
            os.ftruncate(fd, size)
            ranges = [(start, min(start + self.part_size, size) - 1) for start in range(0, size, self.part_size)]
            try:
                async with asyncio.TaskGroup() as group:
                    for start, end in ranges:
                        group.create_task(self._fetch_range(sign, fd, start, end, size, etag, expired, seen_headers,
                                                            on_bytes))
            except BaseExceptionGroup as eg:
                raise eg.exceptions[0] from None
            versions = {_validator(h) for h in seen_headers}
            if len(versions) > 1:
                raise IntegrityError("the parts came from different versions of the object")
            check = _integrity_check(seen_headers[0], etag)
            if check:
                await self.in_files(_hash_fd, fd, check[0], size)
                _verify(check)
        except BaseException:
            os.close(fd)
            out.remove_temp(temp)
            raise
        finished = _Finished(out, temp, rel, size, fd=fd, mtime_ns=_modified_ns(seen_headers[0]))
        await self._committer.commit(finished)
        return Fetched(size, bare_etag(seen_headers[0].get("ETag")) or etag, finished.mtime_ns)

    async def _fetch_range(self, sign, fd: int, start: int, end: int, size: int, etag: str, expired, seen: list,
                           on_bytes) -> None:
        headers = {"Range": f"bytes={start}-{end}", **({"If-Match": f'"{etag}"'} if etag else {})}
        async with self.slot():
            try:
                resp = await self._open(sign, headers, expired)
            except HTTPStatusError as err:
                if err.status == 412:
                    raise DownloadError("the object changed since it was listed (If-Match failed): rerun to"
                                        " fetch the new version") from None
                raise
            try:
                if resp.status != 206:
                    raise IntegrityError("the store ignored the Range header")
                if _content_range(resp.headers) != (start, end, size):
                    raise IntegrityError(f"the store sent another range than bytes {start}-{end}/{size}")
                self._listed_version(resp, etag)
                seen.append(resp.headers)
                pace = _Pace(*self.low_speed) if self.low_speed else None
                pos = start
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if pos + len(chunk) > end + 1:
                        raise IntegrityError(f"size mismatch: part sent more than {end + 1 - start} bytes")
                    _pwrite_all(fd, chunk, pos)
                    pos += len(chunk)
                    self.bytes_done += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                    if pace:
                        pace.check(pos - start)
                if pos != end + 1:
                    raise IntegrityError(f"size mismatch: part got {pos - start} of {end + 1 - start} bytes")
            finally:
                resp.release()


def _content_range(headers) -> tuple[int, int, int] | None:
    m = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
    if not m or m.group(3) == "*":
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _resumable(out: Output, part: str, meta: str, rel: str, size: int, etag: str) -> tuple[int, str]:
    """(bytes to resume from, the version they belong to), or (0, "") with any unusable partial removed.
    A partial file is resumed only when it is of the same object version as the listing says now."""
    info = out.read_meta(meta)
    fd = out.open_partial(part)
    if fd is None:
        out.remove_temp(meta)
        return 0, ""
    try:
        have = os.fstat(fd).st_size
    finally:
        os.close(fd)
    same = (info.get("rel") == rel and info.get("size") == size and info.get("etag") == etag
            and info.get("version") and 0 < have < size)
    if not same:
        _discard(out, part, meta)
        return 0, ""
    return have, info["version"]


def _open_part(out: Output, part: str, meta: str, offset: int, rel: str, size: int, etag: str, version: str) -> int:
    """The temp file to stream into: the partial file at `offset`, or a new one whose version is recorded
    first (no version known: not resumable, so no record)."""
    if offset:
        fd = out.open_partial(part)
        if fd is not None:
            os.ftruncate(fd, offset)
            return fd
    out.remove_temp(meta)
    fd = out.create_temp(part)
    if version and size != UNKNOWN_SIZE:
        out.write_meta(meta, {"rel": rel, "size": size, "etag": etag, "version": version})
    return fd


def _discard(out: Output, part: str, meta: str) -> None:
    out.remove_temp(part)
    out.remove_temp(meta)


def _hash_fd(fd: int, hasher, length: int) -> None:
    pos = 0
    while pos < length:
        data = os.pread(fd, min(8 * MiB, length - pos), pos)
        if not data:
            break
        hasher.update(data)
        pos += len(data)
