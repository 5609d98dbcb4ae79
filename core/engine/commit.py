"""Giving finished downloads their final names, off the event loop: bodies written, the store's time set,
the size on disk checked, then renamed into place.

Durability (measured; README "Integrity"): by default nothing is synced per file — a verified file is
renamed into place, and the run syncs the output's file system once before it reports (core/run.finish),
so exit 0 still means on disk. A crash of the process never leaves a wrong file under a final name (the
rename comes after verification); a crash of the machine may leave files the last sync did not reach
empty or short, which the next run finds by their size and fetches again. `fsync=True` (--fsync) makes
each group of files durable (one syncfs, else fsync per file) before any of them gets its final name."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.engine.verify import verify
from core.errors import IntegrityError
from core.workarea import Output


def sync_file_system(fd: int) -> None:
    """Make every file written to the file system of `fd` durable: syncfs(2) on Linux, else sync(2)."""
    if _syncfs is not None and _syncfs(fd) == 0:
        return
    if hasattr(os, "sync"):
        os.sync()


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
class Finished:
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


def pwrite_all(fd: int, data: bytes, pos: int) -> None:
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


def _commit_group(items: list[Finished], durable: bool) -> list[BaseException | None]:
    """Write the in-memory bodies, (`durable`: make the whole group durable,) then give each file its
    final name. Runs in one thread, away from the event loop: creating files blocks on the journal."""
    errors: list[BaseException | None] = [None] * len(items)
    for i, item in enumerate(items):
        try:
            if item.body is not None:
                if item.check:
                    item.check[0].update(item.body)
                    verify(item.check)
                item.fd = item.out.create_temp(item.temp)
                _write_all(item.fd, item.body)
            item.mtime_ns = _stamp(item.fd, item.mtime_ns, item.size)
        except BaseException as exc:  # noqa: BLE001 - reported to that file's download
            errors[i] = exc
    open_fds = [it.fd for it, err in zip(items, errors) if it.fd is not None and err is None]
    synced = not durable or (_syncfs is not None and bool(open_fds) and _syncfs(open_fds[0]) == 0)
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


class GroupCommit:
    """Queues finished downloads; up to `parallel` committers each take what is queued (at most GROUP
    files), so groups grow with the load, a lone file waits for nobody, and file creation — slow on a
    busy disk — runs in several threads at once."""

    GROUP = 256

    def __init__(self, parallel: int = 4, durable: bool = False):
        self.executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="commit")
        self.parallel, self.durable = parallel, durable
        self.queue: list = []
        self.running = 0

    async def commit(self, item: Finished) -> None:
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
                errors = await loop.run_in_executor(self.executor, _commit_group, [item for item, _ in group],
                                                    self.durable)
                for (_, done), err in zip(group, errors):
                    if not done.done():
                        done.set_exception(err) if err else done.set_result(None)
        finally:
            self.running -= 1

