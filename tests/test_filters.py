"""rclone-style filters: --include-suffix / --exclude, --min-size / --max-size, --min-age / --max-age, in the rules
(table-driven) and end to end on the command line, the dry run and the summary's "filtered out"."""
from __future__ import annotations

import pytest

from core.filters import Filter, filter_of, parse_age, parse_size
from tests.conftest import run_cli

NOW = 1_800_000_000.0
DAY = 86400


@pytest.mark.parametrize("text, size", [
    ("1M", 1 << 20), ("1m", 1 << 20), ("2G", 2 << 30), ("512k", 512 << 10), ("100", 100 << 10),  # bare: KiB
    ("100B", 100), ("1.5M", 3 << 19), ("1MiB", 1 << 20), ("0", 0),
])
def test_sizes_in_rclones_units(text, size):
    assert parse_size(text, "--min-size") == size


@pytest.mark.parametrize("text, seconds_ago", [("7d", 7 * DAY), ("12h", 12 * 3600), ("30m", 1800), ("90s", 90),
                                               ("2w", 14 * DAY), ("1M", 30 * DAY), ("1y", 365 * DAY), ("45", 45)])
def test_ages_as_durations(text, seconds_ago):
    assert parse_age(text, "--max-age", NOW) == NOW - seconds_ago


def test_ages_as_dates_in_local_time_unless_said():
    assert parse_age("2024-01-31T00:00:00+00:00", "--max-age", NOW) == 1706659200
    from datetime import datetime
    assert parse_age("2024-01-31", "--max-age", NOW) == datetime(2024, 1, 31).timestamp()


@pytest.mark.parametrize("flag, value", [("--min-size", "lots"), ("--max-size", "1X"), ("--max-age", "yesterday"),
                                         ("--min-age", "7 days")])
def test_what_cannot_be_read_is_refused_in_one_line_naming_the_flag(flag, value, tmp_path):
    result = run_cli(["--bucket", "b", "--output", str(tmp_path), flag, value])
    assert result.returncode == 2 and result.stderr.startswith(f"error: {flag}: not a") and \
        len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key, size, modified, expected", [
    ("a/x.jpg", 2000, "2026-01-01T00:00:00.000Z", True),
    ("a/x.png", 2000, "2026-01-01T00:00:00.000Z", False),     # not included
    ("tmp/x.jpg", 2000, "2026-01-01T00:00:00.000Z", False),   # excluded (a glob across folders)
    ("a/X.JPG.BAK", 2000, "2026-01-01T00:00:00.000Z", False),  # not included: ends in .bak
    ("a/x.jpg", 999, "2026-01-01T00:00:00.000Z", False),       # too small
    ("a/x.jpg", 5001, "2026-01-01T00:00:00.000Z", False),      # too large
    ("a/x.jpg", -1, "2026-01-01T00:00:00.000Z", True),         # size unknown: not filtered on it
    ("a/x.jpg", 2000, "2020-01-01T00:00:00.000Z", False),      # older than --max-age's date
    ("a/x.jpg", 2000, "2027-06-01T00:00:00.000Z", False),      # newer than --min-age's date
    ("a/x.jpg", 2000, "", True),                               # no time given: not filtered on it
    ("a/x.jpg", 2000, 1767225600.0, True),                     # a number (OSS), 2026-01-01
])
def test_a_key_is_taken_when_included_not_excluded_and_within_the_bounds(key, size, modified, expected):
    f = filter_of(["*.jpg"], ["tmp/**", ".bak"], "1000B", "5000B", "2027-01-01T00:00:00+00:00",
                  "2025-01-01T00:00:00+00:00", NOW)
    assert f.wants(key, size, modified) is expected


def test_no_include_means_everything_but_the_excluded():
    f = Filter(exclude=(".tmp",))
    assert f.wants("a.jpg", 1, "") and not f.wants("b.TMP", 1, "") and not Filter()
    assert Filter(exclude=(".tmp",)).describe() == "--exclude .tmp"


def test_filters_in_the_dry_run_and_the_run(s3, bucket, tmp_path):
    client = s3.client()
    for key, size in (("d/keep.jpg", 3000), ("d/small.jpg", 10), ("d/tmp/x.jpg", 3000), ("d/big.jpg", 9000),
                      ("d/other.png", 3000)):
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * size)
    base = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "d/", "--include-suffix", "*.jpg",
            "--exclude", "tmp/**", "--min-size", "1k", "--max-size", "8k", "--no-prefect", "--max-age", "1d"]
    dry = run_cli(base + ["--output", str(tmp_path / "dry"), "--dry-run"])
    assert dry.returncode == 0 and "Preview: 1 object, 2.9 KiB (4 filtered out)" in dry.stdout, dry.stdout
    assert not (tmp_path / "dry").exists()
    done = run_cli(base + ["--output", str(tmp_path / "out"), "--yes"])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".oss")) == ["keep.jpg"]
    assert "filtered out      4" in done.stdout
    old_only = run_cli(base[:-2] + ["--min-age", "1h", "--output", str(tmp_path / "none")])
    assert old_only.returncode == 0 and old_only.stderr.strip().endswith(
        "are filtered out by --include-suffix *.jpg --exclude tmp/** --min-size 1024 B --max-size 8192 B"
        " --min-age " + old_only.stderr.strip().rsplit("--min-age ", 1)[1])
    assert "all 5 objects under s3://" in old_only.stderr
