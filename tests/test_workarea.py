"""The output folder as the tool writes it: one writer, a private work area, nothing written outside."""
import os
import subprocess
import sys

import pytest

from core.errors import LocalPathError, UsageError
from core.workarea import Output, OutputBusy


def make_file(out: Output, rel: str, data: bytes) -> None:
    temp = out.temp_name(rel, "part")
    fd = out.create_temp(temp)
    os.write(fd, data)
    os.close(fd)
    out.install(temp, rel)


def test_files_land_below_the_output_through_the_work_area(tmp_path):
    with Output(tmp_path) as out:
        make_file(out, "a/b/c.txt", b"abc")
        make_file(out, "top.txt", b"top")
        assert (tmp_path / "a/b/c.txt").read_bytes() == b"abc" and (tmp_path / "top.txt").read_bytes() == b"top"
        assert sorted(os.listdir(tmp_path / ".ossdl")) == ["lock"]
        assert out.stat("a/b/c.txt").st_size == 3 and out.stat("a/missing") is None


def test_a_folder_that_is_a_symbolic_link_is_refused_never_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out_dir = tmp_path / "out"
    (out_dir / "plain").mkdir(parents=True)
    (out_dir / "deep").symlink_to(elsewhere)
    with Output(out_dir) as out:
        make_file(out, "plain/ok.txt", b"ok")
        for rel in ("deep/a.jpg", "deep/x/b.PNG"):
            with pytest.raises(LocalPathError, match="deep is a symbolic link"):
                make_file(out, rel, b"x")
        assert out.stat("deep/a.jpg") is None
    assert os.listdir(elsewhere) == []


def test_a_symbolic_link_at_the_final_name_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "c2.txt").symlink_to(victim)
    with Output(out_dir) as out:
        assert out.stat("c2.txt") is None  # a link is never "already present"
        make_file(out, "c2.txt", b"new")
    assert victim.read_bytes() == b"precious"
    assert not (out_dir / "c2.txt").is_symlink() and (out_dir / "c2.txt").read_bytes() == b"new"


def test_a_symbolic_link_planted_at_a_temp_name_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with Output(out_dir) as out:
        temp = out.temp_name("c.txt", "part")
        (out_dir / ".ossdl" / temp).symlink_to(victim)
        assert out.open_partial(temp) is None          # not resumed through the link
        make_file(out, "c.txt", b"data")               # a new temp replaces the link
    assert victim.read_bytes() == b"precious" and (out_dir / "c.txt").read_bytes() == b"data"


def test_a_work_area_that_is_a_symbolic_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / ".ossdl").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="not a folder this tool made"):
        Output(out_dir)
    assert os.listdir(elsewhere) == []


def test_a_file_where_a_folder_should_be_is_a_conflict_and_a_removed_folder_is_made_again(tmp_path):
    with Output(tmp_path) as out:
        (tmp_path / "a").write_bytes(b"file")
        with pytest.raises(LocalPathError, match="file/folder conflict"):
            make_file(out, "a/b.txt", b"x")
        make_file(out, "d/e/1.txt", b"1")
        import shutil
        shutil.rmtree(tmp_path / "d")                  # the user cleared it meanwhile
        make_file(out, "d/e/2.txt", b"2")
        assert (tmp_path / "d/e/2.txt").read_bytes() == b"2"


def test_one_writer_per_output_and_per_shard(tmp_path):
    with Output(tmp_path, owner={"flow_run_id": "run-1"}):
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            Output(tmp_path)
        with pytest.raises(OutputBusy):                # no shard while the whole output is being written
            Output(tmp_path, shard="s1")
    with Output(tmp_path) as again:                    # released on close
        assert again.previous_owner["flow_run_id"] == "run-1"
    with Output(tmp_path, shard="s1", owner={"flow_run_id": "shard-1"}) as s1, Output(tmp_path, shard="s2") as s2:
        with pytest.raises(OutputBusy, match="shard-1|pid"):
            Output(tmp_path)                           # shards of one job run side by side, not with a whole run
        with pytest.raises(OutputBusy):
            Output(tmp_path, shard="s1")               # but never the same shard twice
        make_file(s1, "a.txt", b"a")
        keep = s2.temp_name("b.txt", "part")
        os.close(s2.create_temp(keep))                 # s2 is still downloading b.txt …
        s1.clear_work_area()                           # … when s1 finishes and clears its leftovers
        assert (tmp_path / ".ossdl" / "s2" / keep).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    code = ("import os, sys; from core.workarea import Output; o = Output(sys.argv[1], owner={'flow_run_id': 'dead'});"
            " os._exit(0)")  # dies holding the lock, as kill -9 would leave it
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=os.getcwd())
    with Output(tmp_path) as out:
        assert out.previous_owner["flow_run_id"] == "dead"


def test_the_failure_csv_is_replaced_atomically_even_over_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / ".oss-failed.csv").symlink_to(victim)
    with Output(out_dir) as out:
        with out.replacing(".oss-failed.csv") as f:
            f.write("key,last_error,retry_count\n")
    assert victim.read_bytes() == b"precious"
    assert (out_dir / ".oss-failed.csv").read_text() == "key,last_error,retry_count\n"
