"""Real networks, end to end: a forward proxy that is the only route to stores named under the reserved .test
domain (infra/proxy.py: it maps those names to loopback and refuses every other one, so no request can leave the
machine), SeaweedFS with access keys (every SigV4 signature checked) over HTTP and HTTPS with a CA this test makes,
the OSS-protocol server virtual-hosted with its V1/V4/STS checks, the fake Feishu API, a clock that is off, and
IPv6 loopback. Runs are on the core (--no-prefect) except where Prefect is the subject."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.seaweed import ACCESS_KEY, SECRET_KEY
from infra import oss_server
from infra.feishu_server import GOOD_TOKEN, FeishuServer
from infra.proxy import ForwardProxy
from tests.conftest import ROOT, drain_prefect_workers, has_ipv6_loopback, need_program
from tests.stores import BIG_KEY, KeyedSeaweed, make_ca, s3_client, seed_awkward

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "OSSDL_PROXY", "AWS_CA_BUNDLE",
                   "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
S3_KEYS = dict(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
SMALL = {"tls/tiny.bin": b"t" * 1024, "tls/medium.bin": bytes(range(256)) * 1200}  # curl; aiohttp (> 256 KiB)
OSS_HOST = "oss-cn-hangzhou.aliyuncs.test"


def clean_env(**env) -> dict:
    """This process's environment without any proxy or certificate setting, plus `env`."""
    names = {n for v in PROXY_VARIABLES for n in (v, v.upper())}
    return {**{k: v for k, v in os.environ.items() if k not in names}, **env}


def download(*args: str, timeout: float = 240, prefix_command: tuple = (), **env) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix_command, sys.executable, "-m", "flows.download", "--no-prefect", *args], cwd=ROOT,
                          env=clean_env(**env), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a refused run (exit 2), never a traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".oss") for part in p.relative_to(folder).parts)}


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture(scope="module")
def weed(tmp_path_factory, ca):
    """SeaweedFS with keys, HTTP and HTTPS at once, also on ::1; bucket `awkward` (awkward keys, two listing pages,
    a 40 MiB object) and bucket `tls` (one object for curl, one for aiohttp)."""
    with KeyedSeaweed(tmp_path_factory.mktemp("weed"), ca, ipv6=has_ipv6_loopback()) as server:
        server.objects = seed_awkward(server.endpoint, "awkward")
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket="tls")
        for key, body in SMALL.items():
            client.put_object(Bucket="tls", Key=key, Body=body)
        yield server


@pytest.fixture
def proxy():
    with ForwardProxy() as server:
        yield server


# -- proxies ----------------------------------------------------------------------------------------------------
def test_s3_through_a_proxy_that_is_the_only_route_and_no_proxy_bypasses_it(weed, proxy, tmp_path):
    """Listing pages (http.client), small GETs (curl), whole and ranged GETs (aiohttp): all through the proxy to a
    name only it resolves, every signature checked by SeaweedFS over that name, the bytes identical."""
    endpoint = f"http://s3.example.test:{weed.port}"
    out = tmp_path / "out"
    done = download("--endpoint", endpoint, "--bucket", "awkward", "--output", str(out), "--concurrency", "16",
                    HTTP_PROXY=proxy.url, **S3_KEYS)
    assert done.returncode == 0, done.stderr
    assert files_under(out) == weed.objects
    seen = proxy.requests
    assert {r.host for r in seen} == {"s3.example.test"} and all(r.status is None for r in seen)
    gets = [r.path for r in seen if r.method == "GET"]
    assert sum(p.startswith("/awkward?") for p in gets) >= 3             # the check and both listing pages
    assert sum(p.startswith("/awkward/big/") for p in gets) >= 5         # 40 MiB in 8 MiB ranged parts
    assert sum(p.startswith("/awkward/many/") for p in gets) == 1100

    proxy.clear()
    no_route = download("--endpoint", endpoint, "--bucket", "awkward", "--output", str(tmp_path / "x"), **S3_KEYS)
    assert one_line(no_route).startswith(f"error: cannot reach endpoint {endpoint}: ")
    bypassed = download("--endpoint", endpoint, "--bucket", "awkward", "--output", str(tmp_path / "x"),
                        HTTP_PROXY=proxy.url, NO_PROXY=".example.test", **S3_KEYS)
    assert one_line(bypassed).startswith(f"error: cannot reach endpoint {endpoint}: ")
    direct = download("--endpoint", weed.endpoint, "--bucket", "tls", "--output", str(tmp_path / "direct"),
                      HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.0/8", **S3_KEYS)
    assert direct.returncode == 0 and files_under(tmp_path / "direct") == SMALL
    assert proxy.requests == []  # NO_PROXY: not one request went through it
    through = download("--endpoint", weed.endpoint, "--bucket", "tls", "--output", str(tmp_path / "through"),
                       HTTP_PROXY=proxy.url, **S3_KEYS)
    assert through.returncode == 0 and proxy.hosts() == {"127.0.0.1"}  # loopback is not special unless listed


def test_https_through_the_proxy_with_connect_and_a_private_ca(weed, ca, proxy, tmp_path):
    endpoint = f"https://s3.example.test:{weed.https_port}"
    out = tmp_path / "out"
    done = download("--endpoint", endpoint, "--bucket", "awkward", "--prefix", "big/", "--output", str(out),
                    "--ca-bundle", str(ca.cert_path), HTTPS_PROXY=proxy.url, **S3_KEYS)
    assert done.returncode == 0, done.stderr
    assert (out / "forty-mib.bin").read_bytes() == weed.objects[BIG_KEY]
    tls = download("--endpoint", endpoint, "--bucket", "tls", "--output", str(tmp_path / "tls"), "--ca-bundle",
                   str(ca.cert_path), HTTPS_PROXY=proxy.url, **S3_KEYS)
    assert tls.returncode == 0 and files_under(tmp_path / "tls") == SMALL
    assert {(r.method, r.host, r.port) for r in proxy.requests} == {("CONNECT", "s3.example.test", weed.https_port)}


def test_proxy_credentials_are_used_and_never_shown(weed, tmp_path):
    user, password = "al@ice", "pa:ss w0rd"
    with ForwardProxy(credentials=(user, password)) as proxy:
        endpoint = f"http://s3.example.test:{weed.port}"
        args = ("--endpoint", endpoint, "--bucket", "tls", "--output", str(tmp_path / "out"))
        done = download(*args, "--proxy", proxy.url_with(user, password), **S3_KEYS)
        assert done.returncode == 0, done.stderr
        assert files_under(tmp_path / "out") == SMALL
        assert proxy.requests and all(r.authorized for r in proxy.requests)
        wrong = download(*args, "--proxy", proxy.url_with(user, "wrong-secret"), **S3_KEYS)
        line = one_line(wrong)
        assert "407 Proxy Authentication Required" in line and f"http://{user}@127.0.0.1:{proxy.port}" in line
        assert "wrong-secret" not in wrong.stdout + wrong.stderr
        https = download("--endpoint", f"https://s3.example.test:{weed.https_port}", "--bucket", "tls", "--output",
                         str(tmp_path / "x"), "--no-verify-ssl", "--proxy", proxy.url_with(user, "wrong-secret"),
                         **S3_KEYS)  # refused at CONNECT
        assert "407" in one_line(https) and "wrong-secret" not in https.stdout + https.stderr
        port = proxy.port
    gone = download(*args, "--proxy", f"http://{user.replace('@', '%40')}:{password}@127.0.0.1:{port}", **S3_KEYS)
    assert one_line(gone) == (f"error: cannot reach endpoint {endpoint}: cannot connect to the proxy"
                              f" http://{user}@127.0.0.1:{port}: Connection refused")
    assert password not in gone.stdout + gone.stderr


@pytest.mark.parametrize("variable, value, says", [
    ("HTTPS_PROXY", "socks5://user:secret@127.0.0.1:1080", "error: HTTPS_PROXY: socks proxies are not supported"),
    ("OSSDL_PROXY", "https://127.0.0.1:3128", "error: OSSDL_PROXY: https proxies are not supported"),
])
def test_proxies_the_product_cannot_use_are_refused_in_one_line(weed, tmp_path, variable, value, says):
    refused = download("--endpoint", f"https://s3.example.test:{weed.https_port}", "--bucket", "tls", "--output",
                       str(tmp_path / "out"), **{variable: value}, **S3_KEYS)
    assert one_line(refused).startswith(says) and "secret" not in refused.stderr
    assert not (tmp_path / "out").exists()


def test_a_proxy_lost_mid_run_fails_objects_as_retryable_and_the_rerun_resumes(weed, tmp_path):
    out = tmp_path / "out"
    args = ("--endpoint", f"http://s3.example.test:{weed.port}", "--bucket", "awkward", "--prefix", "many/",
            "--output", str(out), "--concurrency", "4", "--max-attempts", "2", "--retry-backoff", "0.05")
    with ForwardProxy() as proxy:
        command = [sys.executable, "-m", "flows.download", "--no-prefect", *args]
        run = subprocess.Popen(command, cwd=ROOT, env=clean_env(HTTP_PROXY=proxy.url, **S3_KEYS),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proxy.count(method="GET") < 200 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.kill()
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stdout + stderr
    with open(out / ".oss-failed.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["retry_count"] == "2" for r in rows)  # retried: a connection failure, like any other
    assert all("connect" in r["last_error"] or "reset" in r["last_error"] for r in rows), rows[:3]
    fetched = set(files_under(out))
    assert 0 < len(fetched) < 1100
    with ForwardProxy() as proxy:
        resumed = download(*args, HTTP_PROXY=proxy.url, **S3_KEYS)
        assert resumed.returncode == 0, resumed.stderr
        assert proxy.count(method="GET") - 3 == 1100 - len(fetched)  # check, 2 pages + what was missing, once
    assert files_under(out) == {k[5:]: v for k, v in weed.objects.items() if k.startswith("many/")}


# -- OSS by its real endpoint name: virtual-hosted, through the proxy, every signature checked ------------------
@pytest.fixture(scope="module")
def named_oss():
    with oss_server.OssServer(endpoint_host=OSS_HOST) as server:
        server.create_bucket("named-bucket")
        server.objects = {"中文/文件 1.jpg": b"z" * 3000, "sp ace/plus+sign.jpg": b"p" * 300_000,
                          "big/part.bin": os.urandom(17 << 20)}
        for key, body in server.objects.items():
            server.put("named-bucket", key, body)
        yield server


@pytest.mark.parametrize("signature", ["v1", "v1-sts", "v4"])
def test_oss_by_its_endpoint_name_virtual_hosted_through_the_proxy(named_oss, proxy, tmp_path, signature):
    env = dict(HTTP_PROXY=proxy.url, OSS_ACCESS_KEY_ID=oss_server.ACCESS_KEY,
               OSS_ACCESS_KEY_SECRET=oss_server.SECRET_KEY)
    extra = ["--region", "cn-hangzhou"] if signature == "v4" else []
    if signature == "v1-sts":
        key_id, secret, token = "STS.net-" + uuid.uuid4().hex[:8], uuid.uuid4().hex, "tok/+=" + uuid.uuid4().hex
        named_oss.add_sts(key_id, secret, token)
        env.update(OSS_ACCESS_KEY_ID=key_id, OSS_ACCESS_KEY_SECRET=secret, OSS_SESSION_TOKEN=token)
    out = tmp_path / "out"
    done = download("--backend", "oss", "--endpoint", f"http://{OSS_HOST}:{named_oss.port}", "--bucket",
                    "named-bucket", "--output", str(out), *extra, **env)
    assert done.returncode == 0, done.stderr
    assert files_under(out) == named_oss.objects
    assert proxy.hosts() == {f"named-bucket.{OSS_HOST}"} and all(r.status is None for r in proxy.requests)
    assert sum((r.path or "").startswith("/big/part.bin") for r in proxy.requests) >= 3  # ranged parts


# -- certificates -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory, ca):
    """SSL_CERT_DIR's form: the CA under its subject hash (openssl rehash)."""
    need_program("openssl", "openssl")
    folder = tmp_path_factory.mktemp("certs")
    shutil.copy(ca.cert_path, folder / "test-ca.pem")
    subprocess.run(["openssl", "rehash", str(folder)], check=True)
    return folder


@pytest.mark.parametrize("case", ["flag", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
                                  "SSL_CERT_DIR", "flag over AWS_CA_BUNDLE", "AWS_CA_BUNDLE over REQUESTS_CA_BUNDLE",
                                  "none", "unknown CA", "no-verify-ssl", "missing file"])
def test_each_certificate_setting_as_the_tools_read_it(weed, ca, other_ca, ca_dir, tmp_path, case):
    """Every setting reaches the listing (http.client), the small GET (curl) and the medium one (aiohttp)."""
    good, bad = str(ca.cert_path), str(other_ca.cert_path)
    flags, env = {
        "flag": (["--ca-bundle", good], {}),
        "AWS_CA_BUNDLE": ([], {"AWS_CA_BUNDLE": good}),
        "REQUESTS_CA_BUNDLE": ([], {"REQUESTS_CA_BUNDLE": good}),
        "CURL_CA_BUNDLE": ([], {"CURL_CA_BUNDLE": good}),
        "SSL_CERT_FILE": ([], {"SSL_CERT_FILE": good}),
        "SSL_CERT_DIR": ([], {"SSL_CERT_DIR": str(ca_dir), "SSL_CERT_FILE": "/nonexistent"}),
        "flag over AWS_CA_BUNDLE": (["--ca-bundle", good], {"AWS_CA_BUNDLE": bad}),
        "AWS_CA_BUNDLE over REQUESTS_CA_BUNDLE": ([], {"AWS_CA_BUNDLE": bad, "REQUESTS_CA_BUNDLE": good}),
        "none": ([], {}),
        "unknown CA": (["--ca-bundle", bad], {}),
        "no-verify-ssl": (["--no-verify-ssl"], {}),
        "missing file": (["--ca-bundle", str(tmp_path / "nowhere.pem")], {}),
    }[case]
    out = tmp_path / "out"
    result = download("--endpoint", f"https://localhost:{weed.https_port}", "--bucket", "tls", "--output", str(out),
                      *flags, **env, **S3_KEYS)
    if case in ("none", "unknown CA", "AWS_CA_BUNDLE over REQUESTS_CA_BUNDLE"):
        line = one_line(result)
        assert line.startswith(f"error: cannot reach endpoint https://localhost:{weed.https_port}: ")
        assert "TLS error: certificate verify failed: " in line and not out.exists()
    elif case == "missing file":
        assert one_line(result) == f"error: --ca-bundle: no such certificate file: {tmp_path / 'nowhere.pem'}"
    else:
        assert result.returncode == 0, result.stderr
        assert files_under(out) == SMALL
        warnings = [line for line in result.stderr.splitlines() if "not checked" in line]
        assert warnings == (["warning: --no-verify-ssl: the store's TLS certificates are not checked: anyone on"
                             " the network path can read and change what is downloaded"]
                            if case == "no-verify-ssl" else [])


def test_curl_and_aiohttp_refuse_an_unknown_ca_alike(weed, ca, other_ca, tmp_path):
    """The listing refuses first in a run; here each GET path meets the server on its own."""
    from core.engine import Engine
    from core.errors import as_download_error
    from core.network import TLS, Network, Proxies
    from core.sources.s3 import S3Source
    from core.sources import StoreConfig
    from core.workarea import Output
    config = StoreConfig(bucket="tls", endpoint=f"https://localhost:{weed.https_port}", ca_bundle=str(ca.cert_path),
                         credentials={"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY})
    source = S3Source(config)
    objects = {o.key: o for o in source.list_page(None).objects}
    for cafile, works in ((str(ca.cert_path), True), (str(other_ca.cert_path), False)):
        (tmp_path / str(works)).mkdir()
        with Engine(2, network=Network(Proxies(), TLS(cafile))) as engine, Output(tmp_path / str(works)) as out:
            for key, obj in objects.items():
                try:
                    engine.run(engine.fetch(source.signer(obj), out, key, obj.size, obj.etag))
                    error = None
                except Exception as exc:  # noqa: BLE001
                    error = as_download_error(exc)
                if works:
                    assert error is None
                else:
                    assert str(error).startswith("TLS error: certificate verify failed: "), (key, error)
                    assert not error.retryable
        if works:
            assert engine._curl and engine._curl.requests == 1  # one of the two went through curl


# -- addressing, the clock ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_endpoints_for_s3_and_oss(weed, tmp_path):
    done = download("--endpoint", weed.endpoint6, "--bucket", "tls", "--output", str(tmp_path / "s3"), **S3_KEYS)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "s3") == SMALL
    with oss_server.OssServer(host="::1") as oss:
        oss.create_bucket("v6-bucket")
        oss.put("v6-bucket", "a/b c.txt", b"over ipv6")
        done = download("--backend", "oss", "--endpoint", oss.endpoint, "--bucket", "v6-bucket", "--output",
                        str(tmp_path / "oss"), OSS_ACCESS_KEY_ID=oss_server.ACCESS_KEY,
                        OSS_ACCESS_KEY_SECRET=oss_server.SECRET_KEY)
        assert oss.endpoint.startswith("http://[::1]:") and done.returncode == 0, done.stderr
        assert files_under(tmp_path / "oss") == {"a/b c.txt": b"over ipv6"}


@pytest.mark.system("faketime", "faketime")
def test_a_local_clock_hours_behind_is_named_in_one_line(weed, tmp_path):
    """faketime puts this machine's clock 2 h back for the command: SeaweedFS finds every presigned URL expired."""
    late = download("--endpoint", weed.endpoint, "--bucket", "tls", "--output", str(tmp_path / "out"),
                    prefix_command=("faketime", "-f", "-2h"), **S3_KEYS)
    assert one_line(late).startswith("error: the local clock is off: 2 h behind the store's (its Date: ")
    assert "signed requests arrive expired (AccessDenied)" in late.stderr and not (tmp_path / "out").exists()


def test_an_oss_store_whose_clock_is_hours_ahead_says_so(tmp_path):
    with oss_server.OssServer(clock_offset=3 * 3600 + 600) as oss:
        oss.create_bucket("clock-bucket")
        oss.put("clock-bucket", "k", b"x")
        late = download("--backend", "oss", "--endpoint", oss.endpoint, "--bucket", "clock-bucket", "--output",
                        str(tmp_path / "out"), OSS_ACCESS_KEY_ID=oss_server.ACCESS_KEY,
                        OSS_ACCESS_KEY_SECRET=oss_server.SECRET_KEY)
    assert one_line(late).startswith("error: the local clock is off: 3 h 10 min behind the store's")


# -- the Feishu API, the plugin service, credential lookups, Prefect ------------------------------------------------
def test_feishu_api_and_its_links_through_the_proxy(proxy, tmp_path):
    with FeishuServer(host_name="open.feishu.test", rate_per_second=0) as fs:
        fs.add_table("app", "tbl", [{"field_id": "fAtt", "field_name": "附件", "type": 17}])
        cells = [fs.add_file(f"file {i}".encode() * 100, f"f{i}.bin") for i in range(3)]
        fs.add_record("app", "tbl", "rec1", {"附件": cells})
        done = subprocess.run([sys.executable, "-m", "flows.feishu", "--no-prefect", "--app-token", "app",
                               "--table-id", "tbl", "--api-base-url", fs.base_url, "--output", str(tmp_path)],
                              cwd=ROOT, env=clean_env(PERSONAL_BASE_TOKEN=GOOD_TOKEN, HTTP_PROXY=proxy.url),
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert files_under(tmp_path / "tbl") == {f"f{i}.bin": f"file {i}".encode() * 100 for i in range(3)}
        paths = [r.path for r in proxy.requests]
        assert proxy.hosts() == {"open.feishu.test"}
        assert any(p.startswith("/open-apis/bitable/") for p in paths) and sum(p.startswith("/download/") for p in
                                                                                paths) == 3
        unreachable = subprocess.run(
            [sys.executable, "-m", "flows.feishu", "--no-prefect", "--app-token", "app", "--table-id", "tbl",
             "--api-base-url", fs.base_url, "--output", str(tmp_path / "x")], cwd=ROOT,
            env=clean_env(PERSONAL_BASE_TOKEN=GOOD_TOKEN), capture_output=True, text=True, timeout=120)
        assert one_line(unreachable).startswith(f"error: cannot reach the Feishu API at {fs.base_url}: ")


def test_the_plugin_service_downloads_through_its_proxy_setting(proxy, tmp_path):
    import asyncio

    from bridge.service import BridgeService, BridgeSettings
    from tests.plugin_client import PublishedPlugin, cells_of
    with FeishuServer(host_name="open.feishu.test", rate_per_second=10) as fs:
        fs.add_table("app", "tbl", [{"field_id": "fAtt", "field_name": "附件", "type": 17}])
        cells = cells_of(fs, "app", "tbl", [(f"t{i}.bin", f"token {i}".encode() * 50, "附件") for i in range(4)])
        service = BridgeService(BridgeSettings(port=0, output=tmp_path, personal_base_token=GOOD_TOKEN,
                                               feishu_base_url=fs.base_url, proxy=proxy.url)).start()
        try:
            asyncio.run(PublishedPlugin(service.port, fs).download_token_mode(cells, "app", "tbl", zip_name="job"))
            deadline = time.monotonic() + 60
            while not (service.jobs and service.jobs[-1].finished) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            service.stop()
    assert files_under(tmp_path / "job") == {f"附件/t{i}.bin": f"token {i}".encode() * 50 for i in range(4)}
    assert proxy.hosts() == {"open.feishu.test"} and sum(r.path.startswith("/download/") for r in proxy.requests) == 4


def test_an_assumed_roles_credential_lookup_goes_through_the_proxy(s3, proxy, tmp_path):
    """--profile with a role to assume: botocore's STS call reaches a name only the proxy knows (moto's STS)."""
    host = "127.0.0.1"
    port = int(s3.endpoint.rsplit(":", 1)[1])
    (tmp_path / "config").write_text("[profile assumer]\nrole_arn = arn:aws:iam::123456789012:role/reader\n"
                                     "source_profile = base\nregion = us-east-1\n")
    (tmp_path / "credentials").write_text("[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base\n")
    client = s3.client()
    client.create_bucket(Bucket="assumed")
    client.put_object(Bucket="assumed", Key="k.txt", Body=b"assumed")
    env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-m", "flows.download", "--no-prefect", "--endpoint",
                           f"http://{host}:{port}", "--bucket", "assumed", "--profile", "assumer", "--output",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "HTTP_PROXY": proxy.url, "NO_PROXY": host,
                               "AWS_CONFIG_FILE": str(tmp_path / "config"),
                               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
                               "AWS_ENDPOINT_URL_STS": f"http://sts.example.test:{port}"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "k.txt").read_bytes() == b"assumed"
    assert {(r.method, r.host) for r in proxy.requests} == {("POST", "sts.example.test")}


def test_a_flow_run_takes_its_proxy_from_a_secret_block_never_from_parameters(prefect_api, weed, tmp_path):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.download import download_objects
    from flows.params import DownloadParams
    password = "block-" + uuid.uuid4().hex
    with ForwardProxy(credentials=("ops", password)) as proxy:
        Secret(value=proxy.url_with("ops", password)).save("corp-proxy", overwrite=True)
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower() in PROXY_VARIABLES}
        os.environ.update(S3_KEYS)
        try:
            summary = download_objects(DownloadParams(
                endpoint=f"http://s3.example.test:{weed.port}", bucket="tls", output=str(tmp_path / "out"),
                proxy_block="corp-proxy"))
        finally:
            os.environ.update(saved)
            from infra.s3_server import ACCESS_KEY as MOTO_KEY, SECRET_KEY as MOTO_SECRET
            os.environ.update(AWS_ACCESS_KEY_ID=MOTO_KEY, AWS_SECRET_ACCESS_KEY=MOTO_SECRET)
        assert summary.downloaded == 2 and proxy.requests and all(r.authorized for r in proxy.requests)
    drain_prefect_workers()  # the run's logs reach the API
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=50)
                if r.parameters.get("params", {}).get("output") == str(tmp_path / "out")]
        assert len(runs) == 1 and runs[0].parameters["params"]["proxy_block"] == "corp-proxy"
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
    assert logs and password not in str(runs[0].parameters) + " ".join(log.message for log in logs)


def test_the_flow_path_keeps_proxy_passwords_out_of_parameters_and_logs_no_verify(prefect_cli, weed, tmp_path):
    """--proxy on the default path (a flow run): the proxy reaches the flow's requests through this process's
    environment, never its parameters; --no-verify-ssl warns once on stderr and once in the flow run's log."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    password = "flag-" + uuid.uuid4().hex
    out = tmp_path / "out"
    with ForwardProxy(credentials=("ops", password)) as proxy:
        done = prefect_cli(["--endpoint", f"https://s3.example.test:{weed.https_port}", "--bucket", "tls",
                            "--output", str(out), "--no-verify-ssl", "--proxy", proxy.url_with("ops", password)],
                           **{k: "" for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}, **S3_KEYS)
        assert done.returncode == 0, done.stderr
        assert proxy.requests and all(r.authorized and r.host == "s3.example.test" for r in proxy.requests)
    assert files_under(out) == SMALL and password not in done.stdout + done.stderr
    assert done.stderr.count("--no-verify-ssl: the store's TLS certificates are not checked") == 1
    with get_client(sync_client=True) as client:
        run = next(r for r in client.read_flow_runs(limit=50)
                   if r.parameters.get("params", {}).get("output") == str(out))
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
    assert password not in str(run.parameters) and "proxy" not in run.parameters["params"]
    assert sum("--no-verify-ssl: the store's TLS certificates are not checked" in m for m in logs) == 1
    assert not any(password in m for m in logs)


def test_the_failure_csv_goes_to_result_storage_through_the_proxy(prefect_api, s3, proxy, tmp_path):
    """The CSV's upload (prefect-aws, boto3) takes the product's proxy reading like every other request."""
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    from core.network import Proxies
    from infra.s3_server import ACCESS_KEY as MOTO_KEY, SECRET_KEY as MOTO_SECRET
    from tasks.artifacts import failed_csv_link
    port = s3.endpoint.rsplit(":", 1)[1]
    s3.client().create_bucket(Bucket="reports-via-proxy")
    S3Bucket(bucket_name="reports-via-proxy", credentials=AwsCredentials(
        aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_SECRET, region_name="us-east-1",
        # moto reads a bucket from any host name's first label: its IP address, through the proxy all the same
        aws_client_parameters=AwsClientParameters(endpoint_url=f"http://127.0.0.1:{port}",
                                                  config={"s3": {"addressing_style": "path"}}))).save(
        "reports-via-proxy", overwrite=True)
    csv_file = tmp_path / ".oss-failed.csv"
    csv_file.write_text("key,last_error,retry_count\nk,HTTP 500,3\n")
    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: "s3-bucket/reports-via-proxy"}):
        link, where = failed_csv_link(csv_file, Proxies.from_environment({"HTTP_PROXY": proxy.url}))
    assert where.startswith("in s3://reports-via-proxy/download-failures/") and link.startswith(
        f"http://127.0.0.1:{port}/")
    assert ("PUT", "127.0.0.1") in {(r.method, r.host) for r in proxy.requests}
    stored = s3.client().get_object(Bucket="reports-via-proxy", Key=where.split("reports-via-proxy/")[1].split()[0])
    assert stored["Body"].read() == csv_file.read_bytes()


def test_the_temporary_prefect_server_is_reached_directly_when_a_proxy_is_set(weed, proxy, tmp_path):
    """The command's own loopback server: Prefect's client (which reads HTTP_PROXY too) goes to it directly,
    the store's requests through the proxy."""
    env = {k: v for k, v in clean_env(HTTP_PROXY=proxy.url, PREFECT_HOME=str(tmp_path / "home"), **S3_KEYS).items()
           if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-m", "flows.download", "--endpoint", f"http://s3.example.test:{weed.port}",
                           "--bucket", "tls", "--output", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "starting a temporary Prefect server" in done.stderr and files_under(tmp_path / "out") == SMALL
    assert proxy.hosts() == {"s3.example.test"}
