"""The fake Feishu Open API (infra/feishu_server.py), exercised with plain urllib/http.client."""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode, urlsplit

import pytest

from infra.feishu_server import GOOD_TOKEN, FeishuServer

APP, TABLE = "bascnTestApp", "tblTest"
FIELDS = [{"field_id": "fld1", "field_name": "附件", "type": 17},
          {"field_id": "fld2", "field_name": "名称", "type": 1},
          {"field_id": "fld3", "field_name": "状态", "type": 3}]
AUTH = {"Authorization": f"Bearer {GOOD_TOKEN}"}


def call(url: str, headers: dict | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    """GET url; return (status, headers, body) for success and HTTP errors alike."""
    req = urllib.request.Request(url, headers=AUTH if headers is None else headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def call_json(url: str, headers: dict | None = None) -> tuple[int, dict]:
    status, _, body = call(url, headers)
    return status, json.loads(body)


@pytest.fixture
def fs():
    with FeishuServer(rate_per_second=0) as server:   # unlimited unless a test says otherwise
        server.add_table(APP, TABLE, FIELDS)
        yield server


def api(fs: FeishuServer, path: str, **params) -> str:
    query = urlencode(params, doseq=True)
    return f"{fs.base_url}/open-apis{path}" + (f"?{query}" if query else "")


def records_url(fs, **params):
    return api(fs, f"/bitable/v1/apps/{APP}/tables/{TABLE}/records", **params)


def tmp_urls(fs, tokens: list[str]) -> dict[str, str]:
    status, body = call_json(api(fs, "/drive/v1/medias/batch_get_tmp_download_url", file_tokens=tokens))
    assert status == 200 and body["code"] == 0, body
    return {i["file_token"]: i["tmp_download_url"] for i in body["data"]["tmp_download_urls"]}


def test_records_paging_and_view_filter(fs):
    for i in range(5):
        fs.add_record(APP, TABLE, f"rec{i}", {"名称": f"row {i}", "状态": "ok"},
                      views=("vewA",) if i % 2 == 0 else ("vewB",))
    seen, token, pages = [], None, 0
    while True:
        params = {"page_size": 2} | ({"page_token": token} if token else {})
        status, body = call_json(records_url(fs, **params))
        assert status == 200 and body["code"] == 0, body
        data = body["data"]
        assert data["total"] == 5 and len(data["items"]) <= 2
        seen += [item["record_id"] for item in data["items"]]
        pages += 1
        if not data["has_more"]:
            assert "page_token" not in data
            break
        token = data["page_token"]
        assert isinstance(token, str) and token
    assert pages == 3 and seen == [f"rec{i}" for i in range(5)]
    assert call_json(records_url(fs))[1]["data"]["items"][1]["fields"] == {"名称": "row 1", "状态": "ok"}

    status, body = call_json(records_url(fs, view_id="vewA", page_size=500))
    assert [i["record_id"] for i in body["data"]["items"]] == ["rec0", "rec2", "rec4"]
    assert body["data"]["has_more"] is False and body["data"]["total"] == 3

    status, body = call_json(records_url(fs, page_size=501))
    assert status == 400 and body["code"] == 99992402
    status, body = call_json(api(fs, f"/bitable/v1/apps/nope/tables/{TABLE}/records"))
    assert status == 400 and body["code"] == 1254040
    status, body = call_json(api(fs, f"/bitable/v1/apps/{APP}/tables/nope/records"))
    assert status == 400 and body["code"] == 1254041


def test_fields_listing(fs):
    status, body = call_json(api(fs, f"/bitable/v1/apps/{APP}/tables/{TABLE}/fields"))
    assert status == 200 and body["code"] == 0
    assert body["data"]["items"] == FIELDS and body["data"]["has_more"] is False and body["data"]["total"] == 3
    status, body = call_json(api(fs, f"/bitable/v1/apps/{APP}/tables/{TABLE}/fields", page_size=2))
    assert [f["field_id"] for f in body["data"]["items"]] == ["fld1", "fld2"] and body["data"]["has_more"]
    status, body = call_json(api(fs, f"/bitable/v1/apps/{APP}/tables/{TABLE}/fields",
                                 page_size=2, page_token=body["data"]["page_token"]))
    assert [f["field_id"] for f in body["data"]["items"]] == ["fld3"] and not body["data"]["has_more"]


def test_bearer_missing_and_wrong(fs):
    url = records_url(fs)
    status, body = call_json(url, headers={})
    assert status == 400 and body["code"] == 99991661
    status, body = call_json(url, headers={"Authorization": "Bearer wrong-token"})
    assert status == 400 and body["code"] == 99991663
    status, body = call_json(url)
    assert status == 200 and body["code"] == 0
    assert fs.auth_headers_seen == ["Bearer wrong-token", f"Bearer {GOOD_TOKEN}"]
    # the media route is an Open API call too
    f = fs.add_file(b"abc", "a.txt")
    assert call_json(f["url"], headers={})[1]["code"] == 99991661


def test_tmp_urls_download_range_and_expiry(fs):
    a = fs.add_file(bytes(range(256)) * 40, "报告 v1.pdf", "application/pdf")
    b = fs.add_file(b"hello world", "b.txt", "text/plain")
    assert a["url"] == f"{fs.base_url}/open-apis/drive/v1/medias/{a['file_token']}/download"
    assert a["size"] == 10240 and a["type"] == "application/pdf" and a["file_token"].startswith("box")
    fs.add_record(APP, TABLE, "rec1", {"附件": [a, b]})

    status, body = call_json(a["tmp_url"])            # the cell's tmp_url works as-is
    assert status == 200 and body["data"]["tmp_download_urls"][0]["file_token"] == a["file_token"]
    urls = tmp_urls(fs, [a["file_token"], b["file_token"], "boxUnknown"])
    assert set(urls) == {a["file_token"], b["file_token"]}      # unknown tokens are omitted
    assert fs.counters["tmp_url_calls"] == 2

    status, headers, data = call(urls[a["file_token"]], headers={})   # no bearer on tmp links
    assert status == 200 and data == bytes(range(256)) * 40
    assert headers["Content-Type"] == "application/pdf" and headers["Content-Length"] == "10240"
    assert headers["Content-Disposition"] == f"attachment; filename*=UTF-8''{quote('报告 v1.pdf', safe='')}"
    status, headers, data = call(urls[b["file_token"]], headers={"Range": "bytes=6-"})
    assert status == 206 and data == b"world" and headers["Content-Range"] == "bytes 6-10/11"
    status, headers, data = call(b["url"], headers=AUTH | {"Range": "bytes=0-4"})
    assert status == 206 and data == b"hello" and headers["Content-Range"] == "bytes 0-4/11"
    assert headers["Content-Length"] == "5"
    status, _, data = call(b["url"] + "?extra=" + quote(json.dumps({"bitablePerm": {"tableId": TABLE}})))
    assert status == 200 and data == b"hello world"
    assert call(b["url"], headers=AUTH | {"Range": "bytes=50-"})[0] == 416

    tampered = urls[b["file_token"]].replace("sig=", "sig=0")
    assert call(tampered, headers={})[0] == 403

    fs.link_ttl = -1                                   # links that expired a second before they were made
    short = tmp_urls(fs, [b["file_token"]])[b["file_token"]]
    status, body = call_json(short, headers={})
    assert status == 400 and body == {"code": 1061045, "msg": "download url expired"}
    assert fs.counters["expired_hits"] == 1
    assert fs.counters["media_gets"] == 5                 # neither the tampered nor the expired link served


def test_too_many_tmp_tokens(fs):
    tokens = [fs.add_file(b"x", f"{i}.bin")["file_token"] for i in range(6)]
    assert len(tmp_urls(fs, tokens[:5])) == 5
    status, body = call_json(api(fs, "/drive/v1/medias/batch_get_tmp_download_url", file_tokens=tokens))
    assert status == 400 and body["code"] == 99992402


def test_deleted_and_denied_files(fs):
    gone = fs.add_file(b"gone", "gone.txt")
    secret = fs.add_file(b"secret", "secret.txt")
    urls = tmp_urls(fs, [gone["file_token"], secret["file_token"]])
    fs.delete_file(gone["file_token"])
    fs.deny_file(secret["file_token"])
    for url, hdrs in ((gone["url"], AUTH), (urls[gone["file_token"]], {})):
        status, body = call_json(url, headers=hdrs)
        assert status == 404 and body["code"] == 1061044
    for url, hdrs in ((secret["url"], AUTH), (urls[secret["file_token"]], {})):
        status, body = call_json(url, headers=hdrs)
        assert status == 403 and body["code"] == 1061004


def test_rate_limit(fs):
    fs.rate_per_second = 2
    results = [call(records_url(fs)) for _ in range(10)]
    limited = [r for r in results if r[0] == 429]
    assert limited and len(limited) < 10
    assert json.loads(limited[0][2])["code"] == 99991400
    assert limited[0][1]["x-ogw-ratelimit-reset"] == "1"
    assert fs.counters["rate_limited"] == len(limited)
    assert fs.counters["api_calls"] == 10
    f = fs.add_file(b"data", "d.bin")
    fs.add_record(APP, TABLE, "r", {"附件": [f]})
    assert 429 in [call(f["url"])[0] for _ in range(3)]   # drive calls share the base's bucket
    time.sleep(0.6)                                       # refills one token at 2/s
    assert call(f["url"])[0] == 200
    fs.rate_per_second = 0
    assert all(call(records_url(fs))[0] == 200 for _ in range(10))


def _raw_get(url: str, headers: dict) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_faults(fs):
    f = fs.add_file(b"0123456789" * 1000, "f.bin")
    tok = f["file_token"]

    fs.add_fault(tok, "status", times=1, status=503)
    status, body = call_json(f["url"])
    assert status == 503 and body["code"] != 0
    assert call(f["url"])[2] == b"0123456789" * 1000          # times=1: only once

    fs.add_fault(tok, "reset", times=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        _raw_get(f["url"], AUTH)

    fs.add_fault(tok, "truncate", times=1)
    with pytest.raises(http.client.IncompleteRead) as info:
        _raw_get(f["url"], AUTH)
    assert len(info.value.partial) == 5000

    # A delayed answer comes after the answer to a request sent later (the server serves others meanwhile).
    fs.add_fault(tok, "delay", times=1, seconds=1.0)
    tmp = tmp_urls(fs, [tok])[tok]
    answered = []
    with ThreadPoolExecutor(1) as pool:
        delayed = pool.submit(lambda: answered.append(("delayed", call(tmp, headers={}))))
        assert _wait_until(lambda: fs.media_in_flight == 1)
        answered.append(("later", call(tmp, headers={})))
        delayed.result()
    assert [name for name, _ in answered] == ["later", "delayed"]
    assert all(status == 200 and body == b"0123456789" * 1000 for _, (status, _, body) in answered)
    assert fs.counters["max_media_in_flight"] == 2

    assert fs.get_count(tok) == 6 and fs.counters["media_gets"] == 6
    with pytest.raises(ValueError):
        fs.add_fault(tok, "explode")


def _start_get(url: str, headers: dict) -> tuple[socket.socket, str, bytes]:
    """Send a GET on a raw socket; return it, the response head and the body bytes read so far."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    return sock, head.decode("latin-1"), body


def _read_until_quiet(sock: socket.socket, body: bytes, quiet: float, limit: int) -> bytes:
    sock.settimeout(quiet)
    try:
        while len(body) < limit and (chunk := sock.recv(65536)):
            body += chunk
    except TimeoutError:
        pass
    return body


def _wait_until(predicate, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_short_fault_is_a_clean_answer_with_too_few_bytes(fs):
    data = bytes(i % 251 for i in range(10_000))
    f = fs.add_file(data, "s.bin")
    fs.add_fault(f["file_token"], "short", times=1)
    status, headers, body = call(f["url"])
    assert status == 200 and headers["Content-Length"] == "5000" and body == data[:5000]
    fs.add_fault(f["file_token"], "short", fraction=0.2, times=1)
    status, headers, body = call(f["url"], headers=AUTH | {"Range": "bytes=100-199"})
    assert status == 206 and headers["Content-Range"] == "bytes 100-199/10000" and body == data[100:120]
    assert call(f["url"])[2] == data
    with pytest.raises(TypeError):
        fs.add_fault(f["file_token"], "short", code="X")


def test_trickle_fault_sends_a_few_bytes_at_a_time_and_stops_with_the_client(fs):
    data = bytes(i % 251 for i in range(10_000))
    f = fs.add_file(data, "t.bin")
    # 3 bytes every 0.5 s: the whole file would take half an hour.
    fs.add_fault(f["file_token"], "trickle", chunk=3, seconds=0.5, times=1)
    sock, head, body = _start_get(f["url"], AUTH)
    assert head.startswith("HTTP/1.1 200") and "Content-Length: 10000" in head
    body = _read_until_quiet(sock, body, 0.1, len(data))
    assert 0 < len(body) < 100 and data.startswith(body)
    status, _ = call_json(records_url(fs))          # the event loop serves others meanwhile
    assert status == 200
    sock.close()
    assert _wait_until(lambda: fs.media_in_flight == 0)     # not half an hour later

    fs.add_fault(f["file_token"], "trickle", chunk=4_000, seconds=0.01, times=1)
    status, headers, body = call(f["url"])
    assert status == 200 and body == data                    # a patient client gets it all
