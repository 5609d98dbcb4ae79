"""The nightly mirror: the change report (every run says what was new, changed in the store, changed here,
unchanged, deleted), deletion with its safety rules, and the backup folder. Real stores, the real command."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


def changes(out: Path, name: str = ".oss-changes.csv") -> list[list[str]]:
    with open(out / name, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def summary_value(stdout: str, name: str) -> int:
    for line in stdout.splitlines():
        if line.strip().startswith(name + "  "):
            return int(line.split()[-1])
    return 0


def test_every_run_says_what_changed(s3, bucket, tmp_path, prefect_api):
    client = s3.client()
    for key in ("m/a.txt", "m/b.txt", "m/c.txt", "m/d.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    out = tmp_path / "out"
    base = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "m/", "--output", str(out), "--yes"]
    first = run_cli(base + ["--no-prefect"])
    assert first.returncode == 0 and summary_value(first.stdout, "new") == 4, first.stdout
    assert changes(out) == [["key", "change", "size"]] + [[f"m/{n}.txt", "new", "7"] for n in "abcd"]
    again = run_cli(base + ["--no-prefect"])
    assert again.returncode == 0 and summary_value(again.stdout, "unchanged") == 4
    assert not (out / ".oss-changes.csv").exists()  # nothing changed: no stale report

    client.put_object(Bucket=bucket, Key="m/a.txt", Body=b"a, version 2")  # changed in the store
    (out / "b.txt").write_bytes(b"edited here")                            # changed locally
    (out / "c.txt").unlink()                                               # gone from here
    third = run_cli(base, prefect_api=prefect_api)                        # as a flow run: the artifact too
    assert third.returncode == 0, third.stderr
    for name, value in (("changed in store", 1), ("changed locally", 2), ("unchanged", 1)):
        assert summary_value(third.stdout, name) == value, third.stdout
    rows = changes(out)
    assert rows[1:] == [["m/a.txt", "changed in store", "12"], ["m/b.txt", "changed locally", "7"],
                        ["m/c.txt", "changed locally", "7"]]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    with get_client(sync_client=True) as api:
        found = api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["download-changes"])))
    assert any(".oss-changes.csv" in a.data and "| m/a.txt | changed in store | 12 |" in a.data for a in found)


def local_tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): (p.read_bytes() if not p.is_symlink() else b"->")
            for p in sorted(out.rglob("*")) if (p.is_file() or p.is_symlink()) and
            not any(part.startswith(".oss") for part in p.relative_to(out).parts)}


@pytest.fixture
def mirrored(s3, bucket, tmp_path):
    """A store under m/ downloaded once, then: one object deleted in the store, local files the store never
    had (one a filter excludes), a symbolic link, and a file outside the prefix's scope."""
    client = s3.client()
    for key in ("m/a.txt", "m/b.txt", "m/keep/c.jpg", "m/gone/d.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    out = tmp_path / "out"
    base = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "m/", "--output", str(out), "--yes",
            "--no-prefect", "--exclude", "*.tmp"]
    assert run_cli(base).returncode == 0
    client.delete_object(Bucket=bucket, Key="m/b.txt")
    client.delete_object(Bucket=bucket, Key="m/gone/d.txt")
    (out / "stray.txt").write_text("mine")                   # never came from the store: --delete removes it
    (out / "notes.tmp").write_text("excluded")               # a filter excludes it: never deleted
    (out / "link.txt").symlink_to(tmp_path / "elsewhere")    # a symbolic link: never followed, never removed
    (tmp_path / "elsewhere").write_text("outside")
    return client, out, base


def test_delete_removes_what_no_listed_key_maps_to_and_nothing_else(mirrored, tmp_path):
    client, out, base = mirrored
    before = local_tree(out)
    dry = run_cli(base + ["--delete", "--dry-run"])
    assert dry.returncode == 0 and "would delete  3 objects" in dry.stdout, dry.stdout
    for rel in ("b.txt", "gone/d.txt", "stray.txt"):
        assert rel in dry.stdout
    assert local_tree(out) == before  # a dry run deletes nothing
    done = run_cli(base + ["--delete"])
    assert done.returncode == 0 and summary_value(done.stdout, "deleted") == 3, done.stdout + done.stderr
    assert local_tree(out) == {"a.txt": b"m/a.txt", "keep/c.jpg": b"m/keep/c.jpg", "link.txt": b"->",
                               "notes.tmp": b"excluded"}
    assert not (out / "gone").exists()  # the folder its deletion left empty
    assert (tmp_path / "elsewhere").read_text() == "outside"
    rows = changes(out)[1:]
    assert sorted(rows) == [["m/b.txt", "deleted", "7"], ["m/gone/d.txt", "deleted", "12"],
                            ["m/stray.txt", "deleted", "4"]]


def test_more_than_max_delete_deletes_nothing_and_fails(mirrored):
    client, out, base = mirrored
    before = local_tree(out)
    refused = run_cli(base + ["--delete", "--max-delete", "2"])
    assert refused.returncode == 1 and local_tree(out) == before
    assert refused.stderr.strip().splitlines() == [
        "error: not deleting: 3 files to delete, more than --max-delete 2; nothing was deleted"]
    assert run_cli(base + ["--delete", "--max-delete", "3"]).returncode == 0


def test_the_backup_folder_keeps_what_is_deleted_at_its_path(mirrored, tmp_path):
    client, out, base = mirrored
    backup = tmp_path / "backup"
    (backup / "gone").mkdir(parents=True)
    (backup / "gone" / "d.txt").write_text("an earlier backup")
    done = run_cli(base + ["--delete", "--backup-dir", str(backup)])
    assert done.returncode == 0, done.stderr
    kept = local_tree(backup)
    assert kept.pop("b.txt") == b"m/b.txt" and kept.pop("stray.txt") == b"mine"
    assert kept.pop("gone/d.txt") == b"an earlier backup"
    (stamped, data), = kept.items()
    assert stamped.startswith("gone/d.") and stamped.endswith(".txt") and data == b"m/gone/d.txt"
    inside = run_cli(base + ["--delete", "--backup-dir", str(out / "old")])
    assert inside.returncode == 2 and "must be outside the output folder" in inside.stderr


@pytest.mark.parametrize("fault", ["listing", "download"])
def test_nothing_is_deleted_when_the_run_could_not_see_or_fetch_everything(mirrored, s3, bucket, fault):
    client, out, base = mirrored
    before = local_tree(out)
    client.put_object(Bucket=bucket, Key="m/new.txt", Body=b"new")
    if fault == "listing":
        s3.add_list_fault(bucket, "truncated_no_token")  # the listing breaks off: the guard stops it
    else:
        s3.add_fault(bucket, "m/new.txt", "status", status=503, code="SlowDown")
    run = run_cli(base + ["--delete", "--max-attempts", "2", "--retry-backoff", "0.01"])
    assert run.returncode == 1
    assert {k: v for k, v in local_tree(out).items() if k != "new.txt"} == before
    why = "the listing was incomplete" if fault == "listing" else \
        "1 download(s) failed for a reason another run could change"
    assert f"deletion skipped: {why}" in run.stdout


def test_a_partial_prefix_deletes_only_within_itself(s3, bucket, tmp_path):
    """--prefix data/20 lands keys below data/: 2024/… is in the mirror's scope, 1999/… is not."""
    client = s3.client()
    client.put_object(Bucket=bucket, Key="data/2024/a.txt", Body=b"a")
    out = tmp_path / "out"
    (out / "1999").mkdir(parents=True)
    (out / "1999" / "old.txt").write_text("not listed by this prefix")
    (out / "2025").mkdir()
    (out / "2025" / "stale.txt").write_text("listed by the prefix: gone from the store")
    done = run_cli(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/20", "--output", str(out),
                    "--no-prefect", "--delete"])
    assert done.returncode == 0, done.stderr
    assert local_tree(out) == {"1999/old.txt": b"not listed by this prefix", "2024/a.txt": b"a"}


@pytest.mark.parametrize("folded", [False, True])
def test_on_a_case_insensitive_file_system_a_listed_name_in_another_case_stays(s3, bucket, tmp_path, monkeypatch,
                                                                                folded):
    """macOS and Windows: `A.jpg` removed upstream and `a.jpg` listed are one file there (the branch forced)."""
    import uuid

    from core import mirror
    from core import run as core_run
    from flows.params import DownloadParams
    monkeypatch.setattr(mirror, "FORCE_CASE_INSENSITIVE", folded)
    s3.client().put_object(Bucket=bucket, Key="c/a.jpg", Body=b"lower")
    out = tmp_path / "out"
    out.mkdir()
    (out / "A.JPG").write_bytes(b"upper")
    params = DownloadParams(endpoint=s3.endpoint, bucket=bucket, prefix="c/", output=str(out), delete=True)
    job = params.job(uuid.uuid4().hex)
    from core.sources import open_source
    run = core_run.open_run(job.plan, job.settings, open_source(job))
    try:
        summary = core_run.run_job(run, core_run.LocalBatches(run))
    finally:
        core_run.close_run(run)
    assert summary.deleted == (0 if folded else 1)
    assert (out / "A.JPG").exists() is folded


def test_an_interrupted_mirror_deletes_nothing(mirrored, s3, bucket):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while downloading: exit 130, and the files
    a finished run would delete are all still here."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    client, out, base = mirrored
    client.put_object(Bucket=bucket, Key="m/slow.txt", Body=b"slow")
    s3.add_fault(bucket, "m/slow.txt", "delay", seconds=30)
    before = local_tree(out)
    run = subprocess.Popen([sys.executable, "-m", "flows.download", *base, "--delete"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while s3.get_count(bucket, "m/slow.txt") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert local_tree(out) == before and "deleted" not in stdout


def test_the_backup_folder_keeps_the_old_copy_of_a_file_a_download_replaces(mirrored, s3, bucket, tmp_path):
    client, out, base = mirrored
    client.put_object(Bucket=bucket, Key="m/a.txt", Body=b"a, version 2")
    backup = tmp_path / "backup"
    done = run_cli(base + ["--backup-dir", str(backup)])  # no --delete: only what a download replaces
    assert done.returncode == 0, done.stderr
    assert (out / "a.txt").read_bytes() == b"a, version 2" and local_tree(backup) == {"a.txt": b"m/a.txt"}


def test_a_listed_object_the_filter_drops_keeps_its_local_copy(s3, bucket, tmp_path):
    """The object grew past --max-size: it is not downloaded, and its older local copy is not deleted — a listed
    key maps to it."""
    client = s3.client()
    client.put_object(Bucket=bucket, Key="f/grows.bin", Body=b"x" * 100)
    out = tmp_path / "out"
    base = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "f/", "--output", str(out), "--no-prefect",
            "--max-size", "1k", "--delete"]
    assert run_cli(base).returncode == 0 and (out / "grows.bin").stat().st_size == 100
    client.put_object(Bucket=bucket, Key="f/grows.bin", Body=b"x" * 5000)
    done = run_cli(base)
    assert done.returncode == 0 and summary_value(done.stdout, "deleted") == 0, done.stdout
    assert (out / "grows.bin").read_bytes() == b"x" * 100


def test_a_mirror_of_nothing_deletes_nothing(s3, bucket, tmp_path):
    """An empty listing (a mistyped prefix, an emptied bucket, another account) would wipe the output."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    done = run_cli(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "typo/", "--output", str(out),
                    "--no-prefect", "--delete"])
    assert done.returncode == 0 and (out / "precious.txt").exists()
    assert "deletion skipped: nothing was listed" in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_key_that_cannot_be_a_file_does_not_hold_the_mirror_back_but_a_failed_removal_fails_it(mirrored, s3,
                                                                                                  bucket, tmp_path):
    client, out, base = mirrored
    client.put_object(Bucket=bucket, Key="m/a.txt/inner", Body=b"clash")  # a.txt is a file here: a key's own failure
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "gone").write_text("a file where the backup needs a folder")
    done = run_cli(base + ["--delete", "--backup-dir", str(backup)])
    assert done.returncode == 1
    assert "file/folder conflict" in (out / ".oss-failed.csv").read_text()
    assert not (out / "b.txt").exists() and not (out / "stray.txt").exists()  # deleted despite the clash
    assert (out / "gone" / "d.txt").exists()                                  # could not be moved: kept
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: deletion incomplete: 1 file(s) or folder(s) could not be deleted (first: gone/d.txt: ")


def test_a_local_failure_another_run_could_change_holds_the_mirror_back(mirrored, tmp_path):
    """A download that failed here (a symbolic link where a folder must be: the user can remove it) is not the
    key's own failure: nothing is deleted until a run gets everything."""
    client, out, base = mirrored
    client.put_object(Bucket=base[3], Key="m/linked/new.txt", Body=b"new")
    (tmp_path / "target").mkdir()
    (out / "linked").symlink_to(tmp_path / "target")
    before = local_tree(out)
    held = run_cli(base + ["--delete"])
    assert held.returncode == 1 and "deletion skipped: 1 download(s) failed" in held.stdout, held.stdout
    assert local_tree(out) == before and not (tmp_path / "target" / "new.txt").exists()
    (out / "linked").unlink()
    assert run_cli(base + ["--delete"]).returncode == 0 and not (out / "stray.txt").exists()
