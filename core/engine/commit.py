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
import collections
import contextlib
import os
import threading
from dataclasses import dataclass

from core.engine.verify import verify
from core.errors import IntegrityError
# syncfs is the output's (core/workarea.py): this module uses it, never the other way round.
from core.workarea import Output, _linux_libc, _syncfs, _syncfs_function  # noqa: F401 - _syncfs_function: tests


def _writeback_function():
    """Linux's sync_file_range(2) with SYNC_FILE_RANGE_WRITE: start writing a range to disk, wait for
    nothing. Elsewhere None."""
    import ctypes
    libc = _linux_libc()
    if libc is None or not hasattr(libc, "sync_file_range"):
        return None
    call = libc.sync_file_range
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return lambda fd, offset, length: call(fd, offset, length, 2)


_writeback = _writeback_function()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Let the disk start on a large file's finished range while the rest downloads, so the one sync
    before the report (or --fsync's) waits for the tail only: 1 GiB left dirty took 0.85 s to sync here."""
    if _writeback is not None:
        _writeback(fd, offset, length)
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


def seek_write(fd: int, data, pos: int) -> int:
    """pwrite where the OS has none (Windows). Safe here because every write of a download runs on the
    engine's loop thread, and a file is hashed in another thread only while nothing writes to it."""
    os.lseek(fd, pos, os.SEEK_SET)
    return os.write(fd, data)


_pwrite = getattr(os, "pwrite", seek_write)


def pwrite_all(fd: int, data: bytes, pos: int) -> None:
    """pwrite may write less than asked (a disk filling up): what it did not write must not become a hole
    of zeros in a file whose checksum was computed from the bytes received."""
    view = memoryview(data)
    while view:
        n = _pwrite(fd, view, pos)
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
    """Finished downloads wait in one queue; `parallel` committer threads each take what is queued (at most
    GROUP files) and commit it as a group, so groups grow with the load and a lone file waits for nobody.
    The loop only appends and, when a committer sleeps, wakes one: a thread hand-off per file
    (run_in_executor) was a sixth of a small-object run's CPU."""

    GROUP = 256
    GATHER, GATHER_SECONDS = 32, 0.003
    LOOKS = 30  # ~0.1 s of looking before a committer sleeps until woken

    def __init__(self, parallel: int = 2, durable: bool = False):
        self.parallel, self.durable = parallel, durable
        self.queue: collections.deque = collections.deque()
        self.arrived: list = []  # on the event loop's thread only
        self.cond = threading.Condition()
        self.sleeping = 0
        self.threads: list[threading.Thread] = []
        self.closed = False

    async def commit(self, item: Finished) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.arrived.append((item, done, loop))
        if len(self.arrived) == 1:
            loop.call_soon(self._hand_over)
        await asyncio.shield(done)

    def _hand_over(self) -> None:
        """What finished during one turn of the loop goes to the committers at once: one lock and at most
        one wake-up per turn, not per file (a wake-up per file was ~6 % of the loop's time)."""
        arrived, self.arrived = self.arrived, []
        with self.cond:
            self.queue.extend(arrived)
            if self.sleeping:
                self.cond.notify()
            elif len(self.threads) < self.parallel:
                thread = threading.Thread(target=self._work, name=f"commit-{len(self.threads)}", daemon=True)
                self.threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while True:
            with self.cond:
                looks = 0
                while not self.queue and not self.closed:
                    if looks < self.LOOKS:  # busy: look again soon, so the loop need not wake us per turn
                        looks += 1
                        self.cond.wait(self.GATHER_SECONDS)
                        continue
                    self.sleeping += 1  # idle: sleep until woken
                    self.cond.wait()
                    self.sleeping -= 1
                if not self.queue:
                    return
                if len(self.queue) < self.GATHER and not self.closed:
                    # A moment for more to come (nobody wakes us meanwhile): one wake-up and one hand-back
                    # per group, not per file. The downloads waiting on it hold no request slot.
                    self.cond.wait(self.GATHER_SECONDS)
                group = [self.queue.popleft() for _ in range(min(self.GROUP, len(self.queue)))]
                if not group:  # another committer took them meanwhile
                    continue
            errors = _commit_group([item for item, _, _ in group], self.durable)
            try:
                group[0][2].call_soon_threadsafe(_settle, group, errors)
            except RuntimeError:  # the engine has stopped (Ctrl-C): the files are in place, nobody waits
                pass

    def close(self) -> None:
        """Commit what is queued, then stop the threads."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()


def _settle(group: list, errors: list) -> None:
    for (_, done, _), err in zip(group, errors):
        if not done.done():
            done.set_exception(err) if err else done.set_result(None)
