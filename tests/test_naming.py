"""Names from people's data: cleaned, foldered, de-duplicated, never outside the output folder."""
from pathlib import PurePosixPath

from core.naming import AttachmentNaming, UniquePaths, cell_text, clean_segment, split_name


def test_clean_segment_removes_separators_controls_and_reserved_names():
    assert clean_segment("../../etc/passwd") == "_.._etc_passwd"
    assert clean_segment("a\\b/c") == "a_b_c"
    assert clean_segment("bad\x00name\x1f") == "bad_name_"
    assert clean_segment("..") == "_"
    assert clean_segment("  . ") == "_"
    assert clean_segment("CON.txt") == "_CON.txt"
    assert clean_segment(".oss-manifest.sqlite") == "oss-manifest.sqlite"  # leading dots go first
    assert clean_segment("-x") == "-x"
    assert len(clean_segment("长" * 300).encode()) <= 200


def test_cell_text_reads_every_cell_kind():
    assert cell_text([{"type": "text", "text": "Hello "}, {"type": "text", "text": "World"}]) == "Hello World"
    assert cell_text(["红", "蓝"], "-") == "红-蓝"
    assert cell_text([{"name": "张三", "id": "ou_1"}, {"name": "李四"}]) == "张三,李四"
    assert cell_text(3) == "3" and cell_text(2.5) == "2.5" and cell_text(None) == ""
    assert cell_text({"link": "https://x", "text": "site"}) == "site"


def test_split_name_keeps_real_extensions_only():
    assert split_name("a.b.pdf") == ("a.b", ".pdf")
    assert split_name("README") == ("README", "")
    assert split_name(".env") == (".env", "")
    assert split_name("v1.0 final") == ("v1.0 final", "")


def test_duplicates_get_numbered_case_insensitively():
    paths = UniquePaths()
    assert [paths.claim(["x"], n) for n in ["a.jpg", "A.jpg", "a.jpg", "a"]] == \
        ["x/a.jpg", "x/A_1.jpg", "x/a_2.jpg", "x/a"]


def test_attachment_naming_from_fields_with_two_folder_levels():
    naming = AttachmentNaming(name_fields=["编号", "标题"], separator="-", folder_fields=["类别", "标签"])
    rec = {"编号": 7, "标题": [{"text": "a/b"}], "类别": "合同", "标签": ["x", "y"]}
    assert naming.place(rec, "scan.PDF") == "合同/x-y/7-a_b.PDF"
    assert naming.place(rec, "scan.PDF") == "合同/x-y/7-a_b_1.PDF"
    assert naming.place({"编号": None}, "photo.png") == "未分类/未分类/photo.png"  # empty name fields: original
    assert naming.place({"类别": "..", "标签": "/"}, "../../x.png") == "_/_/_.._x.png"


def test_naming_never_escapes_the_folder():
    naming = AttachmentNaming(name_fields=["n"], folder_fields=["f"])
    for hostile in ["../../..", "/etc/passwd", "..\\..\\win", "\x00", "a/../../b", "~", "C:\\x"]:
        rel = PurePosixPath(naming.place({"n": hostile, "f": hostile}, hostile))
        assert not rel.is_absolute() and ".." not in rel.parts and len(rel.parts) == 2, rel
