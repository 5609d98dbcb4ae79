import pytest

from core.errors import UnsafeKeyError
from core.paths import local_path, parse_suffixes, prefix_folder, relative_path, wanted


@pytest.mark.parametrize("prefix, key, expected", [
    ("data/2024/", "data/2024/a/b.jpg", "a/b.jpg"),
    ("data/20", "data/2024/a/b.jpg", "2024/a/b.jpg"),
    ("", "x/y z+%#ü.txt", "x/y z+%#ü.txt"),
    ("data", "data/x", "data/x"),
])
def test_local_path_strips_the_prefix_folder(tmp_path, prefix, key, expected):
    assert local_path(tmp_path, key, prefix_folder(prefix)) == tmp_path / expected


@pytest.mark.parametrize("key, reason", [
    ("a/../b", "'..' path segment"),
    ("../b", "'..' path segment"),
    ("a/./b", "'.' path segment"),
    ("a//b", "empty path segment"),
    ("a/b\nc", "control character"),
    ("a/" + "x" * 256, "name too long"),
    (".oss-manifest.sqlite", "reserved name"),
    (".oss-failed.csv", "reserved name"),
])
def test_unsafe_keys_are_refused_with_a_reason(key, reason):
    with pytest.raises(UnsafeKeyError, match=reason):
        relative_path(key, "")


def test_long_unicode_name_counts_bytes_not_characters():
    relative_path("é" * 127, "")  # 254 bytes
    with pytest.raises(UnsafeKeyError):
        relative_path("é" * 128, "")  # 256 bytes


def test_suffix_filter_is_case_insensitive_and_tolerates_missing_dots():
    suffixes = parse_suffixes(".JPG, png,")
    assert suffixes == (".jpg", ".png")
    assert wanted("a/B.Jpg", suffixes) and wanted("x.PNG", suffixes) and not wanted("x.gif", suffixes)
    assert wanted("anything", ())
