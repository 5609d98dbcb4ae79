"""The streaming HTTP engine: one asyncio loop, one aiohttp session and one request semaphore per process.

Backends only list and sign; every byte of every object is fetched here from a signed URL, so OSS, S3
and Feishu links share resume, ranged parts, integrity checks and the concurrency cap.
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
from pathlib import Path
from typing import Awaitable, Callable, Union

import aiohttp
import crcmod
from yarl import URL

from tasks.errors import HTTPStatusError, IntegrityError, http_error

MiB = 1 << 20
CHUNK = 256 * 1024
SMALL_BODY = 256 * 1024  # bodies up to this size are read into memory and written by the committer
_MD5_ETAG = re.compile(r"^[0-9a-fA-F]{32}$")

# sign(refresh) -> URL, or (URL, extra headers) for links that need e.g. a bearer token; refresh=True means
# the previous link was refused as expired. May be async (a Feishu link is asked from the browser plugin).
Link = Union[str, tuple[str, dict]]
Signer = Callable[[bool], Union[Link, Awaitable[Link]]]


class Stopped(Exception):
    """The engine was cancelled (Ctrl-C); what finished is recorded, the rest resumes next run."""


def default_link_expired(err: HTTPStatusError) -> bool:
    return err.expired


@dataclass(slots=True)
class Fetched:
    size: int
    etag: str


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


def _integrity_check(headers, etag: str):
    """(hasher, expected, name) for what the store lets us verify, or None."""
    crc = headers.get("x-oss-hash-crc64ecma")
    if crc:
        return _Crc64(), crc, "crc64"
    # An S3 ETag is the body's MD5 only for single-part, non-KMS objects.
    etag = (headers.get("ETag") or etag or "").strip('"')
    kms = "kms" in (headers.get("x-amz-server-side-encryption", "") + headers.get(
        "x-oss-server-side-encryption", "")).lower()
    if _MD5_ETAG.match(etag) and not kms:
        return _Md5(), etag.lower(), "md5"
    return None


def temp_path(dest: Path, whole: bool) -> Path:
    """Temp file beside the target (same file system, so rename is atomic); short, fixed name per target
    so a rerun finds and resumes it. Ranged-part temps are preallocated and never resumed."""
    digest = hashlib.sha1(dest.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return dest.with_name(f".ossdl-{digest}.{'tmp' if whole else 'parts'}")


def _syncfs_function():
    """Linux's syncfs(2): one call makes every written file of the file system durable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs if hasattr(libc, "syncfs") else None
    except OSError:
        return None


_syncfs = _syncfs_function()


@dataclass(slots=True)
class _Finished:
    """A download waiting for its commit: an open temp file, or (small objects) the body in memory."""
    tmp: Path
    dest: Path
    file: object = None
    body: bytes | None = None
    check: tuple | None = None


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
                item.file = _open_in_folder(item.tmp, "wb")
                item.file.write(item.body)
            item.file.flush()
        except BaseException as exc:  # noqa: BLE001 - reported to that file's download
            errors[i] = exc
    synced = _syncfs is not None and any(it.file for it in items) and \
        _syncfs(next(it.file for it in items if it.file).fileno()) == 0
    for i, item in enumerate(items):
        try:
            if item.file and errors[i] is None and not synced:
                os.fsync(item.file.fileno())
            if item.file:
                item.file.close()
            if errors[i] is None:
                os.replace(item.tmp, item.dest)
        except OSError as exc:
            errors[i] = exc
        if errors[i] is not None:
            with contextlib.suppress(OSError):
                os.unlink(item.tmp)  # damaged, or dest is a folder: these bytes are no use to a rerun
    return errors


def _verify(check) -> None:
    hasher, expected, name = check
    if hasher.value() != expected:
        raise IntegrityError(f"{name} mismatch: the downloaded bytes are damaged")


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


class Engine:
    def __init__(self, concurrency: int = 5, connect_timeout: float = 10, read_timeout: float = 60,
                 part_size: int = 8 * MiB, multipart_threshold: int = 16 * MiB,
                 max_requests_per_second: float | None = None):
        self.concurrency = concurrency
        self._rate = RateLimit(max_requests_per_second) if max_requests_per_second else None
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
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

        Raises Stopped when the engine was cancelled (Ctrl-C) while it ran."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        except concurrent.futures.CancelledError:
            raise Stopped() from None

    def cancel(self) -> None:
        """Stop everything in flight (Ctrl-C). Whole-object temp files stay for the next run to resume."""
        def _cancel_all():
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
        self._loop.call_soon_threadsafe(_cancel_all)

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

    async def fetch(self, sign: Signer, dest: Path, size: int, etag: str = "",
                    expired: Callable[[HTTPStatusError], bool] = default_link_expired,
                    on_bytes: Callable[[int], None] | None = None) -> Fetched:
        """Download one object to `dest` (temp file, fsync, rename). Raises on failure.
        `on_bytes(n)` is called on the engine's loop with each chunk's length (progress displays)."""
        if size >= self.multipart_threshold and size > self.part_size:
            return await self._fetch_parts(sign, dest, size, etag, expired, on_bytes)
        return await self._fetch_whole(sign, dest, size, etag, expired, on_bytes)

    async def _fetch_whole(self, sign, dest: Path, size: int, etag: str, expired, on_bytes=None) -> Fetched:
        tmp = temp_path(dest, whole=True)
        loop = asyncio.get_running_loop()
        offset = await loop.run_in_executor(self._files, _resumable_bytes, tmp, size) if size > SMALL_BODY else 0
        headers = {"Range": f"bytes={offset}-", **({"If-Match": f'"{etag}"'} if etag else {})} if offset else {}
        async with self.slot():
            try:
                resp = await self._open(sign, headers, expired)
            except HTTPStatusError as err:
                if offset and err.status in (412, 416):  # changed since the partial download: start over
                    await loop.run_in_executor(self._files, _remove, tmp)
                    return await self._fetch_whole(sign, dest, 0, etag, expired, on_bytes)
                raise
            try:
                resp_etag = (resp.headers.get("ETag") or etag).strip('"')
                check = _integrity_check(resp.headers, etag)
                length = resp.content_length
                if resp.status != 206:
                    offset = 0
                if offset == 0 and length is not None and length <= SMALL_BODY:
                    # Small object: the body stays in memory and one thread writes, syncs and renames a
                    # whole group of them; the loop never waits on the disk.
                    body = await resp.read()
                    self.bytes_done += len(body)
                    if on_bytes:
                        on_bytes(len(body))
                    finished = _Finished(tmp, dest, body=body, check=check)
                else:
                    written, file = await self._stream_to(resp, tmp, offset, check, on_bytes)
                    try:
                        if length is not None and written != offset + length:
                            raise IntegrityError(f"size mismatch: got {written} of {offset + length} bytes")
                        if check:
                            _verify(check)
                    except IntegrityError:
                        file.close()
                        await loop.run_in_executor(self._files, _remove, tmp)
                        raise
                    finished = _Finished(tmp, dest, file=file)
            finally:
                resp.release()
        await self._committer.commit(finished)
        return Fetched(len(body) if finished.body is not None else written, resp_etag)

    async def _stream_to(self, resp, tmp: Path, offset: int, check, on_bytes=None):
        """Append the body to the temp file (resuming at offset); a broken stream leaves what arrived."""
        loop = asyncio.get_running_loop()
        f = await loop.run_in_executor(self._files, _open_in_folder, tmp, "r+b" if offset else "wb")
        try:
            if offset:
                if check:
                    await loop.run_in_executor(self._files, _hash_file, f, check[0], offset)
                f.seek(offset)
                f.truncate()
            written = offset
            async for chunk in resp.content.iter_chunked(CHUNK):
                f.write(chunk)
                if check:
                    check[0].update(chunk)
                written += len(chunk)
                self.bytes_done += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            return written, f
        except BaseException:
            f.close()
            raise

    async def _fetch_parts(self, sign, dest: Path, size: int, etag: str, expired, on_bytes=None) -> Fetched:
        """Large object: parallel ranged GETs into a preallocated temp file, each under its own slot."""
        tmp = temp_path(dest, whole=False)
        f = await asyncio.get_running_loop().run_in_executor(self._files, _open_in_folder, tmp, "w+b")
        seen_headers: list = []
        try:
            f.truncate(size)
            fd = f.fileno()
            ranges = [(start, min(start + self.part_size, size) - 1) for start in range(0, size, self.part_size)]
            try:
                async with asyncio.TaskGroup() as group:
                    for start, end in ranges:
                        group.create_task(self._fetch_range(sign, fd, start, end, etag, expired, seen_headers,
                                                            on_bytes))
            except BaseExceptionGroup as eg:
                raise eg.exceptions[0] from None
            check = _integrity_check(seen_headers[0], etag)
            if check:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._files, _hash_file, f, check[0], size)
                if check[0].value() != check[1]:
                    raise IntegrityError(f"{check[2]} mismatch: the downloaded bytes are damaged")
            resp_etag = (seen_headers[0].get("ETag") or etag).strip('"')
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        await self._committer.commit(_Finished(tmp, dest, file=f))
        return Fetched(size, resp_etag)

    async def _fetch_range(self, sign, fd: int, start: int, end: int, etag: str, expired, seen: list,
                           on_bytes=None) -> None:
        headers = {"Range": f"bytes={start}-{end}", **({"If-Match": f'"{etag}"'} if etag else {})}
        async with self.slot():
            resp = await self._open(sign, headers, expired)
            try:
                if resp.status != 206:
                    raise IntegrityError("the store ignored the Range header")
                seen.append(resp.headers)
                pos = start
                async for chunk in resp.content.iter_chunked(CHUNK):
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
                    self.bytes_done += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                if pos != end + 1:
                    raise IntegrityError(f"size mismatch: part got {pos - start} of {end + 1 - start} bytes")
            finally:
                resp.release()


def _resumable_bytes(tmp: Path, size: int) -> int:
    """Bytes of an earlier partial download to resume from; 0 (and no temp) when there is nothing usable."""
    try:
        have = tmp.stat().st_size
    except FileNotFoundError:
        return 0
    if have >= size:  # a stale temp of an older version
        tmp.unlink(missing_ok=True)
        return 0
    return have


_made_folders: set[str] = set()  # a mkdir syscall per file is measurable when files are small


def _open_in_folder(path: Path, mode: str):
    """open(), creating the folder first; a file where a folder should be fails as a file/folder conflict."""
    folder = os.path.dirname(path)
    if mode != "r+b" and folder not in _made_folders:
        os.makedirs(folder, exist_ok=True)
        _made_folders.add(folder)
    try:
        return open(path, mode)
    except FileNotFoundError:  # the folder was removed since (another run, a user): make it again
        _made_folders.discard(folder)
        if mode == "r+b":
            raise
        os.makedirs(folder, exist_ok=True)
        return open(path, mode)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _hash_file(f, hasher, length: int) -> None:
    f.flush()
    fd, pos = f.fileno(), 0
    while pos < length:
        data = os.pread(fd, min(8 * MiB, length - pos), pos)
        if not data:
            break
        hasher.update(data)
        pos += len(data)

