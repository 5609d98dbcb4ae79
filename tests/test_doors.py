"""Every door runs the one run loop (core/run.py run_job): the command line on the core (and the executables,
which run that code), the flows (deployments, and the command line's default path), the plugin service. The
loop is the one caller of the download listing (core/listing.py pages, given its Batches' list_page); the test
records who lists, and with which batches."""
from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

import core.listing
from infra.feishu_server import GOOD_TOKEN, FeishuServer


@pytest.fixture
def listers(monkeypatch):
    seen: list[tuple[str, str]] = []
    real = core.listing.pages

    def pages(source, fetch):
        seen.append((sys._getframe(1).f_code.co_name, type(getattr(fetch, "__self__", None)).__name__))
        return real(source, fetch)
    monkeypatch.setattr(core.listing, "pages", pages)
    return seen


def test_the_command_line_on_the_core(listers, s3, bucket, tmp_path, monkeypatch):
    from flows.cli import main
    s3.client().put_object(Bucket=bucket, Key="d/a.txt", Body=b"a")
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = main(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "d/", "--output",
                     str(tmp_path), "--no-prefect"])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert code == 0 and (tmp_path / "a.txt").read_bytes() == b"a"
    assert listers == [("run_job", "LocalBatches")]


def test_the_flow(listers, prefect_api, s3, bucket, tmp_path):
    from flows.download import download_objects
    from flows.params import DownloadParams
    s3.client().put_object(Bucket=bucket, Key="d/a.txt", Body=b"a")
    summary = download_objects(DownloadParams(endpoint=s3.endpoint, bucket=bucket, prefix="d/", output=str(tmp_path)))
    assert summary.downloaded == 1 and listers == [("run_job", "PrefectBatches")]


def test_the_plugin_service(listers, tmp_path):
    from bridge.service import BridgeService, BridgeSettings
    from tests.plugin_client import PublishedPlugin, cells_of
    with FeishuServer(rate_per_second=10) as fs:
        fs.add_table("app", "tbl", [{"field_id": "fAtt", "field_name": "附件", "type": 17}])
        cells = cells_of(fs, "app", "tbl", [("a.bin", b"a", "附件")])
        service = BridgeService(BridgeSettings(port=0, output=tmp_path, personal_base_token=GOOD_TOKEN,
                                               feishu_base_url=fs.base_url)).start()
        try:
            asyncio.run(PublishedPlugin(service.port, fs).download_token_mode(cells, "app", "tbl", zip_name="job"))
            deadline = time.monotonic() + 60  # a hang guard
            while not (service.jobs and service.jobs[-1].finished) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            service.stop()
    assert (Path(tmp_path) / "job" / "附件" / "a.bin").read_bytes() == b"a"
    assert listers == [("run_job", "LocalBatches")]
