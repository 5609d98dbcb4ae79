"""The output folder as the tool writes it: one writer at a time, a private work area no key can reach,
and no write that could leave the folder.

    <output>/.ossdl/                 the work area: temp files, resumable partial files, the lock
    <output>/.ossdl/lock[-<shard>]   held (flock) for the whole run; says who holds it
    <output>/.ossdl/<hash>.part      a whole-object download in progress, resumable;
    <output>/.ossdl/<hash>.meta        the version it belongs to (size, ETag, validator)
    <output>/.ossdl/<hash>.parts     a ranged (multi-part) download in progress, never resumed

Every folder below the output is opened with O_NOFOLLOW from its parent's descriptor, so a symbolic
link planted anywhere on a file's path is refused, never followed; temp files are created with
O_EXCL|O_NOFOLLOW; a file gets its final name by renameat(2), which replaces a symbolic link that sits
at the final name instead of writing through it. Where the OS has no *at() calls (Windows), the same
checks are made with lstat on each folder before it is used.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

from core.errors import KeyClash, LocalPathError, UsageError, as_download_error

WORK_DIR = ".ossdl"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
# AT_CALLS, _NOFOLLOW, _DIRECTORY, and fcntl/msvcrt above are read when used: tests/test_portable.py sets them as
# Windows has them (no *at() calls, no O_NOFOLLOW, an msvcrt lock) to run that branch on Linux.
AT_CALLS = {os.open, os.mkdir, os.rename, os.stat, os.unlink} <= os.supports_dir_fd
MAX_OPEN_FOLDERS = 256

Handle = "int | str"  # a folder: a descriptor where the OS has *at() calls, else a checked path


class OutputBusy(UsageError):
    """Another run holds the output folder."""


def _is_link(st: os.stat_result) -> bool:
    if stat.S_ISLNK(st.st_mode):
        return True
    # Windows junctions and other reparse points lead elsewhere just like symbolic links.
    return bool(getattr(st, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0))


class Output:
    """An output folder opened for writing by this run. Thread-safe."""

    def __init__(self, root: Path, shard: str | None = None, owner: dict | None = None, read_only: bool = False):
        """`read_only`: only to look at what is there (a preview): no work area, no lock."""
        self.root = Path(root)
        self.backup_dir: Path | None = None  # --backup-dir: replaced files are moved there (set by the run)
        self._lock = threading.Lock()
        self._folders: dict[str, list] = {}  # relative folder → [handle, users]
        self._root = self._open_root()
        self._lock_fds: list[int] = []
        self.previous_owner: dict = {}
        if read_only:
            self._base = self._work = None
            return
        for last in (False, False, True):
            try:
                self._base = self._child_folder(self._root, WORK_DIR, create=True, shown=WORK_DIR)
            except LocalPathError:
                self._close(self._root)
                raise UsageError(f"{self.root / WORK_DIR} is not a folder this tool made (a file or a symbolic"
                                 " link): remove it") from None
            try:
                self._take_locks(shard, owner or {})
                break
            except _Tidied:  # the run before removed its work area as we came in: make it anew
                while self._lock_fds:
                    os.close(self._lock_fds.pop())
                self._close(self._base)
                if last:
                    self._close(self._root)
                    raise OutputBusy(f"the work area of {self.root} keeps disappearing: is another run"
                                     " finishing there?") from None
        try:
            # A shard's temp files live in a folder of its own: shards of one job run at the same time
            # in one output, and each clears its own leftovers.
            self._work = self._child_folder(self._base, shard, True, f"{WORK_DIR}/{shard}") if shard else self._base
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self, tidy: bool = False) -> None:
        """`tidy`: a run is over; when its work area holds nothing but its lock (nothing to resume, no shard
        sharing it), the lock and the folder go too — unlinked while still held, so a run that opens it meanwhile
        either finds it held or makes a new one, and the folder is removed only when empty."""
        with self._lock:
            for handle, _ in self._folders.values():
                self._close(handle)
            self._folders.clear()
        if tidy and self._lock_fds and getattr(self, "_work", None) is self._base and os.name != "nt":
            with contextlib.suppress(OSError):  # Windows cannot remove a file it holds open: the lock stays there
                if os.listdir(self._base) == ["lock"]:
                    path, at = _at(self._base, "lock")
                    os.unlink(path, dir_fd=at)
                    path, at = _at(self._root, WORK_DIR)
                    os.rmdir(path, dir_fd=at)
        while self._lock_fds:
            os.close(self._lock_fds.pop())  # releases the locks
        work, base = getattr(self, "_work", None), getattr(self, "_base", None)
        if work is not base:
            self._close(work)
        self._close(base)
        self._close(self._root)

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_root(self) -> Handle:
        if not AT_CALLS:
            return str(self.root)
        return os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)

    @staticmethod
    def _close(handle) -> None:
        if isinstance(handle, int):
            with contextlib.suppress(OSError):
                os.close(handle)

    # -- one writer --------------------------------------------------------------------------------
    def _take_locks(self, shard: str | None, owner: dict) -> None:
        """A whole-output run holds `lock` exclusively. A shard holds `lock` shared (no whole-output run
        meanwhile; other shards welcome) and `lock-<shard>` exclusively (never the same shard twice)."""
        try:
            main = self._open_lock("lock")
        except FileNotFoundError:  # its folder was removed after we opened it (Output.close's tidy)
            raise _Tidied() from None
        self._lock_fds.append(main)
        if not _lock_file(main, shared=bool(shard)):
            raise self._busy()
        if AT_CALLS and not _still_linked(main, self._base, "lock"):
            raise _Tidied()  # we hold a lock file its run unlinked on the way out: take the new one
        if shard:
            own = self._open_lock(f"lock-{shard}")
            self._lock_fds.append(own)
            if not _lock_file(own):
                raise self._busy()
        self._owner_fd = self._lock_fds[-1]
        self.previous_owner = _read_json(self._owner_fd)
        self.set_owner(owner)

    def _open_lock(self, name: str) -> int:
        path, at = _at(self._base, name)
        return _open_file(path, os.O_RDWR | os.O_CREAT, at, 0o644)

    def _busy(self) -> OutputBusy:
        """Who holds the output: a shard holding its lock, else the whole-output run."""
        holder: dict = {}
        for name in sorted(os.listdir(self._base)):
            if name.startswith("lock"):
                fd = self._open_lock(name)
                try:
                    if name == "lock" or not _lock_file(fd, shared=True):
                        holder = _read_json(fd) or holder
                        if name != "lock":
                            break
                finally:
                    os.close(fd)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        return OutputBusy(f"another run is writing to {self.root} ({who}): wait for it to finish or stop it")

    def set_owner(self, extra: dict) -> None:
        """Say in the lock file who holds it (pid, host, start time, and e.g. a Prefect flow run id)."""
        fd = self._owner_fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
        data = json.dumps(info).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, data)

    # -- folders below the output ------------------------------------------------------------------
    def _child_folder(self, parent: Handle, name: str, create: bool, shown: str) -> Handle:
        """Open (and make) one folder inside `parent`, refusing symbolic links and files in the way."""
        path, at = _at(parent, name)
        for _ in range(2):
            try:
                if AT_CALLS:
                    return os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=at)
                st = os.lstat(path)
                if _is_link(st):
                    raise OSError(errno.ELOOP, "symbolic link", path)
                if not stat.S_ISDIR(st.st_mode):
                    raise OSError(errno.ENOTDIR, "not a folder", path)
                return path
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o777, dir_fd=at)
            except OSError as exc:
                if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _lexists_link(parent, name)):
                    raise LocalPathError(f"unsafe local path: {shown} is a symbolic link") from None
                if exc.errno == errno.ENOTDIR:
                    raise KeyClash(f"file/folder conflict: {shown} is a file") from None
                raise
        raise LocalPathError(f"local file error: cannot make folder {shown}")

    def _walk(self, rel_folder: str, create: bool) -> Handle:
        handle, shown = self._root, ""
        try:
            for name in rel_folder.split("/"):
                shown = f"{shown}/{name}" if shown else name
                child = self._child_folder(handle, name, create, shown)
                if handle is not self._root:
                    self._close(handle)
                handle = child
        except BaseException:
            if handle is not self._root:
                self._close(handle)
            raise
        return handle

    @contextlib.contextmanager
    def folder(self, rel_folder: str, create: bool = True):
        """The folder of a relative path, safe to write in, for the duration of the block."""
        if not rel_folder:
            yield self._root
            return
        with self._lock:
            entry = self._folders.get(rel_folder)
            if entry:
                entry[1] += 1
        if entry is None:
            handle = self._walk(rel_folder, create)
            with self._lock:
                entry = self._folders.get(rel_folder)
                if entry:
                    self._close(handle)
                    entry[1] += 1
                else:
                    entry = self._folders[rel_folder] = [handle, 1]
                    self._forget_unused()
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1

    def _forget_unused(self) -> None:
        if len(self._folders) <= MAX_OPEN_FOLDERS:
            return
        for name, (handle, users) in list(self._folders.items()):
            if not users:
                self._close(handle)
                del self._folders[name]

    def forget(self, rel_folder: str) -> None:
        """Drop a remembered folder (it was removed meanwhile): the next use makes it again."""
        with self._lock:
            entry = self._folders.get(rel_folder)
            if entry and not entry[1]:
                self._close(entry[0])
                del self._folders[rel_folder]

    # -- final files -------------------------------------------------------------------------------
    def install(self, temp: str, rel: str) -> None:
        """Give a finished temp file its final name (replacing a file or a symbolic link there)."""
        folder, _, name = rel.rpartition("/")
        for again in (False, True):
            try:
                with self.folder(folder) as parent:
                    src, src_at = _at(self._work, temp)
                    dst, dst_at = _at(parent, name)
                    if not AT_CALLS:
                        _replaceable(dst)
                    if self.backup_dir is not None:
                        self._keep_old(dst, dst_at, rel)
                    os.replace(src, dst, src_dir_fd=src_at, dst_dir_fd=dst_at)
                    return
            except FileNotFoundError:
                if again:
                    raise
                self.forget(folder)  # removed while we ran (another tool, a user): made again

    def _keep_old(self, dst: str, dst_at: int | None, rel: str) -> None:
        """--backup-dir: the file a download replaces goes there first, at its path (core/mirror.py)."""
        from core.mirror import move_out
        try:
            st = os.stat(dst, dir_fd=dst_at, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode):
            move_out(dst, dst_at, self.backup_dir / rel, time.strftime("%Y%m%dT%H%M%S"))

    def stat(self, rel: str) -> os.stat_result | None:
        """The final file of a relative path if it is a regular file (never through a link), else None."""
        folder, _, name = rel.rpartition("/")
        try:
            with self.folder(folder, create=False) as parent:
                path, at = _at(parent, name)
                st = os.stat(path, dir_fd=at, follow_symlinks=False)
        except (OSError, LocalPathError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def open_final(self, rel: str):
        """Read a final file (the rebuild of a lost manifest hashes files already there)."""
        folder, _, name = rel.rpartition("/")
        with self.folder(folder, create=False) as parent:
            path, at = _at(parent, name)
            return os.fdopen(_open_file(path, os.O_RDONLY, at), "rb")

    # -- the work area -----------------------------------------------------------------------------
    @staticmethod
    def temp_name(rel: str, kind: str) -> str:
        """Fixed per relative path, so a rerun finds a partial file; kind: part, meta or parts."""
        return hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()[:24] + "." + kind

    def create_temp(self, name: str) -> int:
        """A new, empty temp file (a stale one of the same name, or a link planted there, is removed)."""
        path, at = _at(self._work, name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
        try:
            return os.open(path, flags, 0o644, dir_fd=at)
        except FileExistsError:
            self.remove_temp(name)
            return os.open(path, flags, 0o644, dir_fd=at)

    def open_partial(self, name: str) -> int | None:
        """An existing partial file for appending, or None (missing, or not a plain file of ours)."""
        path, at = _at(self._work, name)
        try:
            fd = _open_file(path, os.O_RDWR, at)
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            self.remove_temp(name)
            return None
        return fd

    def remove_temp(self, name: str) -> None:
        path, at = _at(self._work, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path, dir_fd=at)

    def read_meta(self, name: str) -> dict:
        fd = self.open_partial(name)
        if fd is None:
            return {}
        try:
            return _read_json(fd)
        finally:
            os.close(fd)

    def write_meta(self, name: str, meta: dict) -> None:
        fd = self.create_temp(name)
        try:
            os.write(fd, json.dumps(meta).encode())
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def replacing(self, name: str):
        """Write one of the tool's own files at the output's top level (the failure CSV): into a work-area
        temp file, made durable, then renamed over the old one. Nothing is installed if the block fails
        or calls `discard()` on the file."""
        temp = self.temp_name(name, "tmp")
        f = _Replacement(os.fdopen(self.create_temp(temp), "w", newline="", encoding="utf-8"))
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            self.remove_temp(temp)
            raise
        f.close()
        if f.discarded:
            self.remove_temp(temp)
        else:
            self.install(temp, name)

    def remove_file(self, name: str) -> None:
        path, at = _at(self._root, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path, dir_fd=at)

    def sync(self) -> None:
        """Everything written below the output, durable (one syncfs of its file system; sync() where there is
        no syncfs; nothing on Windows, which has neither — and cannot open a folder as a file)."""
        if _syncfs is None:
            if hasattr(os, "sync"):
                os.sync()
            return
        fd = os.open(self.root, os.O_RDONLY | _CLOEXEC) if not isinstance(self._root, int) else self._root
        try:
            sync_file_system(fd)
        finally:
            if fd is not self._root:
                os.close(fd)

    def clear_work_area(self, resumable: bool = False) -> None:
        """After a run: what no later run can use goes. A complete run: every partial file (of objects that no
        longer need one). `resumable`: only what could not be resumed — ranged parts, temp files, a partial
        file without the version it belongs to or a version without its file; resumable partial files stay.
        (Never the locks, never another shard's folder.)"""
        names = set(os.listdir(self._work))
        for name in names:
            path, at = _at(self._work, name)
            if name.startswith("lock") or stat.S_ISDIR(os.stat(path, dir_fd=at, follow_symlinks=False).st_mode):
                continue
            stem, _, kind = name.rpartition(".")
            if resumable and {kind, "part", "meta"} == {"part", "meta"} and \
                    f"{stem}.{'meta' if kind == 'part' else 'part'}" in names:
                continue
            self.remove_temp(name)

    def disk_error(self, exc: BaseException):
        """An OSError of this output, in the product's terms (disk full names this folder)."""
        return as_download_error(exc, str(self.root))


class _Replacement:
    """A text file being written to replace one of the tool's files."""

    def __init__(self, file):
        self._file, self.discarded = file, False

    def discard(self) -> None:
        self.discarded = True

    def __getattr__(self, name):
        return getattr(self._file, name)


def _at(handle, name: str) -> tuple[str, int | None]:
    """(path, dir_fd) arguments for os functions: relative to a descriptor, or a joined checked path."""
    if isinstance(handle, int):
        return name, handle
    return os.path.join(handle, name), None


def _open_file(path: str, flags: int, at: int | None, mode: int = 0o777) -> int:
    """os.open that never follows a symbolic link at the name: O_NOFOLLOW where the OS has it, else (Windows)
    an lstat first, as for folders."""
    if not _NOFOLLOW:
        with contextlib.suppress(FileNotFoundError):
            if _is_link(os.stat(path, dir_fd=at, follow_symlinks=False)):
                raise OSError(errno.ELOOP, "symbolic link", path)
    return os.open(path, flags | _NOFOLLOW | _CLOEXEC | _BINARY, mode, dir_fd=at)


def _lexists_link(parent, name: str) -> bool:
    path, at = _at(parent, name)
    try:
        return _is_link(os.stat(path, dir_fd=at, follow_symlinks=False))
    except OSError:
        return False


def _replaceable(path: str) -> None:
    """Windows: os.replace onto a symbolic link replaces the link itself, as rename(2) does; nothing to do
    but refuse a folder in the way with the same error POSIX gives."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)


class _Tidied(Exception):
    """The work area or its lock went away while this run came in: the run before removed them."""


def _still_linked(fd: int, folder, name: str) -> bool:
    try:
        path, at = _at(folder, name)
        return os.stat(path, dir_fd=at, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_json(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        value = json.loads(data) if data else {}
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _lock_file(fd: int, shared: bool = False) -> bool:
    """Lock the open file (exclusive, or shared); False when another process holds it. The kernel releases
    it when the process ends, however it ends."""
    if fcntl is None:  # Windows: no shared locks; lock one byte far past the content, which stays readable
        if shared:
            return True
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# -- durability: the file system's own sync ----------------------------------------------------------------
def sync_file_system(fd: int) -> None:
    """Make every file written to the file system of `fd` durable: syncfs(2) on Linux, else sync(2)."""
    if _syncfs is not None and _syncfs(fd) == 0:
        return
    if hasattr(os, "sync"):
        os.sync()


def _linux_libc():
    """Linux's libc, or None: macOS's has no syncfs, and on Windows ctypes.CDLL(None) raises TypeError."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _syncfs_function():
    """Linux's syncfs(2): one call makes every written file of the file system durable. Elsewhere None
    (fsync per file)."""
    libc = _linux_libc()
    return libc.syncfs if libc is not None and hasattr(libc, "syncfs") else None


_syncfs = _syncfs_function()
