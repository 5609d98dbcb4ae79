"""The product's one reading of proxy and certificate settings (core/network.py): table-driven, no network."""
from __future__ import annotations

import ssl
import urllib.request

import pycurl
import pytest

from core.errors import UsageError
from core.network import TLS, Network, Proxies, parse_proxy

P = "http://proxy.test:3128"


def proxy_of(env: dict, url: str, override=None, platform="linux") -> str | None:
    found = Proxies.from_environment(env, override, platform=platform).proxy_for(url)
    return found.address if found else None


@pytest.mark.parametrize("env, url, expected", [
    ({}, "https://s3.example.test/b", None),
    ({"HTTPS_PROXY": P}, "https://s3.example.test/b", P),
    ({"HTTPS_PROXY": P}, "http://s3.example.test/b", None),                    # per scheme
    ({"HTTP_PROXY": P}, "http://s3.example.test/b", P),
    ({"ALL_PROXY": P}, "http://s3.example.test/b", P),                         # all_proxy for both schemes
    ({"all_proxy": P, "HTTPS_PROXY": "http://other.test:1"}, "https://a.test/", "http://other.test:1"),
    ({"https_proxy": P, "HTTPS_PROXY": "http://upper.test:1"}, "https://a.test/", P),  # lower case wins
    ({"https_proxy": "", "HTTPS_PROXY": "http://upper.test:1"}, "https://a.test/", None),  # even when empty
    ({"HTTPS_PROXY": "proxy.test:3128"}, "https://a.test/", P),               # no scheme: http://
    ({"HTTPS_PROXY": "http://proxy.test"}, "https://a.test/", "http://proxy.test:80"),
    ({"HTTPS_PROXY": P}, "https://127.0.0.1:9000/b", P),                      # loopback is not special
    ({"HTTPS_PROXY": P}, "https://localhost:9000/b", P),
    ({"HTTPS_PROXY": P, "NO_PROXY": "localhost,127.0.0.1"}, "https://127.0.0.1:9000/b", None),
    ({"HTTPS_PROXY": P, "NO_PROXY": "example.test"}, "https://s3.example.test/b", None),   # a name: subdomains
    ({"HTTPS_PROXY": P, "NO_PROXY": "example.test"}, "https://example.test/b", None),
    ({"HTTPS_PROXY": P, "NO_PROXY": "example.test"}, "https://notexample.test/b", P),       # not a suffix match
    ({"HTTPS_PROXY": P, "NO_PROXY": ".example.test"}, "https://s3.example.test/b", None),  # .suffix
    ({"HTTPS_PROXY": P, "NO_PROXY": ".example.test"}, "https://example.test/b", None),
    ({"HTTPS_PROXY": P, "NO_PROXY": "10.0.0.0/8"}, "https://10.2.3.4/b", None),             # CIDR
    ({"HTTPS_PROXY": P, "NO_PROXY": "10.0.0.0/8"}, "https://11.2.3.4/b", P),
    ({"HTTPS_PROXY": P, "NO_PROXY": "10.0.0.0/8"}, "https://ten.test/b", P),               # names never resolved
    ({"HTTPS_PROXY": P, "NO_PROXY": "::1"}, "https://[::1]:9000/b", None),                  # IPv6
    ({"HTTPS_PROXY": P, "NO_PROXY": "fd00::/8"}, "https://[fd12::1]/b", None),
    ({"HTTPS_PROXY": P, "NO_PROXY": "s3.example.test:9000"}, "https://s3.example.test:9000/", None),  # host:port
    ({"HTTPS_PROXY": P, "NO_PROXY": "s3.example.test:9000"}, "https://s3.example.test:9001/", P),
    ({"HTTPS_PROXY": P, "NO_PROXY": "[::1]:9000"}, "https://[::1]:9000/", None),
    ({"HTTPS_PROXY": P, "NO_PROXY": "*"}, "https://anything.test/", None),
    ({"HTTPS_PROXY": P, "NO_PROXY": "a.test, b.test"}, "https://b.test/", None),           # spaces too
    ({"HTTPS_PROXY": P, "no_proxy": "", "NO_PROXY": "*"}, "https://a.test/", P),            # lower case wins
    ({"HTTPS_PROXY": P, "NO_PROXY": "S3.Example.TEST"}, "https://s3.example.test/", None),  # case-insensitive
    ({"HTTP_PROXY": P, "REQUEST_METHOD": "GET"}, "http://a.test/", None),                  # CGI: httpoxy
    ({"http_proxy": P, "REQUEST_METHOD": "GET"}, "http://a.test/", P),
])
def test_the_environment_as_urllib_reads_it(env, url, expected):
    assert proxy_of(env, url) == expected


def test_the_flag_and_the_products_variable_win_and_can_turn_proxies_off():
    env = {"HTTPS_PROXY": "http://env.test:1", "NO_PROXY": "direct.test"}
    assert proxy_of(env, "https://a.test/", override=P) == P
    assert proxy_of(env, "https://direct.test/", override=P) is None  # NO_PROXY still applies
    assert proxy_of(env, "https://a.test/", override="") is None
    assert proxy_of({**env, "OSSDL_PROXY": P}, "https://a.test/") == P
    assert proxy_of({**env, "OSSDL_PROXY": ""}, "https://a.test/") is None
    assert proxy_of({**env, "OSSDL_PROXY": ""}, "https://a.test/", override=P) == P  # the flag over the variable


@pytest.mark.parametrize("value, says", [
    ("socks5://proxy.test:1080", "socks proxies are not supported"),
    ("socks5h://u:secret@proxy.test:1080", "socks proxies are not supported"),
    ("https://proxy.test:443", "https proxies are not supported"),
    ("http://", "not a proxy URL"),
    ("http://proxy.test:notaport", "not a proxy URL"),
])
def test_unusable_proxies_are_refused_in_one_line_naming_the_variable(value, says):
    with pytest.raises(UsageError) as caught:
        Proxies.from_environment({"HTTPS_PROXY": value})
    message = str(caught.value)
    assert message.startswith("HTTPS_PROXY: ") and says in message and "secret" not in message


def test_a_password_is_used_but_never_shown():
    proxy = parse_proxy("http://al%40ice:p%3Ass%20w@proxy.test:3128", "--proxy")
    assert (proxy.user, proxy.password) == ("al@ice", "p:ss w")
    assert proxy.display == "http://al@ice@proxy.test:3128" and "p:ss" not in repr(proxy) + str(proxy)
    assert proxy.authorization == "Basic YWxAaWNlOnA6c3Mgdw=="
    assert proxy.url == "http://al%40ice:p%3Ass%20w@proxy.test:3128"  # what requests and botocore take
    assert parse_proxy("http://[::1]:3128", "x").address == "http://[::1]:3128"
    assert Proxies.from_environment({}, "http://u:pw@proxy.test:1").botocore("https://s3.test/") == {
        "http": "http://u:pw@proxy.test:1", "https": "http://u:pw@proxy.test:1"}
    assert Proxies.from_environment({}).botocore("https://s3.test/") == {}  # {}: botocore then reads nothing


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_windows_and_macos_use_the_systems_settings_without_variables(monkeypatch, platform):
    """The executables and the desktop app on an office machine: the proxy is in the system settings, read as
    urllib.request.getproxies() reads them there (registry / System Configuration), with their exceptions."""
    system = {"http": "http://corp-proxy.test:8080", "https": "http://corp-proxy.test:8080"}
    monkeypatch.setattr(urllib.request, "getproxies", lambda: system)
    monkeypatch.setattr(urllib.request, "proxy_bypass", lambda host: host.endswith(".intranet.test"))
    assert proxy_of({}, "https://oss.test/", platform=platform) == "http://corp-proxy.test:8080"
    assert proxy_of({}, "https://files.intranet.test/", platform=platform) is None
    assert proxy_of({"HTTPS_PROXY": P}, "https://oss.test/", platform=platform) == P  # variables first
    assert proxy_of({"HTTPS_PROXY": ""}, "https://oss.test/", platform=platform) is None
    assert proxy_of({}, "https://oss.test/", platform="linux") is None  # Linux: variables only


def test_certificates_for_the_store_in_the_documented_order(tmp_path):
    files = {}
    for name in ("flag", "aws", "requests", "curl"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("not read here")
    env = {"AWS_CA_BUNDLE": str(files["aws"]), "REQUESTS_CA_BUNDLE": str(files["requests"]),
           "CURL_CA_BUNDLE": str(files["curl"])}
    assert TLS.for_store(str(files["flag"]), env=env).cafile == str(files["flag"])
    assert TLS.for_store("", env=env).cafile == str(files["aws"])
    assert TLS.for_store("", backend="oss", env=env).cafile == str(files["requests"])  # AWS_CA_BUNDLE: S3 only
    assert TLS.for_store("", env={"CURL_CA_BUNDLE": str(files["curl"])}).cafile == str(files["curl"])
    assert TLS.for_store("", env={"CURL_CA_BUNDLE": str(tmp_path)}).capath == str(tmp_path)  # a folder
    assert TLS.for_store("", env={}) == TLS(None, None, True)  # SSL_CERT_FILE/DIR: OpenSSL's own defaults
    assert TLS.for_api(env).cafile == str(files["requests"])  # the API: never the store's bundle
    assert TLS.for_store("", verify=False, env={}).verify is False
    with pytest.raises(UsageError, match=r"^AWS_CA_BUNDLE: no such certificate file: /nowhere.pem$"):
        TLS.for_store("", env={"AWS_CA_BUNDLE": "/nowhere.pem"})


def test_one_tls_builder_for_python_and_curl(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match="cannot read the certificates in"):
        TLS(str(bundle)).context
    assert TLS(str(bundle)).curl_options(pycurl) == [(pycurl.CAINFO, str(bundle))]
    assert TLS(None, str(tmp_path)).curl_options(pycurl) == [(pycurl.CAPATH, str(tmp_path))]
    off = TLS(verify=False)
    assert off.context.verify_mode == ssl.CERT_NONE and not off.context.check_hostname
    assert off.curl_options(pycurl) == [(pycurl.SSL_VERIFYPEER, 0), (pycurl.SSL_VERIFYHOST, 0)]
    assert TLS().context.verify_mode == ssl.CERT_REQUIRED


def test_networks_compare_by_value():
    """Settings that read the same compare the same (frozen data: a Network is passed around, never mutated)."""
    assert Network(Proxies.from_environment({"HTTPS_PROXY": P}), TLS()) == \
        Network(Proxies.from_environment({"HTTPS_PROXY": P}), TLS())


def test_oss2s_wrapped_tls_and_proxy_refusals_in_the_same_words():
    """--region (oss2, requests, urllib3) says a refused certificate and a proxy's 407 as the other clients do."""
    import oss2.exceptions as ox
    import requests

    from core.errors import as_download_error
    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    refused.verify_message = "unable to get local issuer certificate"
    tls = as_download_error(ox.RequestError(requests.exceptions.SSLError(Exception(refused))))
    assert str(tls) == "TLS error: certificate verify failed: unable to get local issuer certificate"
    assert not tls.retryable
    proxied = as_download_error(ox.RequestError(requests.exceptions.ProxyError(
        "Cannot connect to proxy.", OSError("Tunnel connection failed: 407 Proxy Authentication Required"))))
    assert str(proxied) == "the proxy answered 407 Proxy Authentication Required" and not proxied.retryable
