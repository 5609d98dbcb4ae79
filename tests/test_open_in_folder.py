"""Folders are created once per process, and again when something removed them meanwhile."""
import shutil

import pytest

from tasks.transfer import _open_in_folder


def test_a_removed_folder_is_made_again(tmp_path):
    target = tmp_path / "a" / "b" / "file.tmp"
    _open_in_folder(target, "wb").close()
    shutil.rmtree(tmp_path / "a")             # e.g. the user cleared the output between runs
    with _open_in_folder(target, "wb") as f:  # remembered as made, but gone: made again
        f.write(b"x")
    assert target.read_bytes() == b"x"


def test_a_file_where_the_folder_should_be_is_a_conflict(tmp_path):
    (tmp_path / "a").write_bytes(b"file")
    with pytest.raises(FileExistsError):
        _open_in_folder(tmp_path / "a" / "b.tmp", "wb")
