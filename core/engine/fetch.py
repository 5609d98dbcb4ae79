"""Fetching one object: whole (resuming a partial file of the same version) or, when large, as parallel
ranged parts into one preallocated file. Every check of core/engine/verify.py applies before the commit."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from core.engine.commit import Finished, pwrite_all, start_writeback
from core.engine.limits import Pace
from core.engine.verify import (bare_etag, content_range, hash_fd, integrity_check, modified_ns, validator,
                                verify)
from core.errors import DownloadError, HTTPStatusError, IntegrityError, TooSlow
from core.model import UNKNOWN_SIZE
from core.workarea import Output

CHUNK = 256 * 1024
WRITEBACK_EVERY = 8 * 1024 * 1024  # a large body's finished stretches go to disk as it downloads
SMALL_BODY = 256 * 1024  # bodies up to this size are read into memory and written by the committer


@dataclass(slots=True)
class Fetched:
    size: int
    etag: str
    mtime_ns: int  # the local file's modification time as stored: a later change to the file is noticed


def listed_version(resp, etag: str) -> None:
    got = bare_etag(resp.headers.get("ETag"))
    if etag and got and got != etag:
        raise DownloadError("the object changed since it was listed (its ETag differs): rerun to fetch the"
                            " new version")

async def fetch_whole(engine, sign, out: Output, rel: str, size: int, etag: str, expired, on_bytes) -> Fetched:
    part, meta = out.temp_name(rel, "part"), out.temp_name(rel, "meta")
    offset, version = 0, ""
    if size > SMALL_BODY:
        offset, version = await engine.in_files(_resumable, out, part, meta, rel, size, etag)
    headers = {"If-Match": f'"{etag}"'} if etag else {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    async with engine.slot():
        if on_bytes:
            on_bytes(0)  # a request for it has begun (the plugin's "current" count)
        try:
            resp = await engine.open(sign, headers, expired, size if 0 <= size <= SMALL_BODY else None)
        except HTTPStatusError as err:
            if offset and err.status in (412, 416):  # the partial file's version is gone: start over
                await engine.in_files(_discard, out, part, meta)
                return await fetch_whole(engine, sign, out, rel, size, etag, expired, on_bytes)
            if err.status == 412:
                raise DownloadError("the object changed since it was listed (If-Match failed): rerun to fetch"
                                    " the new version") from None
            raise
        try:
            listed_version(resp, etag)
            if resp.status == 206:
                if not offset or validator(resp.headers) != version or \
                        content_range(resp.headers) != (offset, size - 1, size):
                    await engine.in_files(_discard, out, part, meta)
                    raise IntegrityError("the store answered the resume with other bytes than asked for;"
                                         " the partial file was discarded")
            else:
                offset = 0
            length = resp.content_length
            expected = size if size != UNKNOWN_SIZE else (None if length is None else length)
            if length is not None and expected is not None and offset + length != expected:
                raise IntegrityError(f"size mismatch: the store is sending {offset + length} bytes,"
                                     f" the listing said {expected}")
            check = integrity_check(resp.headers, etag)
            mtime = modified_ns(resp.headers)
            if offset == 0 and expected is not None and expected <= SMALL_BODY:
                # Small object: the body stays in memory and one thread writes, syncs and renames a
                # whole group of them; the loop never waits on the disk.
                body = await read_small(engine, resp, expected, on_bytes)
                finished = Finished(out, part, rel, len(body), body=body, check=check, mtime_ns=mtime)
                written = len(body)
            else:
                fd = await engine.in_files(_open_part, out, part, meta, offset, rel, size, etag,
                                         validator(resp.headers))
                try:
                    written = await stream_to(engine, resp, fd, offset, check, on_bytes)
                    if expected is not None and written != expected:
                        raise IntegrityError(f"size mismatch: got {written} of {expected} bytes")
                    if check:
                        verify(check)
                except IntegrityError:
                    os.close(fd)
                    await engine.in_files(_discard, out, part, meta)
                    raise
                except BaseException:
                    os.close(fd)  # a broken stream leaves what arrived, for the next attempt to resume
                    raise
                out.remove_temp(meta)
                finished = Finished(out, part, rel, written, fd=fd, mtime_ns=mtime)
        finally:
            resp.release()
    await engine.committer.commit(finished)
    return Fetched(written, bare_etag(resp.headers.get("ETag")) or etag, finished.mtime_ns)

async def read_small(engine, resp, expected: int, on_bytes) -> bytes:
    # The whole small body within the low-speed window (or its length at that speed); an answer of
    # core/engine/curl.py is in memory already, and came under the same limits.
    if engine.low_speed and not getattr(resp, "in_memory", False):
        limit, seconds = engine.low_speed
        try:
            async with asyncio.timeout(seconds + expected / limit):
                body = await resp.read()
        except TimeoutError:
            raise TooSlow(f"too slow: less than {limit:g} bytes/s for {seconds:g} s") from None
    else:
        body = await resp.read()
    if len(body) != expected:
        raise IntegrityError(f"size mismatch: got {len(body)} of {expected} bytes")
    if engine.bandwidth:  # a small body arrives at once: its share of the cap is waited for after it
        await engine.bandwidth.take(len(body))
    engine.bytes_done += len(body)
    if on_bytes:
        on_bytes(len(body))
    return body

async def stream_to(engine, resp, fd: int, offset: int, check, on_bytes) -> int:
    """Append the body to the temp file at `offset`, hashing it; returns the bytes in the file."""
    if offset and check:
        await engine.in_files(hash_fd, fd, check[0], offset)
    pace = Pace(*engine.low_speed) if engine.low_speed else None
    written, pos, flushed = 0, offset, offset
    async for chunk in resp.content.iter_chunked(CHUNK):
        pwrite_all(fd, chunk, pos)
        pos += len(chunk)
        if pos - flushed >= WRITEBACK_EVERY:
            start_writeback(fd, flushed, pos - flushed)
            flushed = pos
        if check:
            check[0].update(chunk)
        written += len(chunk)
        engine.bytes_done += len(chunk)
        if on_bytes:
            on_bytes(len(chunk))
        if engine.bandwidth:
            waited = await engine.bandwidth.take(len(chunk))
            if pace:
                pace.pause(waited)
        if pace:
            pace.check(written)
    return pos

async def fetch_parts(engine, sign, out: Output, rel: str, size: int, etag: str, expired, on_bytes) -> Fetched:
    """Large object: parallel ranged GETs into a preallocated temp file, each under its own slot."""
    temp = out.temp_name(rel, "parts")
    fd = await engine.in_files(out.create_temp, temp)
    seen_headers: list = []
    try:
        os.ftruncate(fd, size)
        ranges = [(start, min(start + engine.part_size, size) - 1) for start in range(0, size, engine.part_size)]
        try:
            async with asyncio.TaskGroup() as group:
                for start, end in ranges:
                    group.create_task(fetch_range(engine, sign, fd, start, end, size, etag, expired, seen_headers,
                                                        on_bytes))
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        versions = {validator(h) for h in seen_headers}
        if len(versions) > 1:
            raise IntegrityError("the parts came from different versions of the object")
        check = integrity_check(seen_headers[0], etag)
        if check:
            await engine.in_files(hash_fd, fd, check[0], size)
            verify(check)
    except BaseException:
        os.close(fd)
        out.remove_temp(temp)
        raise
    finished = Finished(out, temp, rel, size, fd=fd, mtime_ns=modified_ns(seen_headers[0]))
    await engine.committer.commit(finished)
    return Fetched(size, bare_etag(seen_headers[0].get("ETag")) or etag, finished.mtime_ns)

async def fetch_range(engine, sign, fd: int, start: int, end: int, size: int, etag: str, expired, seen: list,
                       on_bytes) -> None:
    headers = {"Range": f"bytes={start}-{end}", **({"If-Match": f'"{etag}"'} if etag else {})}
    async with engine.slot():
        if on_bytes:
            on_bytes(0)
        try:
            resp = await engine.open(sign, headers, expired)
        except HTTPStatusError as err:
            if err.status == 412:
                raise DownloadError("the object changed since it was listed (If-Match failed): rerun to"
                                    " fetch the new version") from None
            raise
        try:
            if resp.status != 206:
                raise IntegrityError("the store ignored the Range header")
            if content_range(resp.headers) != (start, end, size):
                raise IntegrityError(f"the store sent another range than bytes {start}-{end}/{size}")
            listed_version(resp, etag)
            seen.append(resp.headers)
            pace = Pace(*engine.low_speed) if engine.low_speed else None
            pos = start
            async for chunk in resp.content.iter_chunked(CHUNK):
                if pos + len(chunk) > end + 1:
                    raise IntegrityError(f"size mismatch: part sent more than {end + 1 - start} bytes")
                pwrite_all(fd, chunk, pos)
                pos += len(chunk)
                engine.bytes_done += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
                if engine.bandwidth:
                    waited = await engine.bandwidth.take(len(chunk))
                    if pace:
                        pace.pause(waited)
                if pace:
                    pace.check(pos - start)
            if pos != end + 1:
                raise IntegrityError(f"size mismatch: part got {pos - start} of {end + 1 - start} bytes")
            start_writeback(fd, start, end + 1 - start)
        finally:
            resp.release()



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

