"""End to end: `python -m flows.feishu` against the fake Feishu Open API over real HTTP."""
from __future__ import annotations

import asyncio
import csv
import hashlib
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from infra.feishu_server import GOOD_TOKEN, FeishuServer
from core.sources.feishu import Attachment, FeishuClient, LinkBroker
from core.naming import AttachmentNaming, clean_segment
from tests.conftest import ROOT
from tests.test_download import leftovers

FIELDS = [{"field_id": "fAtt", "field_name": "附件", "type": 17},
          {"field_id": "fAtt2", "field_name": "备注附件", "type": 17},
          {"field_id": "fName", "field_name": "名称", "type": 1},
          {"field_id": "fCat", "field_name": "类别", "type": 3},
          {"field_id": "fTag", "field_name": "标签", "type": 4}]


@pytest.fixture
def feishu():
    with FeishuServer() as server:
        yield server


def data(name: str, size: int = 3000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def run_feishu(fs: FeishuServer, out: Path, *extra: str, prefect_api: str | None, token: str = GOOD_TOKEN,
               app: str = "app", table: str = "tbl") -> subprocess.CompletedProcess:
    """`python -m flows.feishu` (a flow run on the session's Prefect server); without `prefect_api`, the
    `feishu-download` script, which checks its input before it imports Prefect (bad input only)."""
    env = dict(os.environ, PERSONAL_BASE_TOKEN=token, PYTHONPATH=str(ROOT))
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
        command = [sys.executable, "-m", "flows.feishu"]
    else:
        command = [str(Path(sys.executable).parent / "feishu-download")]
    return subprocess.run([*command, "--app-token", app, "--table-id", table, "--api-base-url", fs.base_url,
                           "--output", str(out), "--retry-backoff", "0.05", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)


def run_on_the_core(fs: FeishuServer, out: Path, monkeypatch, **params):
    """A Feishu job in this process on the core alone: the runner the flow's tasks call, with the same source,
    manifest, rounds and CSV (the flow itself, its tasks and ZIP, are test_names_folders_...'s)."""
    from core import run as core_run
    from core.paths import prepare_output
    from flows.feishu import FeishuParams
    from tasks.runs import source_of
    monkeypatch.setenv("PERSONAL_BASE_TOKEN", GOOD_TOKEN)
    params = FeishuParams(app_token="app", table_id="tbl", api_base_url=fs.base_url, output=str(out),
                          retry_backoff=0.05, **params)
    job = params.job(uuid.uuid4().hex, out.resolve())
    prepare_output(job.plan.output)
    run = core_run.open_run(job.plan, job.settings, source_of(job))
    try:
        return core_run.run_job(run, core_run.LocalBatches(run))
    finally:
        core_run.close_run(run)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".oss") for part in p.relative_to(folder).parts)}


def test_names_folders_duplicates_expired_links_and_zip(feishu, tmp_path, prefect_api):
    fs = feishu
    fs.add_table("app", "tbl", FIELDS)
    expected: dict[str, bytes] = {}
    cells: list[dict] = []

    def att(name: str, path: str | None) -> dict:
        cell = fs.add_file(data(name + str(len(expected))), name)
        cells.append(cell)
        if path:
            expected[path] = data(name + str(len(expected)))
        return cell

    fs.add_record("app", "tbl", "rec1", {"名称": "报告", "类别": "合同", "标签": ["2024"],
                                         "附件": [att("a.pdf", "合同/2024/报告.pdf")],
                                         "备注附件": [att("b.png", "合同/2024/报告.png")]})
    fs.add_record("app", "tbl", "rec2", {"名称": "报告", "类别": "合同", "标签": ["2024"],
                                         "附件": [att("c.pdf", "合同/2024/报告_1.pdf")]})
    fs.add_record("app", "tbl", "rec3", {"名称": "../evil", "附件": [att("d.txt", "未分类/未分类/_evil.txt")]})
    fs.add_record("app", "tbl", "rec4", {"类别": "图片", "标签": ["x", "y"],
                                         "附件": [att("photo.jpg", "图片/x-y/photo.jpg")]})
    fs.add_record("app", "tbl", "rec5", {"名称": [{"type": "text", "text": "A/B"}], "类别": "合同", "标签": ["2024"],
                                         "附件": [att("same.jpg", "合同/2024/A_B.jpg"),
                                                  att("same.jpg", "合同/2024/A_B_1.jpg")]})
    fs.add_record("app", "tbl", "rec6", {"名称": "no files"})
    fs.add_record("app", "tbl", "rec7", {"名称": "报告", "类别": "合同", "标签": ["2024"],
                                         "附件": [att("e.PDF", "合同/2024/报告_2.PDF")]})
    # Links are fetched for the files of a batch together; while the slow first file downloads (one at a
    # time), the others' links expire: they are refused, asked for again, then downloaded.
    fs.link_ttl = 0.3
    for cell in cells[:3]:  # the first page's three files, whichever of them the batch starts with
        fs.add_fault(cell["file_token"], "delay", seconds=0.6, times=1)

    out = tmp_path / "out"
    preview = run_feishu(fs, out, "--name-fields", "名称", "--folder-fields", "类别,标签", "--dry-run",
                         "--job-name", "合同附件", prefect_api=prefect_api)
    assert preview.returncode == 0, preview.stderr[-3000:]
    assert "Preview: 8 objects" in preview.stdout and "合同/2024/报告_1.pdf" in preview.stdout  # paths, not ids
    assert not files_under(out / "合同附件") and fs.counters["media_gets"] == 0

    result = run_feishu(fs, out, "--name-fields", "名称", "--folder-fields", "类别,标签", "--zip",
                        "--page-size", "3", "--concurrency", "1", "--job-name", "合同附件", prefect_api=prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    job = out / "合同附件"
    assert files_under(job) == expected
    assert fs.counters["expired_hits"] > 0
    with zipfile.ZipFile(out / "合同附件.zip") as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == {f"合同附件/{k}": v for k, v in expected.items()}
    assert fs.auth_headers_seen and all(h == f"Bearer {GOOD_TOKEN}" for h in fs.auth_headers_seen)
    assert GOOD_TOKEN not in result.stdout + result.stderr

    # A rerun finds everything present and fetches nothing: not even a link.
    before, links_before = fs.counters["media_gets"], fs.counters["tmp_url_calls"]
    again = run_feishu(fs, out, "--name-fields", "名称", "--folder-fields", "类别,标签", "--page-size", "3",
                       "--job-name", "合同附件", prefect_api=prefect_api)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already present   8" in again.stdout
    assert fs.counters["media_gets"] == before and fs.counters["tmp_url_calls"] == links_before

    # Two files deleted locally: a rerun asks links for those two only.
    (job / "合同/2024/报告.pdf").unlink()
    (job / "图片/x-y/photo.jpg").unlink()
    fs.reset_counters()
    fs.link_ttl = 300
    third = run_feishu(fs, out, "--name-fields", "名称", "--folder-fields", "类别,标签", "--page-size", "3",
                       "--job-name", "合同附件", prefect_api=prefect_api)
    assert third.returncode == 0, third.stderr[-3000:]
    assert files_under(job) == expected
    assert sorted(fs.tmp_url_tokens) == sorted([cells[0]["file_token"], cells[4]["file_token"]])


def test_deleted_and_denied_files_fail_with_reasons_rate_limits_are_retried(feishu, tmp_path, monkeypatch):
    fs = feishu
    fs.add_table("app", "tbl", FIELDS)
    cells = [fs.add_file(data(f"f{i}"), f"f{i}.bin") for i in range(12)]
    for i, cell in enumerate(cells):
        fs.add_record("app", "tbl", f"rec{i}", {"附件": [cell]})
    fs.delete_file(cells[0]["file_token"])
    fs.deny_file(cells[1]["file_token"])
    fs.add_fault(cells[2]["file_token"], "status", status=503, times=1)
    fs.add_fault(cells[3]["file_token"], "reset", times=1)

    out = tmp_path / "out"
    # The client may go faster than the server allows: the answers are 429s, retried with backoff.
    summary = run_on_the_core(fs, out, monkeypatch, api_requests_per_second=50, page_size=4, concurrency=4)
    assert (summary.listed, summary.downloaded, summary.failed, summary.ok) == (12, 10, 2, False)
    assert fs.counters["rate_limited"] > 0
    job = out / "tbl"
    # Feishu refused the denied file's whole batch of links; asked for one by one, its neighbours came through.
    assert fs.tmp_url_tokens.count(cells[1]["file_token"]) >= 2
    assert files_under(job) == {f"f{i}.bin": data(f"f{i}") for i in range(2, 12)}
    with open(job / ".oss-failed.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["key", "last_error", "retry_count", "path"]
    by_path = {r[3]: r for r in rows[1:]}
    assert set(by_path) == {"f0.bin", "f1.bin"}
    assert by_path["f0.bin"][0] == f"rec0/fAtt/{cells[0]['file_token']}"
    assert "deleted" in by_path["f0.bin"][1] and by_path["f0.bin"][2] == "1"
    assert "403" in by_path["f1.bin"][1] and by_path["f1.bin"][2] == "1"
    assert fs.get_count(cells[0]["file_token"]) == 2  # first link, then one refreshed link; never retried


def test_a_job_unpickled_in_a_fresh_process_finds_its_feishu_source_and_an_s3_job_never_imports_it(tmp_path):
    """tasks.runs looks FeishuSpec up only once its module is imported: a Prefect worker's process that
    unpickles a Feishu job still gets the Bitable source, and an S3 run (the terminal tool) never loads it."""
    import pickle

    from flows.feishu import FeishuParams
    job = FeishuParams(app_token="app", table_id="tbl", output=str(tmp_path)).job("run-1", tmp_path)
    (tmp_path / "job.pickle").write_bytes(pickle.dumps(job))
    code = f"""
import pickle, sys
from core.engine import Engine
from flows.params import DownloadParams
from tasks.runs import source_of
s3 = source_of(DownloadParams(bucket="b", output={str(tmp_path / "s3")!r}).job("run-2"))
print(type(s3).__name__, "core.sources.feishu" in sys.modules)
job = pickle.loads(open({str(tmp_path / "job.pickle")!r}, "rb").read())
with Engine(1) as engine:
    print(type(source_of(job)(engine)).__name__)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
               PERSONAL_BASE_TOKEN=GOOD_TOKEN)
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["S3Source", "False", "BitableSource"]


def test_wrong_or_missing_token_is_one_line_and_exit_2(feishu, tmp_path):
    feishu.add_table("app", "tbl", FIELDS)
    wrong = "pt-" + uuid.uuid4().hex
    result = run_feishu(feishu, tmp_path / "o", prefect_api=None, token=wrong)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "personal base token" in lines[0], result.stderr
    assert wrong not in result.stdout + result.stderr

    missing = run_feishu(feishu, tmp_path / "o", prefect_api=None, token="")
    assert missing.returncode == 2 and "PERSONAL_BASE_TOKEN" in missing.stderr
    unknown_field = run_feishu(feishu, tmp_path / "o", "--attachment-fields", "nope", prefect_api=None)
    assert unknown_field.returncode == 2 and "附件" in unknown_field.stderr


def test_kill_9_mid_run_then_rerun_resumes(feishu, tmp_path, prefect_api):
    fs = feishu
    fs.add_table("app", "tbl", FIELDS)
    cells = [fs.add_file(data(f"k{i}", 40_000), f"k{i:02d}.bin") for i in range(30)]
    for i, cell in enumerate(cells):
        fs.add_record("app", "tbl", f"rec{i}", {"附件": [cell]})
        fs.add_fault(cell["file_token"], "delay", seconds=0.3)
    out = tmp_path / "out"
    env = dict(os.environ, PERSONAL_BASE_TOKEN=GOOD_TOKEN, PREFECT_API_URL=prefect_api)
    proc = subprocess.Popen([sys.executable, "-m", "flows.feishu", "--app-token", "app", "--table-id", "tbl",
                             "--api-base-url", fs.base_url, "--output", str(out), "--concurrency", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list((out / "tbl").glob("*.bin"))) < 6:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 6 <= len(list((out / "tbl").glob("*.bin"))) < 30, "the run was not interrupted mid-way"

    fs.clear_faults()
    result = run_feishu(fs, out, prefect_api=prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_under(out / "tbl") == {f"k{i:02d}.bin": data(f"k{i}", 40_000) for i in range(30)}
    assert leftovers(out / "tbl") == []


def test_no_prefect_downloads_reports_failures_and_zips_without_any_prefect_api(feishu, tmp_path):
    fs = feishu
    fs.add_table("app", "tbl", FIELDS)
    cells = [fs.add_file(data(f"n{i}"), f"n{i}.bin") for i in range(5)]
    for i, cell in enumerate(cells):
        fs.add_record("app", "tbl", f"rec{i}", {"附件": [cell]})
    fs.deny_file(cells[0]["file_token"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # Any contact with Prefect would fail: its API is a closed port, its home a folder that must stay empty.
    env.update(PERSONAL_BASE_TOKEN=GOOD_TOKEN, PYTHONPATH=str(ROOT), PREFECT_API_URL="http://127.0.0.1:9/api",
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    command = [str(Path(sys.executable).parent / "feishu-download"), "--app-token", "app", "--table-id", "tbl",
               "--api-base-url", fs.base_url, "--output", str(tmp_path / "out"), "--retry-backoff", "0.05"]
    result = subprocess.run([*command, "--no-prefect", "--zip"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr[-3000:]
    job = tmp_path / "out" / "tbl"
    assert files_under(job) == {f"n{i}.bin": data(f"n{i}") for i in range(1, 5)}
    assert "downloaded        4" in result.stdout and "failed            1" in result.stdout, result.stdout
    with open(job / ".oss-failed.csv", newline="", encoding="utf-8") as f:
        assert [r[3] for r in list(csv.reader(f))[1:]] == ["n0.bin"]
    with zipfile.ZipFile(tmp_path / "out" / "tbl.zip") as archive:
        assert sorted(archive.namelist()) == [f"tbl/n{i}.bin" for i in range(1, 5)]
    assert "Traceback" not in result.stderr and not (tmp_path / "prefect-home").exists()

    block = subprocess.run([*command, "--no-prefect", "--token-block", "feishu"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    lines = block.stderr.strip().splitlines()
    assert block.returncode == 2 and len(lines) == 1 and "--token-block" in lines[0], block.stderr


def test_ctrl_c_on_the_default_path_stops_within_5_s_then_the_core_resumes(feishu, tmp_path):
    """No PREFECT_API_URL: the temporary Prefect server must survive the Ctrl-C typed at the terminal, so the run
    stops at once (not after minutes of reporting to a dead API) and is recorded Crashed."""
    import pexpect

    from tests.test_terminal import PREFECT_NOISE, flow_run_state_in, processes_with
    fs = feishu
    fs.add_table("app", "tbl", FIELDS)
    cells = [fs.add_file(data(f"c{i}", 20_000), f"c{i:02d}.bin") for i in range(30)]
    for i, cell in enumerate(cells):
        fs.add_record("app", "tbl", f"rec{i}", {"附件": [cell]})
        fs.add_fault(cell["file_token"], "delay", seconds=0.3, times=1)
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env.update(PERSONAL_BASE_TOKEN=GOOD_TOKEN, PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), TERM="xterm")
    out = tmp_path / "out"
    args = ["--app-token", "app", "--table-id", "tbl", "--api-base-url", fs.base_url, "--output", str(out),
            "--concurrency", "2"]
    child = pexpect.spawn(str(Path(sys.executable).parent / "feishu-download"), args, cwd=str(tmp_path), env=env,
                          encoding="utf-8", timeout=90, codec_errors="replace")  # ^C is echoed where typed
    child.expect("starting a temporary Prefect server")
    while len(list((out / "tbl").glob("*.bin"))) < 3:
        child.expect([pexpect.TIMEOUT], timeout=0.1)
    child.sendintr()
    child.expect(pexpect.EOF, timeout=5)  # the 5 s bound
    child.close()
    log = child.before
    assert child.exitstatus == 130, log
    said = [line for line in log.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "the same command resumes where this run stopped" in said[0], log
    assert not [noise for noise in PREFECT_NOISE if noise in log], log
    assert flow_run_state_in(home) == ["CRASHED"]
    assert not processes_with(f"PREFECT_HOME={home}"), "the temporary server outlived the run"
    finished = len(list((out / "tbl").glob("*.bin")))
    assert 3 <= finished < 30

    fs.reset_counters()
    again = subprocess.run([str(Path(sys.executable).parent / "feishu-download"), *args, "--no-prefect"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert files_under(out / "tbl") == {f"c{i:02d}.bin": data(f"c{i}", 20_000) for i in range(30)}
    assert fs.counters["media_gets"] <= 30 - finished + 2  # what finished before Ctrl-C is not fetched again
    assert leftovers(out / "tbl") == []


def test_token_from_a_prefect_secret_block(prefect_api):
    from prefect.blocks.system import Secret

    from core.errors import UsageError
    from tasks.credentials import personal_base_token

    Secret(value="pt-from-block").save("feishu-token-plain", overwrite=True)
    Secret(value={"personal_base_token": "pt-from-json"}).save("feishu-token-json", overwrite=True)
    assert personal_base_token("feishu-token-plain") == "pt-from-block"
    assert personal_base_token("feishu-token-json") == "pt-from-json"
    with pytest.raises(UsageError, match="not found"):
        personal_base_token("no-such-block-" + uuid.uuid4().hex[:8])


def test_a_batch_refused_for_one_denied_file_is_asked_for_file_by_file(feishu):
    fs = feishu
    fs.rate_per_second = 0
    cells = [fs.add_file(data(f"n{i}"), f"n{i}.bin") for i in range(5)]
    fs.deny_file(cells[2]["file_token"])

    async def scenario():
        client = FeishuClient(fs.base_url, GOOD_TOKEN, requests_per_second=0, backoff=0.01)
        broker = LinkBroker(client, "tbl")
        wanted = [Attachment(c["file_token"], "fAtt", f"rec{i}") for i, c in enumerate(cells)]
        broker.expect(wanted)
        try:
            return await asyncio.gather(*(broker.link(a) for a in wanted), return_exceptions=True)
        finally:
            await client.close()
    links = asyncio.run(scenario())
    assert [isinstance(link, str) for link in links] == [True, True, False, True, True]
    assert "HTTP 403" in str(links[2])
    tokens = [c["file_token"] for c in cells]
    assert fs.tmp_url_tokens == tokens + tokens  # the batch, refused; then each file alone


def test_whitespace_only_values_count_as_empty():
    naming = AttachmentNaming(name_fields=["名称"], folder_fields=["类别", "标签"])
    record = {"名称": "   ", "类别": " \t ", "标签": [{"type": "text", "text": "  "}]}
    assert naming.place(record, "  scan.pdf ") == "未分类/未分类/scan.pdf"
    assert naming.place({"名称": " 报告 ", "类别": " 合同 "}, "x.PDF") == "合同/未分类/报告.PDF"


def test_long_names_keep_their_extension():
    name = "季度报告" * 30 + ".xlsx"  # 365 bytes
    short = clean_segment(name)
    assert short.endswith(".xlsx") and short.startswith("季度报告") and len(short.encode()) <= 200
    assert clean_segment("x" * 300).startswith("x") and len(clean_segment("x" * 300)) == 200
    naming = AttachmentNaming(name_fields=["名称"])
    placed = naming.place({"名称": "很长" * 100}, "a.docx")
    assert placed.endswith(".docx") and len(placed.encode()) <= 200
