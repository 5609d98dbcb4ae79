"""What the terminal tool computes and says, checked without a terminal: the suffix/glob filter, speeds from
the first byte, the summary and preview texts, the empty-run warning."""
from __future__ import annotations

import re

import pytest

from core.errors import NothingSelected
from core.model import Counts
from core.model import RemoteObject
from core.paths import parse_suffixes, wanted
from core.progress import Meter, clock
from core.report import Preview, Summary, nothing_selected


@pytest.mark.parametrize("spec, key, expected", [
    ("*.jpg", "a/b/c.JPG", True),
    ("*.jpg", "c.jpg", True),
    ("*.jpg", "c.jpeg", False),
    ("*.jpg", "c.jpg/inside.txt", False),
    ("photos/**/*.png", "data/photos/a.png", True),          # **/ may match no folder
    ("photos/**/*.png", "data/photos/2024/05/a.png", True),
    ("photos/**/*.png", "data/myphotos/a.png", False),       # a folder name, not a suffix of one
    ("photos/**/*.png", "data/photos/a.jpg", False),
    ("data/??.txt", "data/12.txt", True),
    ("data/??.txt", "data/123.txt", False),
    ("[ab]*.gif", "x/b1.gif", True),
    ("[!c]x.bmp", "cx.bmp", False),
    (".jpg,png", "x.PNG", True),                             # plain suffixes as before
    ("jpg,*.png", "x.png", True),
    ("jpg,*.png", "x.gif", False),
])
def test_include_suffix_takes_plain_suffixes_and_globs(spec, key, expected):
    assert wanted(key, parse_suffixes(spec)) is expected


def test_a_broken_pattern_is_refused_when_parsed():
    with pytest.raises(ValueError, match=r"unclosed '\[' in pattern '\*\.\[jp'"):
        parse_suffixes("*.[jp")
    assert parse_suffixes(" .JPG, *.PNG ,") == (".jpg", "*.png")


def test_speed_counts_from_the_first_byte_over_a_window():
    meter = Meter(window=10)
    for t in range(0, 20):                  # 20 s of Prefect start-up and listing: nothing moves
        meter.add(0, t)
    assert meter.rate() is None and clock(meter.eta(1000)) == "-:--:--"
    for t in range(20, 25):                 # then 100 B/s
        meter.add(100 * (t - 19), t)
    assert meter.rate() == pytest.approx(100.0)   # not 500 B / 25 s
    assert meter.active_seconds == pytest.approx(5.0)
    for t in range(25, 45):                 # then 50 B/s: the window forgets the faster start
        meter.add(500 + 50 * (t - 24), t)
    assert meter.rate() == pytest.approx(50.0)
    assert clock(meter.eta(1000)) == "0:00:20" and clock(meter.eta(0.5)) == "0:00:01" and clock(0) == "0:00:00"


def test_summary_speaks_the_bar_s_units_and_keeps_raw_numbers_for_artifacts():
    tally = Counts(listed=2000, downloaded=2000, bytes=10 * 1024 * 1024)
    summary = Summary.of(tally, 8.25, None)
    text = summary.text(seconds=22.6, active_seconds=2.5)
    assert "  size              10.0 MiB" in text and "  time              22.6 s" in text
    assert "  speed             4.0 MiB/s, 800.0 objects/s" in text
    assert "mb" not in text and str(10 * 1024 * 1024) not in text
    rows = dict(summary.rows())                      # what the artifact (and flows/sharded.py) read
    assert rows["bytes"] == str(10 * 1024 * 1024) and rows["seconds"] == "8.25"
    assert "  time              1 min 05 s" in summary.text(seconds=65.2)


def test_preview_says_what_is_present_and_what_is_left():
    preview = Preview()
    objects = [RemoteObject(f"data/{i}", 1024 * (i + 1)) for i in range(25)]
    preview.add(Counts(listed=26, filtered_out=1), objects)
    preview.present, preview.present_bytes = 5, 15 * 1024
    lines = preview.text().splitlines()
    assert lines[:3] == ["Preview: 25 objects, 325.0 KiB (1 filtered out)",
                         "  already present  5 objects, 15.0 KiB (from an earlier run)",
                         "  to download      20 objects, 310.0 KiB"]
    assert lines[3] == "Largest:" and lines[4].endswith("data/24") and "First 20 keys:" in lines
    assert lines[-1] == "  ... and 5 more"


@pytest.mark.parametrize("prefix, listed, filtered, expected", [
    ("/data/d05/", 0, 0, "nothing to download: no objects under s3://b//data/d05/ (keys rarely start with '/':"
                         " did you mean --prefix data/d05/?)"),
    ("data/", 0, 0, "nothing to download: no objects under s3://b/data/"),
    ("data/", 7, 7, "nothing to download: all 7 objects under s3://b/data/ are filtered out by --include-suffix"
                    " *.jpg"),
    ("data/", 7, 6, None),
])
def test_an_empty_selection_says_why(prefix, listed, filtered, expected):
    from flows.params import DownloadParams
    params = DownloadParams(bucket="b", prefix=prefix, include_suffix=["*.jpg"])
    summary = Summary.of(Counts(listed=listed, filtered_out=filtered), 1.0, None)
    assert nothing_selected(summary, params.plan("r"), params.where, params.empty_hint) == expected
    if expected:  # the rule of --fail-if-empty, in the same place
        strict = params.model_copy(update={"fail_if_empty": True})
        with pytest.raises(NothingSelected, match=re.escape(expected)):
            nothing_selected(summary, strict.plan("r"), strict.where, strict.empty_hint)
