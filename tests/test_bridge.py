"""The plugin's WebSocket protocol, played by a test client against the running service and a local
file server whose links expire."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bridge.service import BridgeService, BridgeSettings


def content(name: str, size: int = 5000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


class FileServer:
    """Serves /f/<name>?exp=<unix time>; expired links get 403 like Feishu's; Range supported."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.hits: dict[str, int] = {}
        self.runner = None

    async def handle(self, request: web.Request):
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if float(request.query.get("exp", "0")) < time.time():
            return web.Response(status=403, text='{"code":1061045,"msg":"link expired"}')
        if self.delay:
            await asyncio.sleep(self.delay)
        data = content(name)
        if "Range" in request.headers:
            start = int(request.headers["Range"].split("=")[1].split("-")[0])
            return web.Response(status=206, body=data[start:],
                                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        return web.Response(body=data)

    async def start(self):
        app = web.Application()
        app.router.add_get("/f/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def url(self, name: str, ttl: float = 600) -> str:
        return f"{self.base}/f/{name}?exp={time.time() + ttl}"


@pytest.fixture
def service(tmp_path):
    svc = BridgeService(BridgeSettings(port=0, output=tmp_path / "downloads", retry_backoff=0.01)).start()
    yield svc
    svc.stop()


class Plugin:
    """Plays the Bitable plugin: sends messages, answers refresh requests, collects acks."""

    def __init__(self, ws, files: FileServer, refresh_error: set[int] = frozenset()):
        self.ws, self.files, self.refresh_error = ws, files, refresh_error
        self.acks: list[dict] = []
        self.names: dict[int, str] = {}

    async def send(self, type_: str, data) -> None:
        await self.ws.send(json.dumps({"type": type_, "data": data}))

    async def next_ack(self) -> dict:
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            assert msg["type"] == "feishu_attachment_ack"
            ack = msg["data"]
            self.acks.append(ack)
            if ack["status"] == "refresh":
                order = ack["order"]
                if order in self.refresh_error:
                    await self.send("feishu_attachment_refresh", {"order": order, "error": "no permission"})
                else:
                    await self.send("feishu_attachment_refresh",
                                    {"order": order, "downloadUrl": self.files.url(self.names[order])})
                continue
            return ack

    async def until(self, stage: str) -> dict:
        while True:
            ack = await self.next_ack()
            if ack.get("stage") == stage:
                return ack


def run(coro):
    return asyncio.run(coro)


def ws_url(service) -> str:
    return f"ws://127.0.0.1:{service.port}"


def test_url_mode_refresh_expired_links_traversal_and_duplicates(service, tmp_path):
    async def scenario():
        files = FileServer()
        await files.start()
        async with connect(ws_url(service)) as ws:
            plugin = Plugin(ws, files, refresh_error={5})
            await plugin.send("feishu_attachment_probe", {})
            info = await plugin.next_ack()
            assert info["stage"] == "server_info" and info["version"]

            await plugin.send("feishu_attachment_config", {"jobId": "j1", "jobName": "Q3 报告/../x", "total": 6,
                                                           "concurrent": 3, "downloadMode": "url"})
            accepted = await plugin.next_ack()
            assert accepted["status"] == "success" and accepted["stage"] == "server_info"
            plugin.names = {1: "a.pdf", 2: "b.png", 3: "c.txt", 4: "d.txt", 5: "e.txt", 6: "f.txt"}
            await plugin.send("feishu_attachment_link", {"files": [
                {"name": "a.pdf", "path": "合同/2024", "order": 1, "size": 5000, "token": "t1", "fieldId": "f",
                 "recordId": "r1", "downloadUrl": files.url("a.pdf")},
                {"name": "a.pdf", "path": "合同/2024", "order": 2, "size": 5000, "token": "t2", "fieldId": "f",
                 "recordId": "r2"},                                                    # no URL: asked for
                {"name": "../../evil.txt", "path": "../../..", "order": 3, "size": 5000, "token": "t3",
                 "fieldId": "f", "recordId": "r3", "downloadUrl": files.url("c.txt", ttl=-1)},  # expired link
            ]})
            await plugin.send("feishu_attachment_link", [
                {"name": "d.txt", "path": "", "order": 4, "token": "t4", "fieldId": "f", "recordId": "r4",
                 "downloadUrl": files.url("d.txt")},
                {"name": "e.txt", "order": 5, "token": "t5", "fieldId": "f", "recordId": "r5"}])
            await plugin.send("feishu_attachment_link", {"name": "f.txt", "order": 6, "token": "t6",
                                                         "fieldId": "f", "recordId": "r6",
                                                         "downloadUrl": files.url("f.txt")})
            await plugin.send("feishu_attachment_complete", {"jobId": "j1"})
            done = await plugin.until("job_complete")
            return plugin, done, files

    plugin, done, files = run(scenario())
    assert done["completed"] == 5 and done["failed"] == 1
    job = tmp_path / "downloads" / "Q3 报告_.._x"
    saved = {a["order"]: a["path"] for a in plugin.acks if a.get("stage") == "file" and a["status"] == "success"}
    assert saved == {1: "合同/2024/a.pdf", 2: "合同/2024/a_1.pdf", 3: "_.._evil.txt", 4: "d.txt", 6: "f.txt"}
    names = {1: "a.pdf", 2: "b.png", 3: "c.txt", 4: "d.txt", 6: "f.txt"}
    for order, rel in saved.items():
        assert (job / rel).read_bytes() == content(names[order])
    failed = [a for a in plugin.acks if a.get("stage") == "file" and a["status"] == "error"]
    assert [a["order"] for a in failed] == [5, 5]  # failed, then failed again in the retry with a fresh link
    assert "no permission" in failed[0]["message"]
    assert sorted(p.name for p in (tmp_path / "downloads").rglob("*") if p.is_file() and "evil" in p.name) == [
        "_.._evil.txt"]
    assert not (tmp_path / "evil.txt").exists()
    assert files.hits["c.txt"] == 2  # the expired link, then the refreshed one
    assert (job / ".oss-failed.csv").read_text().splitlines()[1].startswith("r5/f/t5,")


@pytest.mark.parametrize("messages, expected", [
    ([("feishu_attachment_link", {"name": "x", "order": 1})], "before any file"),
    ([("feishu_attachment_config", {"jobId": "j", "downloadMode": "ftp"})], "downloadMode"),
    ([("feishu_attachment_config", {"jobId": "j", "total": "lots"})], "must be numbers"),
    ([("feishu_attachment_config", {})], "jobId, jobName or zipName"),
    ([("feishu_attachment_config", {"jobId": "j", "downloadMode": "token", "appToken": "a", "tableId": "t"})],
     "personal base token"),
    ([("feishu_attachment_config", {"jobId": "j", "downloadMode": "token"})], "appToken and tableId"),
    ([("feishu_attachment_config", {"jobId": "j"}), ("feishu_attachment_link", {"order": 1})], "name is missing"),
    ([("feishu_attachment_config", {"jobId": "j"}), ("feishu_attachment_link", {"name": "x"})],
     "no downloadUrl and no order"),
    ([("feishu_attachment_config", {"jobId": "j"}), ("feishu_attachment_refresh", {"order": 9})],
     "no link was requested"),
    ([("something_else", {})], "unknown message type"),
])
def test_error_acks(service, messages, expected):
    async def scenario():
        async with connect(ws_url(service)) as ws:
            for type_, data in messages:
                await ws.send(json.dumps({"type": type_, "data": data}))
            while True:
                ack = json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
                if ack["status"] == "error":
                    return ack
    ack = run(scenario())
    assert expected in ack["message"]


def test_not_json_is_refused_with_an_ack(service):
    async def scenario():
        async with connect(ws_url(service)) as ws:
            await ws.send("hello")
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
    assert "not JSON" in run(scenario())["message"]


def test_job_finishes_after_the_browser_disconnects(service, tmp_path):
    async def scenario():
        files = FileServer(delay=0.3)
        await files.start()
        async with connect(ws_url(service)) as ws:
            plugin = Plugin(ws, files)
            await plugin.send("feishu_attachment_config", {"jobId": "gone", "total": 6, "concurrent": 2})
            await plugin.next_ack()
            await plugin.send("feishu_attachment_link", [
                {"name": f"n{i}.bin", "order": i, "downloadUrl": files.url(f"n{i}.bin")} for i in range(6)])
        deadline = time.monotonic() + 30
        folder = tmp_path / "downloads" / "gone"
        while time.monotonic() < deadline and len([p for p in folder.glob("n*.bin")]) < 6:
            await asyncio.sleep(0.1)
        await files.runner.cleanup()
        return folder
    folder = run(scenario())
    assert {p.name: p.read_bytes() for p in folder.glob("n*.bin")} == {
        f"n{i}.bin": content(f"n{i}.bin") for i in range(6)}


def test_hostile_origin_is_refused_and_feishu_origin_allowed(service):
    async def attempt(origin):
        async with connect(ws_url(service), origin=origin) as ws:
            await ws.send(json.dumps({"type": "feishu_attachment_probe", "data": {}}))
            return json.loads(await ws.recv())["data"]["stage"]
    with pytest.raises(InvalidStatus) as refused:
        run(attempt("https://evil.example.com"))
    assert refused.value.response.status_code == 403
    assert run(attempt("https://abc.feishu.cn")) == "server_info"


def test_cli_exits_2_when_the_port_is_taken(service):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "bridge", "--port", str(service.port)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_each_job_is_a_prefect_flow_run_with_its_summary(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName

    svc = BridgeService(BridgeSettings(port=0, output=tmp_path / "dl", retry_backoff=0.01)).start()
    try:
        async def scenario():
            files = FileServer()
            await files.start()
            async with connect(ws_url(svc)) as ws:
                plugin = Plugin(ws, files)
                await plugin.send("feishu_attachment_config", {"jobId": "rec", "total": 2})
                await plugin.next_ack()
                await plugin.send("feishu_attachment_link", [
                    {"name": "x.txt", "order": 1, "downloadUrl": files.url("x.txt")},
                    {"name": "y.txt", "order": 2, "downloadUrl": files.url("y.txt", ttl=-1)}])
                plugin.names = {2: "y.txt"}
                await plugin.send("feishu_attachment_complete", {"jobId": "rec"})
                return await plugin.until("job_complete")
        assert run(scenario())["completed"] == 2
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


def test_token_mode_fetches_through_the_bitable_api_and_zips(tmp_path):
    import zipfile

    from infra.feishu_server import GOOD_TOKEN, FeishuServer

    with FeishuServer(link_ttl=0.4) as fs:
        fs.add_table("app", "tbl", [{"field_id": "fAtt", "field_name": "附件", "type": 17}])
        cells = {f"t{i}.bin": fs.add_file(content(f"t{i}.bin"), f"t{i}.bin") for i in range(6)}
        for i, (name, cell) in enumerate(cells.items()):
            fs.add_record("app", "tbl", f"r{i}", {"附件": [cell]})
        fs.delete_file(cells["t5.bin"]["file_token"])
        for name in ("t0.bin", "t1.bin"):  # slow first files: the links fetched with theirs expire meanwhile
            fs.add_fault(cells[name]["file_token"], "delay", seconds=0.3)
        svc = BridgeService(BridgeSettings(port=0, output=tmp_path / "dl", retry_backoff=0.01,
                                           personal_base_token=GOOD_TOKEN, feishu_base_url=fs.base_url)).start()
        try:
            async def scenario():
                async with connect(ws_url(svc)) as ws:
                    plugin = Plugin(ws, None)
                    await plugin.send("feishu_attachment_config", {
                        "jobId": "tok", "zipName": "打包", "zipAfterDownload": True, "total": 6, "concurrent": 1,
                        "downloadMode": "token", "appToken": "app", "tableId": "tbl"})
                    await plugin.next_ack()
                    await plugin.send("feishu_attachment_link", {"files": [
                        {"name": name, "path": "附件", "order": i, "size": cell["size"], "token": cell["file_token"],
                         "fieldId": "fAtt", "recordId": f"r{i}"} for i, (name, cell) in enumerate(cells.items())]})
                    await plugin.send("feishu_attachment_complete", {"jobId": "tok"})
                    zipped = await plugin.until("zip")
                    return plugin, zipped, await plugin.until("job_complete")
            plugin, zipped, done = run(scenario())
        finally:
            svc.stop()
        assert not [a for a in plugin.acks if a["status"] == "refresh"]  # token mode never asks the browser
        assert fs.counters["expired_hits"] > 0                            # short-lived links were refreshed
        assert fs.auth_headers_seen and all(h == f"Bearer {GOOD_TOKEN}" for h in fs.auth_headers_seen)
    assert done["completed"] == 5 and done["failed"] == 1
    failed = [a for a in plugin.acks if a.get("stage") == "file" and a["status"] == "error"]
    assert failed and all(a["order"] == 5 and "deleted" in a["message"] for a in failed)
    folder = tmp_path / "dl" / "打包"
    on_disk = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
               if p.is_file() and not any(s.startswith(".oss") for s in p.relative_to(folder).parts)}
    assert on_disk == {f"附件/t{i}.bin": content(f"t{i}.bin") for i in range(5)}
    assert zipped["path"] == str(tmp_path / "dl" / "打包.zip")
    with zipfile.ZipFile(zipped["path"]) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {f"打包/{k}": v for k, v in on_disk.items()}
