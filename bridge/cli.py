"""`feishu-bridge` / `python -m bridge`: the WebSocket download service in a terminal. Ctrl-C stops it."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="feishu-bridge", description="Local download service for the Bitable plugin.")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1; 0.0.0.0 for the LAN)")
    p.add_argument("--port", type=int, default=11548, help="WebSocket port (default 11548)")
    p.add_argument("--output", default="./downloads", help="where files are saved (default ./downloads)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--download-concurrency", type=int, default=5,
                   help="downloads at once per job, 1-64 (default 5; the plugin's own setting is always 1)")
    p.add_argument("--http-connect-timeout", type=float, default=30, help="seconds (default 30)")
    p.add_argument("--download-read-timeout", type=float, default=3600,
                   help="seconds without data before a download times out (default 3600; 0 = no limit)")
    p.add_argument("--personal-base-token", default=None,
                   help="personal base token for token mode (default: PERSONAL_BASE_TOKEN from env or .env)")
    p.add_argument("--domain", choices=["feishu", "lark"], default="feishu",
                   help="token mode: Feishu (base-api.feishu.cn) or Lark (base-api.larksuite.com)")
    p.add_argument("--api-base-url", default=None, help="token mode: override the Open API address")
    p.add_argument("--bwlimit", metavar="RATE", default=None,
                   help="cap all downloads together, as rclone's --bwlimit: 10M (MiB/s), 512k, off, or"
                        " \"08:00,4M 19:00,off\" (local time); default: no cap")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="also accept connections from this web page origin, e.g. https://app.example.com or"
                        " https://*.example.com (repeatable); Feishu/Lark pages and localhost are always accepted")
    return p


def personal_base_token(given: str | None) -> str:
    if given:
        return given
    from core.sources.feishu import token_from_env
    return token_from_env()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # its connection lines repeat ours
    if not 1 <= args.download_concurrency <= 64:
        print("error: --download-concurrency must be 1-64", file=sys.stderr)
        return 2
    from bridge.origins import normalise
    from core.engine.limits import parse_bwlimit
    try:
        origins = [normalise(o) for o in args.allow_origin]
    except ValueError as exc:
        print(f"error: --allow-origin: {exc}", file=sys.stderr)
        return 2
    try:
        parse_bwlimit(args.bwlimit)
    except ValueError as exc:
        print(f"error: --bwlimit: {exc}", file=sys.stderr)
        return 2
    from bridge.service import BridgeService, BridgeSettings
    from core.sources.feishu import DOMAINS
    from core.errors import UsageError
    settings = BridgeSettings(
        host=args.host, port=args.port, output=Path(args.output), download_concurrency=args.download_concurrency,
        http_connect_timeout=args.http_connect_timeout, download_read_timeout=args.download_read_timeout,
        personal_base_token=personal_base_token(args.personal_base_token),
        feishu_base_url=args.api_base_url or DOMAINS[args.domain], allow_origins=origins, bwlimit=args.bwlimit)
    stop = threading.Event()  # Ctrl-C or SIGTERM, also while starting: a clean stop, exit 0
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service = BridgeService(settings)
    try:
        service.start()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"feishu-bridge listening on ws://{settings.host}:{service.port}, saving to {settings.output}"
          " (Ctrl-C to stop)", flush=True)
    stop.wait()
    service.stop()
    print("stopped", flush=True)
    return 0
