"""Shards of one huge prefix (core/shards.py): key ranges cut at folders that cover every key exactly once,
listed through the real sources; the shards' failure CSVs merged into one; a shard's counts read back from its
summary artifact's rows. No Prefect here."""
from __future__ import annotations

import csv
import random
import uuid

import pytest

from core import listing
from core.model import Counts
from core.report import CSV_HEADER, TABLE_ROWS, Summary
from core.shards import counts_from_rows, merge_failed_csvs, shard_names, split
from core.sources import StoreConfig, make_source
from infra import oss_server


def covered(ranges: list[tuple[str, str]], keys: list[str]) -> dict[str, list[int]]:
    """Which shards each key falls in: start_after < key < end_before ('' = no bound)."""
    return {key: [i for i, (after, before) in enumerate(ranges)
                  if key > after and (not before or key < before)] for key in keys}


FOLDERS = [f"p/{name}/" for name in ("a", "b", "c", "d", "e", "f", "g")]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 6, 7, 8, 64])
def test_ranges_cover_every_key_once_whatever_the_number_of_shards(shards):
    keys = ["p/", "p/0.txt", "p/a", "p/a.txt", "p/a/1", "p/a/b/c", "p/b/1", "p/b0", "p/c/x", "p/d/", "p/d/y",
            "p/e/z", "p/f/1", "p/f/2", "p/g/1", "p/h.txt", "p/z", "p/\uffff"]
    ranges = split(FOLDERS, shards)
    assert len(ranges) == min(shards, len(FOLDERS))
    assert ranges[0][0] == "" and ranges[-1][1] == ""                   # open at both ends
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))        # contiguous
    assert all(cut in FOLDERS for _, cut in ranges[:-1])                # cut at folders only
    where = covered(ranges, keys)
    # Every key in exactly one shard, except a cut itself: a folder marker, which a download skips anyway.
    cuts = {before for _, before in ranges[:-1]}
    assert {key: len(found) for key, found in where.items()} == {key: 0 if key in cuts else 1 for key in keys}
    # A folder is never split: its keys all go to one shard.
    for folder in FOLDERS:
        assert len({tuple(where[k]) for k in keys if k.startswith(folder) and k != folder}) <= 1, folder


def test_shards_are_about_even_in_folders():
    folders = [f"x/{i:03d}/" for i in range(100)]
    sizes = []
    for after, before in split(folders, 7):
        sizes.append(len([f for f in folders if f >= (after or "") and (not before or f < before)]))
    assert sum(sizes) == 100 and max(sizes) - min(sizes) <= 1, sizes


def test_no_folders_is_one_shard_of_everything():
    assert split([], 4) == [("", "")]
    assert split(["p/a/"], 4) == [("", "")]
    assert shard_names(3) == ["s0", "s1", "s2"]


@pytest.fixture(params=["s3", "oss"])
def source_config(request, tmp_path):
    """A bucket on the session's moto S3 or OSS-protocol server, with folders, files between them and a
    folder marker, and a StoreConfig for it."""
    bucket = "sh-" + uuid.uuid4().hex[:10]
    rng = random.Random(7)
    keys = sorted({f"data/{folder}/{rng.randrange(1000):03d}" for folder in "abcdefgh" for _ in range(6)}
                  | {"data/a.txt", "data/c0", "data/e/", "data/zz"})
    if request.param == "s3":
        store = request.getfixturevalue("s3")
        client = store.client()
        client.create_bucket(Bucket=bucket)
        for key in keys:
            client.put_object(Bucket=bucket, Key=key, Body=b"x")
        config = StoreConfig(backend="s3", bucket=bucket, prefix="data/", endpoint=store.endpoint)
    else:
        server = request.getfixturevalue("oss")
        server.create_bucket(bucket)
        for key in keys:
            server.put(bucket, key, b"x")
        config = StoreConfig(backend="oss", bucket=bucket, prefix="data/", endpoint=server.endpoint, credentials={
            "access_key_id": oss_server.ACCESS_KEY, "secret_access_key": oss_server.SECRET_KEY})
    return config, keys


def listed(config: StoreConfig, page_size: int = 5) -> list[str]:
    source = make_source(config)
    return [obj.key for page in listing.pages(source, lambda token, _: source.list_page(token, limit=page_size))
            for obj in page.objects]


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_shards_listed_from_the_store_add_up_to_the_whole_prefix(source_config, shards):
    import dataclasses
    config, keys = source_config
    folders = listing.folders(make_source(config), 3, 0.01)
    assert folders == [f"data/{f}/" for f in "abcdefgh"]
    whole = listed(config)
    assert whole == keys
    parts = [listed(dataclasses.replace(config, start_after=after, end_before=before))
             for after, before in split(folders, shards)]
    assert [k for part in parts for k in part] == [k for k in whole if k not in {b for _, b in split(folders, shards)}]
    assert all(parts), "a shard with nothing in it"


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([CSV_HEADER] + rows)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_the_shards_failure_csvs_are_merged_in_shard_order(tmp_path):
    write_csv(tmp_path / ".oss-failed-s0.csv", [["a/1", "HTTP 403 AccessDenied", 1], ["a/2, with comma", "x\ny", 3]])
    write_csv(tmp_path / ".oss-failed-s2.csv", [["c/1", "timeout", 3]])
    # s1 had no failures: no CSV of its own.
    path, first = merge_failed_csvs(tmp_path, ["s0", "s1", "s2"])
    assert path == tmp_path / ".oss-failed.csv"
    assert read_csv(path) == [CSV_HEADER, ["a/1", "HTTP 403 AccessDenied", "1"], ["a/2, with comma", "x\ny", "3"],
                              ["c/1", "timeout", "3"]]
    assert first == [["a/1", "HTTP 403 AccessDenied", 1], ["a/2, with comma", "x\ny", 3], ["c/1", "timeout", 3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".oss-failed-s0.csv", ".oss-failed-s2.csv",
                                                           ".oss-failed.csv"]   # no temp file left


def test_the_merge_writes_through_no_symbolic_link_planted_in_the_output(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    (outside / "secret.csv").write_text("key,last_error,retry_count\nsecret,leaked,1\n")
    (out / ".oss-failed.csv.tmp").symlink_to(outside / "victim")      # the temp name
    (out / ".oss-failed.csv").symlink_to(outside / "victim")          # the final name
    (out / ".oss-failed-s1.csv").symlink_to(outside / "secret.csv")   # a shard's CSV
    write_csv(out / ".oss-failed-s0.csv", [["a/1", "boom", 1]])
    with pytest.raises(OSError):  # a shard's CSV that is a link is refused, not read
        merge_failed_csvs(out, ["s0", "s1"])
    assert (outside / "victim").read_text() == "keep me"
    (out / ".oss-failed-s1.csv").unlink()
    path, first = merge_failed_csvs(out, ["s0", "s1"])
    assert read_csv(path) == [CSV_HEADER, ["a/1", "boom", "1"]] and not path.is_symlink()
    assert (outside / "victim").read_text() == "keep me"


def test_no_failures_in_any_shard_removes_a_stale_merged_csv(tmp_path):
    write_csv(tmp_path / ".oss-failed.csv", [["stale", "from an earlier run", 1]])
    assert merge_failed_csvs(tmp_path, ["s0", "s1"]) == (None, [])
    assert list(tmp_path.iterdir()) == []


def test_the_merged_table_keeps_the_first_rows_the_csv_keeps_them_all(tmp_path):
    write_csv(tmp_path / ".oss-failed-s0.csv", [[f"k{i:05d}", "boom", 2] for i in range(TABLE_ROWS + 5)])
    path, first = merge_failed_csvs(tmp_path, ["s0"])
    assert len(read_csv(path)) == 1 + TABLE_ROWS + 5 and len(first) == TABLE_ROWS
    assert first[-1] == [f"k{TABLE_ROWS - 1:05d}", "boom", 2]


def test_a_shards_counts_come_back_from_its_summary_rows():
    counts = Counts(listed=120, filtered_out=7, already_present=30, downloaded=80, failed=2, restore_required=1,
                    bytes=123_456_789)
    summary = Summary.of(counts, 12.5, None, incomplete="listing incomplete: boom", notes=["a note"])
    # As the summary artifact stores them (tasks/artifacts.py publish_summary): every value a string.
    rows = [{"metric": name, "value": value} for name, value in summary.rows()]
    back = counts_from_rows(rows)
    for name in ("listed", "filtered_out", "already_present", "downloaded", "failed", "restore_required", "bytes"):
        assert getattr(back, name) == getattr(counts, name), name
    assert counts_from_rows([]) == Counts()  # a shard without a summary counts nothing
