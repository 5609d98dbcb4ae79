"""How every request of the product reaches its server: which proxy (one reading of the environment for every
client: the engine's aiohttp and curl, the listings' http.client, oss2, botocore, the Feishu API) and which
certificates to trust (one TLS builder, so all of them accept and refuse the same servers).

Proxies, as Python's urllib reads them (lower case wins over upper case):
    OSSDL_PROXY        the product's own setting (what --proxy sets; '' = no proxy): wins over the rest and
                       leaves Prefect's client alone; a proxy block named by a deployment wins over it
    http_proxy, https_proxy, all_proxy     per scheme of the request, all_proxy for both
    no_proxy           host names, .suffixes, IPs, CIDR ranges, host:port, '*'; loopback is not special
On Windows and macOS, without any of these variables, the system's settings as urllib.request.getproxies()
reads them (registry / System Configuration) and their exceptions. PAC files are not read. Only http://
proxies (HTTPS goes through them with CONNECT): socks and https proxies are refused with one line.

Certificates, for the store (first found): --ca-bundle, AWS_CA_BUNDLE (S3 backend), REQUESTS_CA_BUNDLE,
CURL_CA_BUNDLE, SSL_CERT_FILE / SSL_CERT_DIR, the system's store. The Feishu API and its links never take the
store's bundle nor --no-verify-ssl (they carry the token): REQUESTS_CA_BUNDLE and the rest still apply.
"""
from __future__ import annotations

import base64
import functools
import ipaddress
import os
import ssl
import sys
import urllib.request
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Mapping
from urllib.parse import quote, unquote, urlsplit

from core.errors import UsageError

PRODUCT_PROXY = "OSSDL_PROXY"
NO_VERIFY_WARNING = ("--no-verify-ssl: the store's TLS certificates are not checked: anyone on the network path can"
                     " read and change what is downloaded")


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy. `display` names it without the password (for every message and log line)."""
    host: str
    port: int
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"http://{self.netloc}"

    @property
    def display(self) -> str:
        return f"http://{self.user}@{self.netloc}" if self.user else self.address

    def __str__(self) -> str:
        return self.display

    @property
    def url(self) -> str:
        """With the credentials, percent-encoded: the form requests and botocore take (never to be shown)."""
        auth = f"{_quote(self.user)}:{_quote(self.password)}@" if self.user else ""
        return f"http://{auth}{self.netloc}"

    @cached_property
    def aiohttp(self) -> dict:
        """The keyword arguments of an aiohttp request through this proxy."""
        import aiohttp
        return {"proxy": self.address, "proxy_auth": aiohttp.BasicAuth(self.user, self.password) if self.user else None}

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization header's value, or None."""
        if not self.user:
            return None
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()


def parse_proxy(value: str, source: str) -> Proxy:
    """'http://user:pass@host:port' (scheme optional, as curl and urllib take it). UsageError naming `source`
    (the flag or variable), never the password."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    scheme = text.partition("://")[0].lower()
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    shown = _without_password(text)
    if scheme != "http":
        what = "socks" if scheme.startswith("socks") else scheme
        raise UsageError(f"{source}: {what} proxies are not supported ({shown}): use an http:// proxy"
                         " (HTTPS requests go through it with CONNECT)")
    if not host:
        raise UsageError(f"{source}: not a proxy URL: {shown}")
    return Proxy(host.lower(), port or 80, unquote(parts.username or ""), unquote(parts.password or ""))


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}@{hostpart}"


class _Bypass:
    """A no_proxy list: '*', host names and .suffixes (a name matches itself and its subdomains), IP
    addresses, CIDR ranges (for IP literals; names are never resolved for this), optional :port."""

    def __init__(self, text: str):
        self.everything = False
        self.rules: list[tuple[object, int | None]] = []
        for entry in text.replace(",", " ").split():
            entry = entry.strip().lower()
            if entry == "*":
                self.everything = True
                continue
            host, port = _split_port(entry)
            try:
                self.rules.append((ipaddress.ip_network(host, strict=False), port))
            except ValueError:
                self.rules.append((host.lstrip("."), port))

    def __call__(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        for rule, rule_port in self.rules:
            if rule_port is not None and rule_port != port:
                continue
            if isinstance(rule, str):
                if host == rule or host.endswith("." + rule):
                    return True
            elif ip is not None and ip.version == rule.version and ip in rule:
                return True
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080 or [::1]
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, colon, port = entry.rpartition(":")
    if colon and host.count(":") == 0 and port.isdigit():
        return host, int(port)
    return entry, None


@dataclass(frozen=True)
class Proxies:
    """Which proxy each request takes. `table`: scheme → Proxy (None: direct); `bypass`: the no_proxy text;
    `system`: the OS's own exceptions decide (Windows registry / macOS settings)."""
    table: tuple[tuple[str, Proxy | None], ...] = ()
    bypass: str = ""
    system: bool = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, override: str | None = None,
                         source: str = "--proxy", platform: str | None = None) -> "Proxies":
        """The product's one reading. `override`: a proxy URL (or '' for none) that wins over the
        environment (--proxy, a proxy block, the desktop app's field); `source` names it in messages."""
        env = os.environ if env is None else env
        bypass = _variable(env, "no_proxy") or ""
        if override is None and PRODUCT_PROXY in env:
            override, source = env[PRODUCT_PROXY], PRODUCT_PROXY
        if override is not None:
            proxy = parse_proxy(override, source) if override.strip() else None
            return cls((("http", proxy), ("https", proxy)), bypass)
        found = {}
        for scheme in ("http", "https", "all"):
            name = f"{scheme}_proxy"
            if scheme == "http" and "REQUEST_METHOD" in env and name not in env:
                continue  # CGI: HTTP_PROXY may come from a client's "Proxy:" header (httpoxy); urllib does the same
            value = _variable(env, name)
            if value:
                found[scheme] = parse_proxy(value, _name_of(env, name))
        if found:
            all_ = found.get("all")
            return cls(tuple((s, found.get(s, all_)) for s in ("http", "https")), bypass)
        if (platform or sys.platform) in ("win32", "darwin") and not any(
                _variable(env, f"{s}_proxy") is not None for s in ("http", "https", "all")):
            return cls._from_system()
        return cls((), bypass)

    @classmethod
    def _from_system(cls) -> "Proxies":
        found = {}
        for scheme, value in urllib.request.getproxies().items():
            if scheme in ("http", "https") and value:
                found[scheme] = parse_proxy(value, "the system's proxy settings")
        return cls(tuple(found.items()), "", system=True)

    @cached_property
    def _bypassed(self) -> Callable[[str, int], bool]:
        if self.system:  # the registry or System Configuration: asked once per host, not per request
            return functools.lru_cache(maxsize=4096)(lambda host, port: bool(urllib.request.proxy_bypass(host)))
        return _Bypass(self.bypass)

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy a request to `url` goes through, or None (direct)."""
        if not self.table:
            return None
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = dict(self.table).get(scheme)
        if proxy is None:
            return None
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return None if self._bypassed(host, port) else proxy

    def botocore(self, url: str) -> dict:
        """botocore's `proxies` for a client of `url` ({} means none: botocore reads the environment only
        when it is given None)."""
        proxy = self.proxy_for(url)
        return {"http": proxy.url, "https": proxy.url} if proxy else {}


def _variable(env: Mapping[str, str], name: str) -> str | None:
    """The variable in lower case if set (even empty), else upper case: urllib's order."""
    if name in env:
        return env[name]
    return env.get(name.upper())


def _name_of(env: Mapping[str, str], name: str) -> str:
    return name if name in env else name.upper()


@dataclass(frozen=True)
class TLS:
    """Which certificates to trust: `cafile`/`capath` (None: OpenSSL's defaults, SSL_CERT_FILE and
    SSL_CERT_DIR included), or no verification at all (--no-verify-ssl)."""
    cafile: str | None = None
    capath: str | None = None
    verify: bool = True

    @classmethod
    def for_store(cls, ca_bundle: str = "", verify: bool = True, backend: str = "s3",
                  env: Mapping[str, str] | None = None) -> "TLS":
        env = os.environ if env is None else env
        named = [("--ca-bundle", ca_bundle)]
        if backend == "s3":
            named.append(("AWS_CA_BUNDLE", env.get("AWS_CA_BUNDLE", "")))
        return cls._first(named + cls._general(env), verify)

    @classmethod
    def for_api(cls, env: Mapping[str, str] | None = None) -> "TLS":
        """The Feishu API and its links: the general variables only, always verified."""
        return cls._first(cls._general(os.environ if env is None else env), True)

    @staticmethod
    def _general(env: Mapping[str, str]) -> list[tuple[str, str]]:
        return [(name, env.get(name, "")) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")]

    @classmethod
    def _first(cls, named: list[tuple[str, str]], verify: bool) -> "TLS":
        for name, path in named:
            if not path:
                continue
            path = os.path.expanduser(path)
            if os.path.isdir(path):
                return cls(None, path, verify)
            if not os.path.isfile(path):
                raise UsageError(f"{name}: no such certificate file: {path}")
            return cls(path, None, verify)
        return cls(None, None, verify)

    @cached_property
    def context(self) -> ssl.SSLContext:
        """The SSLContext of aiohttp, http.client and oss2's sessions."""
        try:
            ctx = ssl.create_default_context(cafile=self.cafile, capath=self.capath)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot read the certificates in {self.cafile or self.capath}: {exc}") from None
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def curl_options(self, pycurl) -> list:
        """The same trust for libcurl. The pycurl wheel's own libcurl looks for certificates where its build
        machine keeps them, so it is always told: the file or folder named, else OpenSSL's default paths
        (SSL_CERT_FILE and SSL_CERT_DIR included), else certifi's."""
        if not self.verify:
            return [(pycurl.SSL_VERIFYPEER, 0), (pycurl.SSL_VERIFYHOST, 0)]
        if self.cafile or self.capath:
            return [(pycurl.CAINFO, self.cafile)] if self.cafile else [(pycurl.CAPATH, self.capath)]
        paths = ssl.get_default_verify_paths()
        options = [(pycurl.CAINFO, paths.cafile)] if paths.cafile else []
        if paths.capath:
            options.append((pycurl.CAPATH, paths.capath))
        if not options:
            try:
                import certifi
                options.append((pycurl.CAINFO, certifi.where()))
            except ImportError:
                pass
        return options


@dataclass(frozen=True)
class Network:
    """The proxies and the certificates of one run's requests (to the store, or to the Feishu API)."""
    proxies: Proxies = field(default_factory=Proxies)
    tls: TLS = field(default_factory=TLS)

    @classmethod
    def for_store(cls, ca_bundle: str = "", verify: bool = True, backend: str = "s3",
                  proxy: str | None = None, proxy_source: str = "--proxy") -> "Network":
        return cls(Proxies.from_environment(override=proxy, source=proxy_source),
                   TLS.for_store(ca_bundle, verify, backend))

    @classmethod
    def for_api(cls, proxy: str | None = None, proxy_source: str = "--proxy") -> "Network":
        return cls(Proxies.from_environment(override=proxy, source=proxy_source), TLS.for_api())

    def proxy_for(self, url: str) -> Proxy | None:
        return self.proxies.proxy_for(url)

    def unreachable(self, what: str, url: str, error: Exception) -> UsageError:
        """The one line for a server that cannot be reached at the start, naming the proxy it went through."""
        proxy = self.proxy_for(url)
        via = f" through the proxy {proxy}" if proxy and str(proxy) not in str(error) else ""
        return UsageError(f"cannot reach {what}{via}: {error}")



def _quote(text: str) -> str:
    return quote(text, safe="")
