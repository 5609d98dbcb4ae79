"""The Bitable plugin's local download service, driven by a replay of the published plugin
(tests/plugin_client.py) over real WebSockets, with links from the fake Feishu Open API."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import prefect  # noqa: F401 - configures logging when imported (by a Prefect test here): before caplog attaches
from bridge.service import BridgeService, BridgeSettings
from infra.feishu_server import GOOD_TOKEN, FeishuServer
from tests.conftest import ROOT
from tests.plugin_client import (MIN_DESKTOP_CLIENT_VERSION, PLUGIN_ORIGIN, PublishedPlugin, cells_of,
                                 compare_semantic_versions)

MiB = 1 << 20
ATTACHMENT = [{"field_id": "fAtt", "field_name": "附件", "type": 17}]


def content(name: str, size: int = 5000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def feishu():
    with FeishuServer(rate_per_second=0) as fs:  # the plugin's own link requests are not rate-limited here
        fs.add_table("app", "tbl", ATTACHMENT)
        yield fs


@pytest.fixture
def start_service(tmp_path):
    started = []

    def start(**overrides) -> BridgeService:
        settings = dict(port=0, output=tmp_path / "downloads", retry_backoff=0.01, download_concurrency=4)
        svc = BridgeService(BridgeSettings(**{**settings, **overrides})).start()
        started.append(svc)
        return svc
    yield start
    for svc in started:
        svc.stop()


def wait_until(check, timeout: float = 30.0):
    """The service finishes token-mode jobs alone: poll for what it leaves behind (a hang guard, not a
    timing assert)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)
    return value


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".oss") for part in p.relative_to(folder).parts)}


# -- the published plugin, url mode ----------------------------------------------------------------------
def test_published_plugin_url_mode(feishu, start_service, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="feishu-bridge")
    fs = feishu
    long_name = "很长的文件名" * 14 + ".pdf"  # 256 bytes: shortened, extension kept
    files = [("a.pdf", content("a"), "合同/2024"), ("a.pdf", content("a2"), "合同/2024"),
             ("../../evil.txt", content("evil"), "../../.."), ("big.bin", content("big", 24 * MiB), "大文件"),
             ("flaky.txt", content("flaky"), ""), ("secret.txt", content("secret"), ""),
             (long_name, content("long"), "")] + [(f"s{i}.txt", content(f"s{i}"), "小") for i in range(8)]
    cells = cells_of(fs, "app", "tbl", files)
    big, flaky, secret = cells[3], cells[4], cells[5]
    fs.add_fault(big["token"], "trickle", chunk=256 * 1024, seconds=256 / (6 * 1024))  # ~6 MiB/s: progress acks
    fs.add_fault(flaky["token"], "status", status=503, times=2)  # round 1 and round 2's first attempt fail
    fs.deny_file(secret["token"])                              # the plugin cannot get its link
    svc = start_service()

    async def scenario():
        plugin = PublishedPlugin(svc.port, fs)
        assert await plugin.accepts_service()
        plugin.stale_first.add(big["order"])  # its first link has expired when the parts use it
        ended = await plugin.download_url_mode(cells, zip_name="Q3 报告")
        return plugin, ended
    plugin, ended = run(scenario())

    # The version gate: answered before the plugin's 0.8 s fallback (which would make a 'probe' job).
    assert not plugin.fallback_config_sent and not (tmp_path / "downloads" / "probe").exists()
    # The plugin never saw a job-ending error and finished on job_complete.
    assert ended == "complete" and plugin.fatal == [], plugin.fatal
    # Every per-file ack names its file; job events (zip, retry, complete, job progress) carry no order.
    for ack in plugin.acks:
        if ack.get("stage") in ("file", "refresh") or ack["status"] == "refresh":
            assert isinstance(ack.get("order"), int) and ack["order"] > 0, ack
        if ack.get("stage") in ("zip", "retry_failed_files", "job_complete"):
            assert "order" not in ack, ack
    # One link request per file at a time: the big file's three parts shared its first link request and,
    # when that link had expired, one more; no refresh ack came while the plugin was still answering one.
    assert plugin.concurrent_refresh == []
    assert plugin.refresh_asked[big["order"]] == 2
    assert plugin.refresh_asked == plugin.answered
    assert "ignored a link" not in caplog.text
    # Progress for the large file only, below 100 and rising.
    assert set(plugin.progress) == {big["order"]} and 1 <= len(plugin.progress[big["order"]]) <= 8
    assert plugin.progress[big["order"]] == sorted(plugin.progress[big["order"]])
    # Round 2 was announced with the failures it retries (retryable ones only: the denied file is not).
    assert plugin.retry_stage == {**plugin.retry_stage, "status": "success", "failed": 1}
    retry_at = plugin.acks.index(plugin.retry_stage)
    assert [a["status"] for a in plugin.acks[retry_at:] if a.get("order") == flaky["order"]
            and a.get("stage") == "file"] == ["success"]
    assert plugin.results == {c["order"]: "error" if c is secret else "success" for c in cells}
    assert plugin.job_complete["completed"] == len(cells) - 1 and plugin.job_complete["failed"] == 1

    job = tmp_path / "downloads" / "Q3 报告"
    saved = files_under(job)
    short_name = next(n for n in saved if n.startswith("很长"))
    assert short_name.endswith(".pdf") and len(short_name.encode()) <= 200
    assert saved == {"合同/2024/a.pdf": content("a"), "合同/2024/a_1.pdf": content("a2"), "_.._evil.txt": content("evil"),
                     "大文件/big.bin": content("big", 24 * MiB), "flaky.txt": content("flaky"),
                     short_name: content("long"), **{f"小/s{i}.txt": content(f"s{i}") for i in range(8)}}
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "downloads" / "evil.txt").exists()
    rows = (job / ".oss-failed.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "key,last_error,retry_count,path" and len(rows) == 2
    assert rows[1].startswith(f"rec6/fAtt/{secret['token']},") and rows[1].endswith(",secret.txt")
    assert "could not get a link" in rows[1]
    with zipfile.ZipFile(plugin.zip["path"]) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {f"Q3 报告/{k}": v for k, v in saved.items()}
    # The log names every file's result, then the job's result with the CSV and ZIP.
    assert "Q3 报告: saved 大文件/big.bin (24.0 MiB)" in caplog.text
    assert re.search(r"Q3 报告: failed secret\.txt: the plugin could not get a link", caplog.text)
    assert f"job finished: {len(cells) - 1} saved, 1 failed in {job}; failures listed in {job}/.oss-failed.csv;" \
           f" ZIP: {job}.zip" in caplog.text


def test_the_version_gate_reads_what_the_plugin_reads(feishu, start_service):
    svc = start_service()

    async def probe_without_data():
        async with connect(f"ws://127.0.0.1:{svc.port}", origin=PLUGIN_ORIGIN) as ws:
            await ws.send('{"type":"feishu_attachment_probe"}')
            return json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]
    info = run(probe_without_data())
    assert info["stage"] == "server_info" and info["status"] == "success"
    assert compare_semantic_versions(info["version"], MIN_DESKTOP_CLIENT_VERSION) >= 0
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["serviceVersion"]) and info["serviceVersion"] != info["version"]
    # The comparison itself, as src/utils/index.js does it.
    assert compare_semantic_versions("0.1.0", "1.1.8") < 0 and compare_semantic_versions("v1.2", "1.1.8") > 0
    assert compare_semantic_versions("1.1.8", "1.1.8") == 0 and compare_semantic_versions("", "1.1.8") < 0


@pytest.mark.parametrize("mode", ["url", "token"])
def test_downloads_overlap_whatever_concurrency_the_plugin_asks_for(mode, tmp_path, start_service):
    with FeishuServer(rate_per_second=0 if mode == "url" else 10) as fs:
        fs.add_table("app", "tbl", ATTACHMENT)
        cells = cells_of(fs, "app", "tbl", [(f"f{i}.bin", content(f"f{i}"), "") for i in range(12)])
        for cell in cells:
            fs.add_fault(cell["token"], "delay", seconds=0.3)
        svc = start_service(personal_base_token=GOOD_TOKEN, feishu_base_url=fs.base_url, api_requests_per_second=10)
        plugin = PublishedPlugin(svc.port, fs)  # sends concurrent: 1, as the published plugin always does
        if mode == "url":
            assert run(plugin.download_url_mode(cells, zip_name="par", zip_after=False)) == "complete"
        else:
            run(plugin.download_token_mode(cells, "app", "tbl", zip_name="par", zip_after=False))
            wait_until(lambda: svc.jobs and svc.jobs[-1].finished)
        assert 2 <= fs.counters["max_media_in_flight"] <= 4  # --download-concurrency 4, not the plugin's 1
    assert files_under(tmp_path / "downloads" / "par") == {f"f{i}.bin": content(f"f{i}") for i in range(12)}


# -- token mode ----------------------------------------------------------------------------------------------
def test_token_mode_the_plugin_closes_at_once_and_the_service_finishes_alone(tmp_path, start_service, caplog):
    caplog.set_level(logging.INFO, logger="feishu-bridge")
    with FeishuServer(rate_per_second=10) as fs:
        fs.add_table("app", "tbl", ATTACHMENT)
        cells = cells_of(fs, "app", "tbl", [(f"t{i}.bin", content(f"t{i}"), "附件") for i in range(9)])
        fs.delete_file(cells[7]["token"])
        fs.deny_file(cells[2]["token"])            # refused batches of five are split: its neighbours live
        for cell in (cells[0], cells[5]):          # links that expired before they were used: asked again
            fs.expire_links(cell["token"])
        svc = start_service(personal_base_token=GOOD_TOKEN, feishu_base_url=fs.base_url, api_requests_per_second=10)
        plugin = PublishedPlugin(svc.port, fs)
        run(plugin.download_token_mode(cells, "app", "tbl", zip_name="打包", batch_size=4))
        job = wait_until(lambda: svc.jobs and svc.jobs[-1].finished and svc.jobs[-1])
        assert fs.counters["expired_hits"] == 2                            # both expired links were refreshed
        assert fs.auth_headers_seen and all(h == f"Bearer {GOOD_TOKEN}" for h in fs.auth_headers_seen)
        assert [t for t in fs.tmp_url_tokens if t == cells[2]["token"]]
        assert fs.tmp_url_tokens.count(cells[2]["token"]) >= 2             # in a batch, then alone
    folder = tmp_path / "downloads" / "打包"
    assert job.result["completed"] == 7 and job.result["failed"] == 2
    assert files_under(folder) == {f"附件/t{i}.bin": content(f"t{i}") for i in range(9) if i not in (2, 7)}
    failed = {r.split(",")[3]: r for r in (folder / ".oss-failed.csv").read_text().splitlines()[1:]}
    assert set(failed) == {"附件/t2.bin", "附件/t7.bin"}
    assert "403" in failed["附件/t2.bin"] and "deleted" in failed["附件/t7.bin"]
    with zipfile.ZipFile(tmp_path / "downloads" / "打包.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {f"打包/{k}": v
                                                                    for k, v in files_under(folder).items()}
    assert "disconnected before" not in caplog.text  # complete came first: a normal end for token mode


# -- a plugin that goes away --------------------------------------------------------------------------------------
@pytest.mark.parametrize("complete_sent", [True, False])
def test_a_disconnect_in_url_mode_finishes_the_job(complete_sent, feishu, start_service, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="feishu-bridge")
    cells = cells_of(feishu, "app", "tbl", [(f"d{i}.txt", content(f"d{i}"), "") for i in range(6)])
    svc = start_service(download_concurrency=2)
    plugin = PublishedPlugin(svc.port, feishu)
    plugin.hold = {4, 5, 6}  # the tab stops answering, then closes once the first three are saved
    assert run(plugin.download_url_mode(cells, zip_name="gone", close_after=3,
                                        send_complete=complete_sent)) == "closed"
    job = wait_until(lambda: svc.jobs[-1].finished and svc.jobs[-1])
    folder = tmp_path / "downloads" / "gone"
    assert files_under(folder) == {f"d{i}.txt": content(f"d{i}") for i in range(3)}
    rows = (folder / ".oss-failed.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[3] for r in rows) == ["d3.txt", "d4.txt", "d5.txt"]
    assert all("disconnected" in r for r in rows)
    with zipfile.ZipFile(tmp_path / "downloads" / "gone.zip") as archive:
        assert sorted(archive.namelist()) == [f"gone/d{i}.txt" for i in range(3)]
    assert job.result == {**job.result, "completed": 3, "failed": 3, "pending": 0, "current": 0}
    assert f"gone: job finished: 3 saved, 3 failed in {folder}" in caplog.text
    assert ("disconnected before the job was complete" in caplog.text) is not complete_sent
    assert svc.status()["pending"] == 0 and svc.status()["history"][-1]["name"] == "gone"


def test_a_part_whose_link_another_part_replaced_takes_the_new_one():
    """The ranged parts of one file share its link; a part that finds its (older) link expired after another
    part already got a new one uses that instead of asking the plugin again."""
    from bridge import protocol
    from bridge.links import PluginLinks

    async def scenario():
        asked: list[dict] = []
        links = PluginLinks(lambda text: _note(asked, text))
        sign = links.signer(protocol.file_request({"name": "big.bin", "order": 7}))
        results: dict[str, str] = {}
        gate = asyncio.Event()

        async def part(name: str, wait: bool):
            results[name] = await sign(False)          # all three share the first request
            if wait:
                await gate.wait()                       # C's request is still in flight while A refreshes
            results[name + "!"] = await sign(True)     # "the link expired"
        async def asked_for(n: int) -> None:
            while len(asked) < n:
                await asyncio.sleep(0)
        a, c = asyncio.create_task(part("A", False)), asyncio.create_task(part("C", True))
        b = asyncio.create_task(sign(False))
        await asked_for(1)
        links.answer({"order": 7, "downloadUrl": "u1"})
        await asked_for(2)
        links.answer({"order": 7, "downloadUrl": "u2"})  # A's refresh
        await a
        gate.set()
        await asyncio.wait_for(c, 10)  # if C asked again, nobody would answer: a failure, not a hang
        return asked, results, await b
    asked, results, b = run(scenario())
    assert [a["status"] for a in asked] == ["refresh", "refresh"] and {a["order"] for a in asked} == {7}
    assert results == {"A": "u1", "C": "u1", "A!": "u2", "C!": "u2"} and b == "u1"


async def _note(asked: list, text: str) -> None:
    asked.append(json.loads(text)["data"])


def test_links_nobody_asked_for_are_ignored_without_an_error_ack(feishu, start_service, caplog):
    caplog.set_level(logging.INFO, logger="feishu-bridge")
    svc = start_service()

    async def scenario():
        async with connect(f"ws://127.0.0.1:{svc.port}", origin=PLUGIN_ORIGIN) as ws:
            await ws.send(json.dumps({"type": "feishu_attachment_refresh", "data": {"order": 3, "downloadUrl": "x"}}))
            await ws.send(json.dumps({"type": "feishu_attachment_config", "data": {"jobId": "1", "total": 1}}))
            await ws.recv()
            for answer in ({"order": 9, "downloadUrl": "http://127.0.0.1:9/late"}, {"order": "x"}, {"error": "e"},
                           {"order": 1, "error": "no permission"}):
                await ws.send(json.dumps({"type": "feishu_attachment_refresh", "data": answer}))
            await ws.send('{"type":"feishu_attachment_probe"}')  # the connection is fine: the next ack is this
            return json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]
    assert run(scenario())["stage"] == "server_info"
    ignored = [r for r in caplog.records if "ignored a link" in r.getMessage()]
    assert len(ignored) == 5 and not any(r.exc_info for r in caplog.records)


# -- bad input -----------------------------------------------------------------------------------------------
def _config(total: str) -> str:
    return '{"type":"feishu_attachment_config","data":{"jobId":"j","total":%s}}' % total


@pytest.mark.parametrize("raw, expected", [
    (_config("Infinity"), "Infinity is not a number"),
    (_config("-Infinity"), "Infinity is not a number"),
    (_config("NaN"), "NaN is not a number"),
    (_config("1e999"), "out of range"),
    (_config("1" * 5000), "not JSON"),
    (_config('"lots"'), "total: expected a whole number"),
    (_config("-3"), "must not be negative"),
    (_config("[[[1]]]"), "total: expected a whole number"),
    ('{"type":"feishu_attachment_probe","data":' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    ('{"type":"feishu_attachment_link","data":' + "[" * 400 + "]" * 400 + "}", "before any file"),
    ('{"type":"feishu_attachment_link","data":{"files":[' + ",".join(['{"name":"%s","order":1}' % ("x" * 100)] * 1800)
     + "]}}", "message too large"),
    ("hello", "not JSON"),
    ('{"type":"feishu_attachment_config","data":{"jobId":"j","downloadMode":"ftp"}}', "downloadMode"),
    ('{"type":"feishu_attachment_config","data":{}}', "jobId, jobName or zipName"),
    ('{"type":"feishu_attachment_config","data":{"jobId":"j","downloadMode":"token"}}', "appToken and tableId"),
    ('{"type":"feishu_attachment_config","data":{"jobId":"j","downloadMode":"token","appToken":"a","tableId":"t"}}',
     "personal base token"),
    ('{"type":"feishu_attachment_complete"}', "no job on this connection"),
    ('{"type":"something_else","data":{}}', "unknown message type"),
    ('{"data":{}}', "expected {"),
])
def test_bad_messages_get_an_error_ack_and_the_connection_stays_usable(raw, expected, start_service, caplog):
    svc = start_service(max_message_bytes=150_000)

    async def scenario():
        async with connect(f"ws://127.0.0.1:{svc.port}") as ws:
            await ws.send(raw)
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
            await ws.send('{"type":"feishu_attachment_probe"}')
            return answer, json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
    answer, after = run(scenario())
    assert answer["status"] == "error" and expected in answer["message"] and "order" not in answer
    assert after["stage"] == "server_info"
    assert not any(r.exc_info for r in caplog.records)


def test_a_bad_file_fails_alone_with_its_order(feishu, start_service, tmp_path):
    cells = cells_of(feishu, "app", "tbl", [("ok.txt", content("ok"), "")])
    svc = start_service()

    async def scenario():
        plugin = PublishedPlugin(svc.port, feishu)
        async with connect(plugin.url, origin=PLUGIN_ORIGIN) as ws:
            await ws.send(json.dumps({"type": "feishu_attachment_config", "data": {"jobId": "j", "total": 5}}))
            await ws.recv()
            await ws.send(json.dumps({"type": "feishu_attachment_link", "data": {"files": [
                {"order": 2, "name": ""}, {"order": 3, "name": {"deep": [[[]]]}}, cells[0], cells[0]]}}))
            acks = [json.loads(await asyncio.wait_for(ws.recv(), 10))["data"] for _ in range(4)]
            return acks
    acks = run(scenario())
    errors = sorted((a["order"], a["message"]) for a in acks if a["status"] == "error")
    assert [order for order, _ in errors] == [1, 2, 3]  # the duplicate of 1, no name, a name that is not text
    assert "already sent" in errors[0][1] and "name is missing" in errors[1][1] and "name: expected text" in errors[2][1]
    assert [a["order"] for a in acks if a["status"] == "refresh"] == [1]  # the good file goes on


# -- origins -----------------------------------------------------------------------------------------------------
ALLOWED = ["https://ext.baseopendev.com", "https://a1b2c3.feishuapp.cn", "https://x.feishu.cn", "https://feishu.cn",
           "https://www.larksuite.com", "https://abc.larkoffice.com", "http://localhost:5173", "http://127.0.0.1:8080",
           "https://app.example.com", "https://deep.sub.partner.example.org", None]
REFUSED = ["https://evil.example.com", "https://feishu.cn.evil.com", "https://evilfeishu.cn", "http://x.feishu.cn",
           "https://partner.example.org", "null"]


def test_origins_feishu_lark_localhost_and_configured_ones_only(start_service, caplog):
    caplog.set_level(logging.INFO)
    svc = start_service(allow_origins=["https://app.example.com/", "https://*.partner.example.org"])

    async def attempt(origin):
        async with connect(f"ws://127.0.0.1:{svc.port}", origin=origin) as ws:
            await ws.send('{"type":"feishu_attachment_probe"}')
            return json.loads(await ws.recv())["data"]["stage"]
    for origin in ALLOWED:
        assert run(attempt(origin)) == "server_info", origin
    for origin in REFUSED:
        caplog.clear()
        with pytest.raises(InvalidStatus) as refused:
            run(attempt(origin))
        assert refused.value.response.status_code == 403
        lines = [r for r in caplog.records if origin in r.getMessage()]
        assert len(lines) == 1 and f"--allow-origin {origin}" in lines[0].getMessage(), caplog.text
        assert not any(r.exc_info for r in caplog.records)


# -- the terminal command ----------------------------------------------------------------------------------------
# The checkout under test, whichever copy of the package is installed; run where no .env is.
# Without a Prefect API (a worker that ran a Prefect test has PREFECT_API_URL set): these tests are about the
# service's own exit (with one, jobs would also leave records in the output for the sender: see below).
CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
CLI_ENV.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))


def start_cli(tmp_path, *args) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "--port", "0", "--output", str(tmp_path / "out"), *args],
                            cwd=tmp_path, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
    assert match, line + proc.stderr.read()
    return proc, int(match.group(1))


class StubbornClient:
    """Completes the WebSocket handshake, then never reads and never answers a close frame."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        assert b" 101 " in self.sock.recv(4096)

    def close(self):
        self.sock.close()


def test_cli_logs_each_file_and_sigterm_exits_0_despite_a_stubborn_client(tmp_path, feishu):
    cells = cells_of(feishu, "app", "tbl", [("a.txt", content("a"), "x"), ("b.txt", content("b"), "")])
    feishu.deny_file(cells[1]["token"])
    proc, port = start_cli(tmp_path, "--log-level", "INFO")
    stubborn = None
    try:
        plugin = PublishedPlugin(port, feishu)
        assert run(plugin.download_url_mode(cells, zip_name="cli")) == "complete"
        for headers in ({}, {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "x"}):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers)  # not a WebSocket
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=5)
        stubborn = StubbornClient(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0  # the bound: a clean exit within 5 s
    finally:
        if stubborn:
            stubborn.close()
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "cli: saved x/a.txt" in err and "cli: failed b.txt: the plugin could not get a link" in err
    assert "cli: job finished: 1 saved, 1 failed" in err
    assert "Traceback" not in err and "stopped" in proc.stdout.read()
    assert len(re.findall(r"ERROR opening handshake failed: invalid Connection header", err)) == 2  # one line each


def test_ctrl_c_at_a_terminal_exits_0_despite_a_stubborn_client(tmp_path):
    import pexpect
    child = pexpect.spawn(sys.executable, ["-m", "bridge", "--port", "0", "--output", str(tmp_path / "out")],
                          cwd=str(tmp_path), env=CLI_ENV, encoding="utf-8", timeout=60,
                          codec_errors="replace")  # ^C is echoed where typed
    stubborn = None
    try:
        child.expect(r"listening on ws://127\.0\.0\.1:(\d+)")
        stubborn = StubbornClient(int(child.match.group(1)))
        child.sendcontrol("c")
        child.expect(pexpect.EOF, timeout=5)
        child.close()
        assert child.exitstatus == 0, child.before
        assert "Traceback" not in child.before
    finally:
        if stubborn:
            stubborn.close()
        if child.isalive():
            child.terminate(force=True)


@pytest.mark.parametrize("args, expected", [
    (["--allow-origin", "not a url"], "--allow-origin: not an origin"),
    (["--download-concurrency", "0"], "--download-concurrency must be 1-64"),
])
def test_cli_refuses_bad_options_in_one_line(tmp_path, args, expected):
    result = subprocess.run([sys.executable, "-m", "bridge", *args], cwd=tmp_path, env=CLI_ENV, capture_output=True,
                            text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), result.stderr


def test_cli_exits_2_when_the_port_is_taken(start_service, tmp_path):
    svc = start_service()
    result = subprocess.run([sys.executable, "-m", "bridge", "--port", str(svc.port), "--output", str(tmp_path / "o")],
                            cwd=tmp_path, env=CLI_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot listen" in result.stderr and "Traceback" not in result.stderr


# -- Prefect ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profiles, env, expected", [
    (None, {}, "False False"),  # nothing names an API: Prefect is not even imported
    ('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n', {}, "False False"),
    ('active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n', {}, "True True"),
    ('active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n[profiles.off]\n',
     {"PREFECT_PROFILE": "off"}, "False False"),
    (None, {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "True True"),
    (None, {".env": "PERSONAL_BASE_TOKEN=pt-x\n"}, "False False"),  # the desktop user's .env: no API in it
    (None, {".env": "PREFECT_API_URL=http://127.0.0.1:9/api\n"}, "True True"),
])
def test_jobs_are_recorded_when_the_environment_or_the_active_profile_names_an_api(tmp_path, profiles, env,
                                                                                    expected):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(env)
    if ".env" in env:
        (tmp_path / ".env").write_text(env.pop(".env"))
    if profiles:
        (home / "profiles.toml").write_text(profiles)
    environment = {k: v for k, v in CLI_ENV.items() if not k.startswith("PREFECT_")}
    environment.update(PREFECT_HOME=str(home), **env)
    code = "import sys; from bridge.record import JobRecorder; print(JobRecorder().enabled, 'prefect' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == expected, result.stderr


def test_each_job_is_a_prefect_flow_run_with_its_summary(prefect_api, feishu, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName

    cells = cells_of(feishu, "app", "tbl", [("x.txt", content("x"), ""), ("y.txt", content("y"), "")])
    svc = BridgeService(BridgeSettings(port=0, output=tmp_path / "dl", retry_backoff=0.01)).start()
    try:
        plugin = PublishedPlugin(svc.port, feishu)
        plugin.stale_first.add(2)
        assert run(plugin.download_url_mode(cells, zip_name="rec", zip_after=False)) == "complete"
        assert plugin.job_complete["completed"] == 2
        wait_until(lambda: not list((tmp_path / "dl" / ".oss-records").glob("*.json")))  # sent while it runs
    finally:
        svc.stop()
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["feishu-plugin-job"])))
            done = [r for r in runs if r.parameters.get("job_name") == "rec" and r.state.is_completed()]
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert done, [r.state for r in runs]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[done[0].id])))
    summary = next(a for a in artifacts if a.key == "download-summary").data
    rows = {r["metric"]: r["value"] for r in (json.loads(summary) if isinstance(summary, str) else summary)}
    assert rows["downloaded"] == "2" and rows["failed"] == "0"


def _plugin_job_runs(job_name: str, timeout: float = 30.0) -> list:
    """The session server's completed `feishu-plugin-job` flow runs of this job (a hang guard, not a timing
    assert: the sender publishes them in its own thread)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["feishu-plugin-job"])))
            done = [r for r in runs if r.parameters.get("job_name") == job_name and r.state.is_completed()]
            if done or time.monotonic() > deadline:
                return done
            time.sleep(0.5)


def _summary_rows(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    summary = next(a for a in artifacts if a.key == "download-summary").data
    return {r["metric"]: r["value"] for r in (json.loads(summary) if isinstance(summary, str) else summary)}


def stop_within_a_hang_guard(svc: BridgeService) -> None:
    import threading
    stopping = threading.Thread(target=svc.stop, daemon=True)
    stopping.start()
    stopping.join(60)  # the bound itself (5 s) is the CLI's test; here: it returns, whatever the API does
    assert not stopping.is_alive(), "stop() hung"


def test_records_wait_in_the_output_while_the_api_is_down_and_the_next_start_sends_them(prefect_api, feishu,
                                                                                        tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from tests.conftest import free_port

    output = tmp_path / "dl"
    spool = output / ".oss-records"
    cells = cells_of(feishu, "app", "tbl", [("k1.txt", content("k1"), ""), ("k2.txt", content("k2"), "")])
    feishu.deny_file(cells[1]["token"])
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):  # nothing listens there
        svc = BridgeService(BridgeSettings(port=0, output=output, retry_backoff=0.01,
                                           personal_base_token=GOOD_TOKEN)).start()
    try:
        plugin = PublishedPlugin(svc.port, feishu)
        assert run(plugin.download_url_mode(cells, zip_name="kept", zip_after=False)) == "complete"
        records = wait_until(lambda: list(spool.glob("*.json")))
    finally:
        stop_within_a_hang_guard(svc)
    assert [p.name for p in spool.glob("*.json")] == [records[0].name]  # not sent, not lost
    text = records[0].read_text(encoding="utf-8")
    record = json.loads(text)
    assert (record["job_name"], record["listed"], record["downloaded"], record["failed"]) == ("kept", 2, 1, 1)
    assert record["bytes"] == 5000 and record["failed_csv"] and len(record["first_rows"]) == 1
    assert record["started"] <= record["ended"] and not record["incomplete"]
    assert GOOD_TOKEN not in text
    assert not any(p.name.endswith((".tmp", ".bad", ".failed")) for p in spool.iterdir())

    # The next service on this output, with the API up: the record becomes the job's flow run, then goes.
    svc = BridgeService(BridgeSettings(port=0, output=output, retry_backoff=0.01, personal_base_token=GOOD_TOKEN))
    try:
        svc.start()
        wait_until(lambda: not list(spool.glob("*.json")), timeout=60)
    finally:
        stop_within_a_hang_guard(svc)
    done = _plugin_job_runs("kept")
    assert len(done) == 1, done
    assert GOOD_TOKEN not in json.dumps(done[0].parameters)
    assert done[0].parameters["job_key"] == record["job_key"] and done[0].parameters["total"] == 2
    rows = _summary_rows(done[0].id)
    assert (rows["listed"], rows["downloaded"], rows["failed"], rows["bytes"]) == ("2", "1", "1", "5000")


def test_a_job_loop_that_fails_in_its_thread_hands_the_failure_to_the_service():
    """The plugin job's run loop runs in a thread of its own: what it raises reaches the service's loop (the
    job then ends with one line and an error ack), never a thread that dies unseen."""
    from bridge.service import _in_thread

    async def scenario():
        with pytest.raises(ZeroDivisionError):
            await _in_thread(lambda: 1 / 0)
        return await _in_thread(lambda: "done")
    assert run(scenario()) == "done"
