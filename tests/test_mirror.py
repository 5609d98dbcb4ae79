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
