"""Never "done" over wrong bytes, never a write outside the output, never a broken listing taken at its word:
the CLI as users run it, against the fault-injecting S3 and OSS servers (servers that lie). These are the
core's rules, so the CLI runs with --no-prefect; what Prefect adds (a killed run's flow run marked Crashed, a
stopped one's state, the pipeline's own listing loop and halt) runs through Prefect."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import flow_run_states
from tests.test_download import args, body, both, both_ways, leftovers, local_files, put, put_many, read_csv

MB = 1_000_000


def put_versioned(store, bucket: str, key: str, data: bytes) -> None:
    """An object whose ETag is not its MD5 (a multipart upload): only size and version can protect it."""
    if store.backend == "s3":
        store.put_multipart(bucket, key, data, part_size=5 * 1024 * 1024)
    else:
        store.server.put(bucket, key, data, multipart_parts=2)


def cut_mid_body(store, bucket, out, key) -> list[str]:
    """Arguments of a run whose download of `key` is cut after its first bytes: the store stalls (a
    trickle) and the run gives up on it as too slow, keeping the partial file."""
    store.add_fault(bucket, key, "trickle", times=1, chunk=64 * 1024, seconds=2)
    return args(store, bucket, out, "--max-attempts", "1", "--low-speed-limit", "200000", "--low-speed-time", "1")


@both
def test_a_short_body_with_a_matching_content_length_is_never_done(store, bucket, tmp_path, cli):
    data = os.urandom(6 * MB)
    put_versioned(store, bucket, "data/big.bin", data)
    put(store, bucket, "data/small.txt", b"s" * 5000)
    store.add_fault(bucket, "data/big.bin", "short", times=1)      # a lying proxy: half, Content-Length to match
    store.add_fault(bucket, "data/small.txt", "short", times=None)  # lies every time
    out = tmp_path / "out"
    result = cli(args(store, bucket, out))
    assert result.returncode == 1, result.stderr[-3000:]
    assert local_files(out) == {"big.bin": data}                    # retried: the whole object
    rows = read_csv(out)
    assert rows[1][0] == "data/small.txt" and "size mismatch" in rows[1][1] and rows[1][2] == "3"
    assert not (out / "small.txt").exists() and leftovers(out) == []


@both
def test_ranges_that_are_not_the_ones_asked_for_are_never_done(store, bucket, tmp_path, cli):
    data = os.urandom(20 * 1024 * 1024)                               # fetched as ranged parts
    put(store, bucket, "data/parts.bin", data)
    store.add_fault(bucket, "data/parts.bin", "wrong_range", times=1)
    store.add_fault(bucket, "data/parts.bin", "ignore_range", times=1)
    out = tmp_path / "out"
    result = cli(args(store, bucket, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert local_files(out) == {"parts.bin": data}


@both
def test_a_partial_file_of_an_older_version_is_never_resumed(store, bucket, tmp_path, cli):
    old, new = os.urandom(6 * MB), os.urandom(6 * MB)                 # same size, non-MD5 ETags
    put_versioned(store, bucket, "data/v.bin", old)
    out = tmp_path / "out"
    first = cli(cut_mid_body(store, bucket, out, "data/v.bin"))
    assert first.returncode == 1 and "too slow" in read_csv(out)[1][1]
    assert leftovers(out), "the partial file of run 1 should be kept for resuming"
    put_versioned(store, bucket, "data/v.bin", new)                    # re-uploaded between the runs
    second = cli(args(store, bucket, out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "v.bin").read_bytes() == new


@both
def test_a_partial_file_of_the_same_version_is_resumed(store, bucket, tmp_path, cli):
    data = os.urandom(6 * MB)
    put_versioned(store, bucket, "data/r.bin", data)
    out = tmp_path / "out"
    assert cli(cut_mid_body(store, bucket, out, "data/r.bin")).returncode == 1
    partial = [p for p in (out / ".ossdl").iterdir() if p.suffix == ".part"]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(data)
    # The resumed download must not see the first half again: a lie on the whole object would show.
    store.add_fault(bucket, "data/r.bin", "ignore_range", times=None)
    result = cli(args(store, bucket, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "r.bin").read_bytes() == data


@both
def test_keys_named_like_the_tools_files_are_refused_at_every_depth(store, bucket, tmp_path, cli):
    big = os.urandom(400_000)
    put(store, bucket, "data/u/big.bin", big)
    put(store, bucket, "data/u/.ossdl-0123456789abcdef.tmp", os.urandom(300_000))
    put(store, bucket, "data/u/.oss-manifest.sqlite", b"x")
    put(store, bucket, "data/u/.ossdl/lock", b"x")
    out = tmp_path / "out"
    result = cli(args(store, bucket, out))
    assert result.returncode == 1
    assert local_files(out) == {"u/big.bin": big}
    reasons = {row[0]: row[1] for row in read_csv(out)[1:]}
    assert set(reasons) == {"data/u/.ossdl-0123456789abcdef.tmp", "data/u/.oss-manifest.sqlite", "data/u/.ossdl/lock"}
    assert all(r.startswith("reserved name") for r in reasons.values())


def planted_links(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An output with a folder that is a link to `elsewhere` (plain/) and a file that is a link to a file
    outside (c2.txt): (output, elsewhere, victim)."""
    elsewhere, victim = tmp_path / "elsewhere", tmp_path / "victim.txt"
    elsewhere.mkdir()
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "plain").symlink_to(elsewhere)
    (out / "c2.txt").symlink_to(victim)
    return out, elsewhere, victim


def test_nothing_is_written_outside_the_output_through_planted_links(s3, bucket, tmp_path, cli):
    out, elsewhere, victim = planted_links(tmp_path)
    for key in ("data/plain/a.jpg", "data/plain/b.PNG", "data/plain/c.txt", "data/c2.txt", "data/ok.txt"):
        put(s3, bucket, key)
    result = cli(args(s3, bucket, out))
    assert result.returncode == 1
    assert os.listdir(elsewhere) == [] and victim.read_bytes() == b"precious"
    assert not (out / "c2.txt").is_symlink() and (out / "c2.txt").read_bytes() == body("data/c2.txt")
    rows = {row[0]: row for row in read_csv(out)[1:]}
    assert set(rows) == {"data/plain/a.jpg", "data/plain/b.PNG", "data/plain/c.txt"}
    assert all(r[1] == "unsafe local path: plain is a symbolic link" and r[2] == "1" for r in rows.values())


def test_a_second_run_into_the_same_output_is_refused_while_the_first_runs(s3, bucket, tmp_path, cli):
    keys = [f"data/o/{i:02d}" for i in range(30)]
    for key in keys:
        put(s3, bucket, key, body(key, 20_000))
        s3.add_fault(bucket, key, "delay", seconds=0.5, times=1)      # the first run takes ~15 s
    out = tmp_path / "out"
    first = cli.start(args(s3, bucket, out, "--concurrency", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    deadline = time.monotonic() + 60
    while not list((out / "o").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)                                              # it holds the output now
    second = cli(args(s3, bucket, out))
    out1, err1 = first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"another run is writing to {out}" in errors[0] and f"pid {first.pid}" in errors[0]
    assert first.returncode == 0, err1[-3000:]
    assert local_files(out) == {k[len("data/"):]: body(k, 20_000) for k in keys}
    assert sum(s3.get_count(bucket, k) for k in keys) == len(keys)    # nothing fetched twice
    assert not (out / ".oss-failed.csv").exists()


def listed_over_pages(store, bucket, count: int) -> list[str]:
    """`count` keys, more than a listing page (1,000); every 100th is selected by SELECTED, so a run lists
    them all and downloads only a few."""
    keys = [f"data/l/{i:04d}" + (".bin" if i % 100 == 0 else ".txt") for i in range(count)]
    put_many(store, bucket, keys, size=1)
    return [key for key in keys if key.endswith(".bin")]


SELECTED = ("--include-suffix", ".bin")


@both_ways
def test_a_truncated_page_without_a_token_is_an_incomplete_listing_not_a_short_run(store, bucket, tmp_path, cli):
    listed_over_pages(store, bucket, 1500)
    store.add_list_fault(bucket, "truncated_no_token", page=1)        # page 0 is the pre-flight check
    out = tmp_path / "out"
    (out).mkdir()
    (out / ".oss-failed.csv").write_text("key,last_error,retry_count\nstale,from an earlier run,1\n")
    result = cli(args(store, bucket, out, *SELECTED))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "listing incomplete" in result.stdout and "no continuation token" in result.stdout
    assert "error: listing incomplete" in result.stderr and "Traceback" not in result.stderr
    rows = read_csv(out)
    assert rows[1][0] == "data/" and rows[1][1].startswith("listing incomplete") and len(rows) == 2
    assert sorted(local_files(out)) == [f"l/{i:04d}.bin" for i in range(0, 1000, 100)]  # what was listed


@both
def test_a_repeated_token_is_an_error_not_an_endless_listing(store, bucket, tmp_path, cli):
    listed_over_pages(store, bucket, 1500)
    store.add_list_fault(bucket, "repeat_token", page=2)
    out = tmp_path / "out"
    result = cli(args(store, bucket, out, *SELECTED), timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "listing incomplete" in read_csv(out)[1][1]
    assert store.list_count(bucket) <= 4


@both
def test_listing_errors_are_retried_then_reported_with_exit_1(store, bucket, tmp_path, cli):
    selected = listed_over_pages(store, bucket, 1200)
    store.add_list_fault(bucket, "status", page=2, times=2, status=500, code="InternalError")
    out = tmp_path / "out"
    result = cli(args(store, bucket, out, *SELECTED))
    assert result.returncode == 0, result.stderr[-3000:]              # two 500s on page 2: retried
    assert len(local_files(out)) == len(selected) == 12

    store.clear_faults()
    for page in (2, 3, 4):                                               # page 2 and both its retries
        store.add_list_fault(bucket, "status", page=page, status=503, code="SlowDown")
    again = cli(args(store, bucket, out, *SELECTED))
    assert again.returncode == 1, again.stderr[-3000:]                 # not 2: the input was fine
    assert "listing failed after 3 attempts: HTTP 503 SlowDown" in read_csv(out)[1][1]
    assert store.list_count(bucket) == 5 and "already present   10" in again.stdout  # the first page's


def test_a_connection_error_mid_listing_is_exit_1_with_the_reason(oss, tmp_path, cli):
    from tests.conftest import OssStore
    store = OssStore(oss)
    bucket = "conn-" + os.urandom(4).hex()
    store.create_bucket(bucket)
    listed_over_pages(store, bucket, 1100)
    # Page 2 and both its retries; each attempt is two requests: a reset on a kept-alive connection is
    # tried once more on a new one (it may only have gone stale), as the S3 source does.
    for page in range(2, 8):
        store.add_list_fault(bucket, "reset", page=page)
    result = cli(args(store, bucket, tmp_path, *SELECTED))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "connection" in read_csv(tmp_path)[1][1]


@both
def test_a_trickling_server_fails_as_too_slow_and_the_retry_gets_it(store, bucket, tmp_path, cli):
    # A small body must come within the window plus its length at the limit: 1 + 0.3 s here.
    small, large = os.urandom(300), os.urandom(600_000)
    put(store, bucket, "data/t/small", small)
    put(store, bucket, "data/t/large", large)
    put(store, bucket, "data/t/forever", b"z" * 200)
    store.add_fault(bucket, "data/t/small", "trickle", times=1, seconds=0.5)
    store.add_fault(bucket, "data/t/large", "trickle", times=1, chunk=100, seconds=0.5)
    store.add_fault(bucket, "data/t/forever", "trickle", seconds=0.5)
    out = tmp_path / "out"
    result = cli(args(store, bucket, out, "--low-speed-limit", "1000", "--low-speed-time", "1"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert local_files(out) == {"t/small": small, "t/large": large}
    assert read_csv(out)[1] == ["data/t/forever", "too slow: less than 1000 bytes/s for 1 s", "3"]


@both
def test_a_lost_or_damaged_manifest_is_rebuilt_from_the_files_without_refetching(store, bucket, tmp_path, cli):
    plain = {f"data/m/{i}.bin": body(f"data/m/{i}.bin", 2000) for i in range(5)}
    for key, data in plain.items():
        put(store, bucket, key, data)
    multi = os.urandom(6 * MB)
    put_versioned(store, bucket, "data/m/multi.bin", multi)
    out = tmp_path / "out"
    assert cli(args(store, bucket, out)).returncode == 0
    keys = [*plain, "data/m/multi.bin"]

    (out / ".oss-manifest.sqlite").write_bytes(b"garbage" * 1000)      # damaged
    for extra in ("-wal", "-shm"):
        Path(str(out / ".oss-manifest.sqlite") + extra).unlink(missing_ok=True)
    store.clear_faults()
    damaged = cli(args(store, bucket, out))
    assert damaged.returncode == 0, damaged.stderr[-3000:]
    assert "damaged" in damaged.stdout and list(out.glob(".oss-manifest.sqlite.corrupt-*"))
    assert "already present   6" in damaged.stdout
    assert sum(store.get_count(bucket, k) for k in keys) == 0

    (out / ".oss-manifest.sqlite").unlink()                              # lost
    lost = cli(args(store, bucket, out))
    assert lost.returncode == 0 and "already present   6" in lost.stdout
    assert sum(store.get_count(bucket, k) for k in keys) == 0


@both
def test_a_file_changed_here_at_the_same_size_is_fetched_again(store, bucket, tmp_path, cli):
    put(store, bucket, "data/f.txt", b"original" * 100)
    out = tmp_path / "out"
    assert cli(args(store, bucket, out)).returncode == 0
    (out / "f.txt").write_bytes(b"ORIGINAL" * 100)                     # same size, other bytes, new mtime
    store.clear_faults()
    result = cli(args(store, bucket, out))
    assert result.returncode == 0 and store.get_count(bucket, "data/f.txt") == 1
    assert (out / "f.txt").read_bytes() == b"original" * 100


def _kill_mid_run(cli, store, bucket, out, keys, concurrency):
    proc = cli.start(args(store, bucket, out, "--concurrency", str(concurrency)), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(local_files(out)) < len(keys) // 2:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return len(local_files(out))


def test_kill_9_loses_at_most_what_was_in_flight_and_the_flow_run_is_marked_crashed(s3, bucket, tmp_path,
                                                                                   prefect_cli):
    from prefect.client.orchestration import get_client
    keys = [f"data/k/{i:03d}" for i in range(300)]
    put_many(s3, bucket, keys, size=500)
    for key in keys:
        s3.add_fault(bucket, key, "delay", seconds=0.02)
    out = tmp_path / "out"
    had = _kill_mid_run(prefect_cli, s3, bucket, out, keys, concurrency=4)
    assert 0 < had < len(keys)
    with get_client(sync_client=True) as client:
        killed = [r for r in client.read_flow_runs(limit=200) if r.state and r.state.is_running()
                  and r.parameters.get("params", {}).get("output") == str(out)]
    assert len(killed) == 1

    s3.clear_faults()
    result = prefect_cli(args(s3, bucket, out))                         # the next flow run marks it Crashed
    assert result.returncode == 0, result.stderr[-3000:]
    assert local_files(out) == {k[len("data/"):]: body(k, 500) for k in keys}
    refetched = sum(s3.get_count(bucket, k) for k in keys) - (len(keys) - had)
    assert refetched <= 4, f"{refetched} finished objects were fetched again"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(killed[0].id).state
    assert state.is_crashed() and "later run" in state.message


def test_sigterm_stops_like_ctrl_c_with_one_line(s3, bucket, tmp_path, prefect_cli, cli):
    """A scheduler stopping a flow run: exit 143, one line, the flow run Crashed; the same command resumes."""
    keys = [f"data/s/{i:02d}" for i in range(30)]
    for key in keys:
        put(s3, bucket, key, body(key, 1000))
        s3.add_fault(bucket, key, "delay", seconds=0.2)
    out = tmp_path / "out"
    proc = prefect_cli.start(args(s3, bucket, out, "--concurrency", "2"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(local_files(out)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "stopped (SIGTERM)" in err
    assert flow_run_states(out) == ["CRASHED"]
    s3.clear_faults()
    assert cli(args(s3, bucket, out)).returncode == 0
    assert local_files(out) == {k[len("data/"):]: body(k, 1000) for k in keys}


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB file system of its own (tmpfs); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_cleanly_keeps_what_is_done_and_leaves_no_partials(s3, bucket, small_disk,
                                                                                    prefect_cli, cli):
    """The run through Prefect (its batches stop together, its flow run ends Failed), the rerun on the core."""
    keys = [f"data/d/{i:02d}.bin" for i in range(12)]
    for key in keys:
        put(s3, bucket, key, body(key, 700_000))
    out = small_disk / "out"
    result = prefect_cli(args(s3, bucket, out, "--concurrency", "2"))
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no space left on device in {out}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    kept = local_files(out)
    assert 0 < len(kept) < len(keys)
    assert all(data == body("data/" + rel, 700_000) for rel, data in kept.items())
    assert leftovers(out) == []
    assert sum(s3.get_count(bucket, k) for k in keys) < len(keys) + 2    # stopped, not retried
    assert flow_run_states(out) == ["FAILED"]

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    s3.clear_faults()
    again = cli(args(s3, bucket, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert local_files(out) == {k[len("data/"):]: body(k, 700_000) for k in keys}
    assert sum(s3.get_count(bucket, "data/" + rel) for rel in kept) == 0    # what was done stays done


@both
def test_a_stalled_listing_page_times_out_and_is_retried(store, bucket, tmp_path, cli):
    for i in range(3):
        put(store, bucket, f"data/s/{i}", b"x")
    store.add_list_fault(bucket, "delay", page=1, seconds=3)             # the first real page stalls
    result = cli(args(store, bucket, tmp_path, "--read-timeout", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(local_files(tmp_path)) == 3 and store.list_count(bucket) == 3
