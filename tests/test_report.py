"""The failure CSV (core/report.py write_failed_csv): its header and rows from the manifest, the path column,
rows that are not objects, and no stale CSV ever left behind. No servers, no Prefect."""
from __future__ import annotations

import csv
import os

import pytest

from core.manifest import Manifest
from core.model import Outcome
from core.report import CSV_HEADER, TABLE_ROWS, write_failed_csv
from core.workarea import Output


@pytest.fixture
def output(tmp_path):
    out, manifest = Output(tmp_path), Manifest(tmp_path)
    yield out, manifest
    manifest.close()
    out.close()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def failed(key, error, attempts, path="", retryable=False):
    return Outcome(key, 10, "etag", attempts, error, retryable, path=path)


def test_one_row_per_failure_of_this_run_in_key_order(output, tmp_path):
    out, manifest = output
    manifest.add([failed("b/2", "HTTP 403 AccessDenied: denied", 1), Outcome("ok", 1, "e", 1),
                  failed("a,1", 'quote " and\nnewline', 3, retryable=True)], "run-2")
    manifest.add([failed("older", "from another run", 2)], "run-1")
    path, first = write_failed_csv(manifest, "run-2", out)
    assert path == tmp_path / ".oss-failed.csv"
    assert read_csv(path) == [CSV_HEADER, ["a,1", 'quote " and\nnewline', "3"], ["b/2", "HTTP 403 AccessDenied: denied", "1"]]
    assert first == [["a,1", 'quote " and\nnewline', 3], ["b/2", "HTTP 403 AccessDenied: denied", 1]]
    assert os.listdir(tmp_path / ".ossdl") == ["lock"]                  # written through a temp file, renamed


def test_the_path_column_names_the_local_file_and_extra_rows_come_first(output, tmp_path):
    out, manifest = output
    manifest.add([failed("rec1/fAtt/box1", "deleted", 1, path="合同/报告.pdf")], "r")
    extra = [["tbl records", "listing incomplete: HTTP 500", 3]]
    path, first = write_failed_csv(manifest, "r", out, path_column=True, extra_rows=extra)
    assert read_csv(path) == [CSV_HEADER + ["path"], ["tbl records", "listing incomplete: HTTP 500", "3", ""],
                              ["rec1/fAtt/box1", "deleted", "1", "合同/报告.pdf"]]
    assert first == [["tbl records", "listing incomplete: HTTP 500", 3], ["rec1/fAtt/box1", "deleted", 1]]


def test_an_incomplete_listing_alone_is_a_csv(output, tmp_path):
    out, manifest = output
    path, _ = write_failed_csv(manifest, "r", out, extra_rows=[["data/", "listing incomplete: boom", 3]])
    assert read_csv(path) == [CSV_HEADER, ["data/", "listing incomplete: boom", "3"]]


def test_a_run_without_failures_removes_a_stale_csv_and_writes_none(output, tmp_path):
    out, manifest = output
    (tmp_path / ".oss-failed.csv").write_text("key,last_error,retry_count\nstale,from an earlier run,1\n")
    manifest.add([Outcome("ok", 1, "e", 1)], "r")
    manifest.add([failed("older", "boom", 1)], "earlier")
    assert write_failed_csv(manifest, "r", out) == (None, [])
    assert not (tmp_path / ".oss-failed.csv").exists()
    assert os.listdir(tmp_path / ".ossdl") == ["lock"]


def test_a_shards_csv_has_its_own_name(output, tmp_path):
    out, manifest = output
    manifest.add([failed("k", "boom", 2)], "r")
    (tmp_path / ".oss-failed.csv").write_text("the whole job's: not this shard's to touch\n")
    path, _ = write_failed_csv(manifest, "r", out, name=".oss-failed-s1.csv")
    assert path == tmp_path / ".oss-failed-s1.csv" and read_csv(path)[1] == ["k", "boom", "2"]
    assert (tmp_path / ".oss-failed.csv").read_text() == "the whole job's: not this shard's to touch\n"


def test_the_table_keeps_the_first_rows_the_csv_keeps_them_all(output, tmp_path):
    out, manifest = output
    manifest.add([failed(f"k{i:05d}", "boom", 2) for i in range(TABLE_ROWS + 10)], "r")
    path, first = write_failed_csv(manifest, "r", out)
    assert len(read_csv(path)) == 1 + TABLE_ROWS + 10
    assert len(first) == TABLE_ROWS and first[-1] == [f"k{TABLE_ROWS - 1:05d}", "boom", 2]

