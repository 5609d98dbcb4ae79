"""Run one tool as a whole process tree; wall time, CPU time, peak RSS (sum over the tree, polled) and the exit
code."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measured:
    wall: float
    rc: int
    tree_peak_mb: float      # max over samples of the summed RSS of the process tree (shared pages count twice)
    single_peak_mb: float    # ru_maxrss: the largest single process of the tree (wait4 of the root)
    user: float = 0.0        # CPU seconds of the tree's processes that were waited for (all of a tool's own)
    sys: float = 0.0
    timed_out: bool = False
    leftovers: int = 0       # processes of the tree still alive when the root exited
    stderr_tail: str = ""
    log: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def peak_mb(self) -> float:
        return max(self.tree_peak_mb, self.single_peak_mb)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split(None, 2)[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float, interval: float = 0.1) -> Measured:
    log.parent.mkdir(parents=True, exist_ok=True)
    # ru_maxrss of a child forked from this (large) Python counts the pages it had before exec: GNU time,
    # itself tiny, reports the tool's own maximum instead.
    maxrss_file = log.with_suffix(".maxrss")
    maxrss_file.unlink(missing_ok=True)
    if TIME:
        cmd = [TIME, "-f", "%M", "-o", str(maxrss_file), *cmd]
    peak = [0]
    stop = threading.Event()
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd[5:] if TIME else cmd) + "\n").encode())
        out.flush()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def poll():
            while not stop.is_set():
                peak[0] = max(peak[0], sum(_rss(pid) for pid in tree(proc.pid)))
                stop.wait(interval)
        sampler = threading.Thread(target=poll, daemon=True)
        sampler.start()
        expired = threading.Event()

        def expire():
            expired.set()
            _kill_group(proc.pid)
        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            raise
        finally:
            wall = time.monotonic() - started
            timer.cancel()
            stop.set()
            sampler.join()
        timed_out = expired.is_set()
        proc.returncode = os.waitstatus_to_exitcode(status)
    leftovers = _kill_group(proc.pid)
    single = 0  # without GNU time, ru_maxrss would count this Python's pages in the child before exec
    if TIME:
        try:
            single = int(maxrss_file.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            single = 0
    tail = log.read_bytes()[-2000:].decode(errors="replace")
    return Measured(wall=wall, rc=proc.returncode, tree_peak_mb=peak[0] / 2**20, single_peak_mb=single / 1024,
                    user=usage.ru_utime, sys=usage.ru_stime,
                    timed_out=timed_out, leftovers=leftovers, stderr_tail=tail, log=log)


def _kill_group(pgid: int) -> int:
    """SIGKILL what is left of the tool's session; how many processes there were."""
    left = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid and int(name) != os.getpid():
                    left += 1
            except OSError:
                pass
    if left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    return left


def stop_group(proc: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM a server started with start_new_session=True and its children; SIGKILL after `grace` s."""
    if proc and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def wait_port(port: int, timeout: float = 30) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
