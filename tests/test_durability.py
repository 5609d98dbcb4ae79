"""The durability policy, seen in the system calls of a real run (strace): by default no file is synced on
its own and one syncfs of the output's file system comes after the last file got its name and before the
summary, so "exit 0" means on disk; --fsync makes each group of files durable before any of them is named."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_download import args, local_files, put_many

pytestmark = pytest.mark.system("strace", "strace")  # tests/conftest.py need_program

CALL = re.compile(r"^\d+\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>-?\d+)")


def traced_run(store, bucket, out, tmp_path, *extra) -> list[tuple[str, str]]:
    """(call, arguments) of the successful syncs and renames of a --no-prefect run, in order, with the
    summary's write marked; the run must succeed."""
    trace = tmp_path / "strace.txt"
    cmd = ["strace", "-f", "-y", "-s", "200", "-o", str(trace),
           "-e", "trace=syncfs,fsync,fdatasync,sync,sync_file_range,rename,renameat,renameat2,write",
           sys.executable, "-m", "flows.download", *args(store, bucket, out, "--no-prefect", *extra)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    calls, pending = [], {}
    for line in trace.read_text().splitlines():
        pid = line.split(" ", 1)[0]
        if line.endswith("<unfinished ...>"):  # another thread's call came in between: joined when it ends
            pending[pid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^\d+\s+<\.\.\. \w+ resumed>(.*)$", line)
        if resumed and pid in pending:
            line = pending.pop(pid) + resumed[1]
        m = CALL.match(line)
        if not m or int(m["result"]) < 0:
            continue
        if m["name"] == "write":
            if "downloaded" in m["args"] and re.match(r"1<", m["args"]):  # the summary on stdout
                calls.append(("summary", ""))
            continue
        calls.append((m["name"], m["args"]))
    return calls


def installs(calls) -> list[int]:
    """Positions of the renames that gave a downloaded file its final name (out of the .ossdl/ work area; not
    the tool's own reports, .oss-failed.csv and .oss-changes.csv)."""
    return [i for i, (name, a) in enumerate(calls)
            if name.startswith("rename") and "/.ossdl" in a.split(",")[0] and "/.ossdl" not in a.split(",")[2]
            and ".oss-" not in a.split(",")[3]]


def file_syncs(calls, out) -> list[int]:
    """Positions of fsync/fdatasync of downloaded files' temp files (not the manifest's or the report's)."""
    return [i for i, (name, a) in enumerate(calls)
            if name in ("fsync", "fdatasync") and str(out / ".ossdl") in a and re.search(r"\.parts?>", a)]


def test_one_sync_of_the_output_before_the_summary_and_none_per_file(s3, bucket, tmp_path):
    keys = [f"data/f{i:02d}.bin" for i in range(40)]
    put_many(s3, bucket, keys, size=3000)
    out = tmp_path / "out"
    calls = traced_run(s3, bucket, out, tmp_path)
    assert len(local_files(out)) == 40
    named = installs(calls)
    assert len(named) == 40
    syncs = [i for i, (name, a) in enumerate(calls) if name == "syncfs" and str(out) in a]
    summary = [i for i, (name, _) in enumerate(calls) if name == "summary"]
    assert len(syncs) == 1 and summary, calls[-10:]
    assert max(named) < syncs[0] < summary[0]
    assert file_syncs(calls, out) == []


def test_fsync_makes_each_group_durable_before_it_is_named(s3, bucket, tmp_path):
    keys = [f"data/f{i:02d}.bin" for i in range(40)]
    put_many(s3, bucket, keys, size=3000)
    out = tmp_path / "out"
    calls = traced_run(s3, bucket, out, tmp_path, "--fsync")
    assert len(local_files(out)) == 40
    named = installs(calls)
    syncs = [i for i, (name, a) in enumerate(calls) if name == "syncfs" and str(out) in a]
    assert len(named) == 40 and syncs and syncs[0] < named[0]
    assert file_syncs(calls, out) == [] or all(any(j < i for j in file_syncs(calls, out)) for i in named)


def test_a_large_files_finished_parts_go_to_disk_while_it_downloads(s3, bucket, tmp_path):
    """Each finished 8 MiB part starts its writeback (sync_file_range) before the file is named, so the one
    sync before the summary waits for the tail only."""
    size = 20 * 1024 * 1024  # above the 16 MiB threshold: three ranged parts
    put_many(s3, bucket, ["data/big.bin"], size=size)
    out = tmp_path / "out"
    calls = traced_run(s3, bucket, out, tmp_path)
    assert (out / "big.bin").stat().st_size == size
    writebacks = [i for i, (name, a) in enumerate(calls) if name == "sync_file_range" and str(out / ".ossdl") in a]
    named = installs(calls)
    assert len(writebacks) == 3 and len(named) == 1 and max(writebacks) < named[0]
