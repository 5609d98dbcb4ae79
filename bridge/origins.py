"""Which web pages may connect: a browser sends the page's Origin with the WebSocket handshake, so any
site the user visits could otherwise drive the service. Allowed: the Feishu/Lark family of domains that
Bitable plugins are served from, localhost, clients that send no Origin (scripts, not browsers), and
what the user adds (`--allow-origin`, the desktop app's advanced settings)."""
from __future__ import annotations

import re

# Bitable plugins run in an iframe of the Feishu/Lark web app; published plugins have been seen served
# from *.feishuapp.cn and ext.baseopendev.com.
FEISHU_DOMAINS = ("feishu.cn", "feishu.net", "feishucdn.com", "feishuapp.cn", "feishuapp.com", "baseopendev.com",
                  "larksuite.com", "larkoffice.com")
_BUILT_IN = [
    re.compile(r"https://([a-z0-9-]+\.)*(" + "|".join(re.escape(d) for d in FEISHU_DOMAINS) + r")(:\d+)?"),
    re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"),
]
_ORIGIN = re.compile(r"(https?)://(\*\.)?([a-z0-9.-]+|\[[0-9a-f:]+\])(:\d+)?")


class Origins:
    def __init__(self, extra: list[str] | tuple[str, ...] = ()):
        self.extra = [normalise(o) for o in extra]
        self._extra = [_pattern(o) for o in self.extra]

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return True  # not a browser: browsers always send Origin with a WebSocket handshake
        origin = origin.strip().lower().rstrip("/")
        return any(p.fullmatch(origin) for p in _BUILT_IN + self._extra)


def normalise(origin: str) -> str:
    """'https://X.example.com/' → 'https://x.example.com'; ValueError naming what is wrong."""
    value = origin.strip().lower().rstrip("/")
    if not _ORIGIN.fullmatch(value):
        raise ValueError(f"not an origin: {origin!r} (expected e.g. https://app.example.com or"
                         " https://*.example.com)")
    return value


def split(text: str) -> list[str]:
    """Origins typed in one field, separated by spaces, commas or new lines."""
    return [normalise(o) for o in re.split(r"[\s,;]+", text) if o.strip()]


def _pattern(origin: str) -> re.Pattern:
    scheme, wildcard, host, port = _ORIGIN.fullmatch(origin).groups()
    return re.compile(re.escape(f"{scheme}://") + (r"([a-z0-9-]+\.)+" if wildcard else "")
                      + re.escape(host + (port or "")))
