"""OSS specifics through oss2 against the OSS-protocol server: CRC64, credentials (wrong secret, STS, V4),
archived objects — the core's, so the CLI runs with --no-prefect. The common end-to-end scenarios run for
both backends in test_download.py."""
from __future__ import annotations

import csv
import os
import uuid

import pytest

from infra.oss_server import OssServer
from tests.conftest import run_cli
from tests.test_download import leftovers


@pytest.fixture
def oss_bucket(oss):
    name = "o-" + uuid.uuid4().hex[:12]
    oss.create_bucket(name)
    yield name
    oss.clear_faults()


def oss_args(server: OssServer, bucket: str, out, *extra) -> list[str]:
    return ["--backend", "oss", "--endpoint", server.endpoint, "--bucket", bucket, "--prefix", "d/",
            "--output", str(out), "--retry-backoff", "0.05", "--yes", *extra]


def failed_rows(out) -> list[list[str]]:
    with open(out / ".oss-failed.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_crc64_mismatch_is_retried_then_reported(oss, oss_bucket, tmp_path, cli):
    data = {k: os.urandom(3000 + i) for i, k in enumerate(["d/once", "d/always", "d/fine"])}
    for key, body in data.items():
        oss.put(oss_bucket, key, body)
    big = os.urandom(20 * 1024 * 1024)  # ranged parts: the CRC of the whole assembled file is checked
    oss.put(oss_bucket, "d/big", big)
    oss.add_fault(oss_bucket, "d/once", "bad_crc", times=1)
    oss.add_fault(oss_bucket, "d/always", "bad_crc")
    oss.add_fault(oss_bucket, "d/big", "bad_crc", times=3)  # all parts of the first attempt
    out = tmp_path / "out"
    result = cli(oss_args(oss, oss_bucket, out))
    assert result.returncode == 1, result.stderr[-3000:]
    assert failed_rows(out)[1:] == [["d/always", "crc64 mismatch: the downloaded bytes are damaged", "3"]]
    assert (out / "once").read_bytes() == data["d/once"] and (out / "fine").read_bytes() == data["d/fine"]
    assert (out / "big").read_bytes() == big
    assert not (out / "always").exists() and leftovers(out) == []
    assert oss.get_count(oss_bucket, "d/once") == 2 and oss.get_count(oss_bucket, "d/always") == 3


def test_archived_objects_are_reported_as_restore_required(oss, oss_bucket, tmp_path, cli):
    oss.put(oss_bucket, "d/hot.txt", b"hot")
    oss.put(oss_bucket, "d/cold.txt", b"cold", storage_class="Archive")
    oss.put(oss_bucket, "d/colder.txt", b"colder", storage_class="ColdArchive")
    oss.put(oss_bucket, "d/coldest.txt", b"coldest", storage_class="DeepColdArchive")
    out = tmp_path / "out"
    result = cli(oss_args(oss, oss_bucket, out))
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(failed_rows(out)[1:]) == [[f"d/{k}.txt", "restore required", "1"]
                                            for k in ("cold", "colder", "coldest")]
    assert "restore required  3" in result.stdout
    assert (out / "hot.txt").read_bytes() == b"hot"
    assert oss.get_count(oss_bucket, "d/cold.txt") == 0  # never asked for: the store would refuse it


def test_wrong_secret_is_access_denied_exit_2(oss, oss_bucket, tmp_path):
    wrong = "wrong-" + uuid.uuid4().hex
    result = run_cli(oss_args(oss, oss_bucket, tmp_path), OSS_ACCESS_KEY_SECRET=wrong)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "access denied" in lines[0] and "SignatureDoesNotMatch" in lines[0], result.stderr
    assert wrong not in result.stdout + result.stderr
    missing = run_cli(oss_args(oss, oss_bucket, tmp_path), OSS_ACCESS_KEY_ID="")
    assert missing.returncode == 2 and "OSS_ACCESS_KEY_ID" in missing.stderr


def test_sts_token_and_v4_signing(oss, oss_bucket, tmp_path, cli):
    oss.put(oss_bucket, "d/a b+c%.txt", b"sts")
    oss.put(oss_bucket, "d/x/中文.bin", os.urandom(5000))
    key_id, secret, token = "STS.tmp-" + uuid.uuid4().hex[:8], uuid.uuid4().hex, uuid.uuid4().hex * 2
    oss.add_sts(key_id, secret, token)
    sts = dict(OSS_ACCESS_KEY_ID=key_id, OSS_ACCESS_KEY_SECRET=secret, OSS_SESSION_TOKEN=token)
    for label, extra in (("v1", []), ("v4", ["--region", "cn-hangzhou"])):
        out = tmp_path / label
        result = cli(oss_args(oss, oss_bucket, out, *extra), **sts)
        assert result.returncode == 0, (label, result.stderr[-3000:])
        assert (out / "a b+c%.txt").read_bytes() == b"sts" and (out / "x" / "中文.bin").stat().st_size == 5000
        assert token not in result.stdout + result.stderr and secret not in result.stdout + result.stderr
    # The token is really checked: without it the same temporary key is refused.
    refused = run_cli(oss_args(oss, oss_bucket, tmp_path / "no"), **dict(sts, OSS_SESSION_TOKEN=""))
    assert refused.returncode == 2 and "access denied" in refused.stderr
