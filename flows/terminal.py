"""Interactive terminal mode: questions for what the flags did not say, a preview, a confirmation and
live progress. Used by flows/cli.py when it runs on a terminal."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import questionary
from rich.console import Console, Group
from rich.constrain import Constrain
from rich.live import Live as RichLive
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from core.model import Counts
from core.progress import Meter, clock
from core.report import Preview, human_bytes, objects
from flows.params import DownloadParams

OSS_ENDPOINTS = [f"https://oss-{region}.aliyuncs.com" for region in (
    "cn-hangzhou", "cn-shanghai", "cn-beijing", "cn-shenzhen", "cn-qingdao", "cn-zhangjiakou", "cn-chengdu",
    "cn-hongkong", "ap-southeast-1", "us-west-1", "eu-central-1")]
CUSTOM = "custom endpoint…"
BIG_JOB = 10 * 1000 ** 3  # above this the confirmation defaults to No
REMEMBERED = ("backend", "endpoint", "bucket", "prefix", "output", "concurrency", "include_suffix")
DEFAULTS = {name: DownloadParams.model_fields[name].get_default(call_default_factory=True)
            for name in ("backend", "prefix", "output", "concurrency")}


def answers_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "oss-bulk-downloader" / "last-answers.json"


def load_last() -> dict:
    try:
        return json.loads(answers_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save_last(values: dict) -> None:
    """Remember the answers (never credentials) as next time's defaults."""
    path = answers_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: values[k] for k in REMEMBERED if k in values}, ensure_ascii=False),
                        encoding="utf-8")  # not the locale's: Windows' cp1252 cannot write a Chinese prefix
    except OSError:
        pass


def _ask(question):
    answer = question.ask()
    if answer is None:  # Ctrl-C at a prompt
        raise KeyboardInterrupt
    return answer


def _concurrency_ok(text: str):
    return text.strip().isdigit() and 1 <= int(text) <= 256 or "a whole number from 1 to 256"


def ask(given: dict, reason: str | None = None) -> dict:
    """Ask for every value the flags did not give; `reason` re-asks where to connect after a failure."""
    last = {**DEFAULTS, **load_last(), **given}  # first time: the flags' defaults
    values = dict(given)
    if reason:
        questionary.print(f"✗ {reason}", style="fg:red")
        for name in ("endpoint", "bucket"):
            values.pop(name, None)
    if "backend" not in values:
        values["backend"] = _ask(questionary.select(
            "Backend:", choices=[questionary.Choice("s3  (any S3-compatible store)", "s3"),
                                 questionary.Choice("oss (Aliyun OSS)", "oss")], default=last["backend"]))
    if "endpoint" not in values:
        values["endpoint"] = _ask_endpoint(values["backend"], last.get("endpoint"))
    if "bucket" not in values:
        values["bucket"] = _ask(questionary.text(
            "Bucket:", default=last.get("bucket", ""),
            validate=lambda t: bool(t.strip()) or "the bucket name cannot be empty")).strip()
    if "prefix" not in values:
        values["prefix"] = _ask(questionary.text("Prefix (empty: the whole bucket):", default=last["prefix"]))
    if "output" not in values:
        values["output"] = _ask(questionary.text("Output folder:", default=last["output"]))
    if "concurrency" not in values:
        values["concurrency"] = int(_ask(questionary.text(
            "Concurrency:", default=str(last["concurrency"]), validate=_concurrency_ok)))
    if "include_suffix" not in values:
        default = last.get("include_suffix", "")
        values["include_suffix"] = _ask(questionary.text(
            "Only these suffixes or patterns (e.g. .jpg,.png or photos/**/*.png; empty: all):",
            default=",".join(default) if isinstance(default, list) else default))
    save_last(values)
    return values


def _ask_endpoint(backend: str, last: str | None) -> str | None:
    if backend == "oss":
        choices = OSS_ENDPOINTS + [CUSTOM]
        default = last if last in OSS_ENDPOINTS else (CUSTOM if last else OSS_ENDPOINTS[0])
        picked = _ask(questionary.select("Endpoint:", choices=choices, default=default))
        if picked != CUSTOM:
            return picked
        return _ask(questionary.text("Endpoint URL (e.g. https://oss-cn-hangzhou.aliyuncs.com):", default=last or "",
                                     validate=_url_ok)).strip()
    # As with --endpoint: empty means AWS S3 itself.
    url = _ask(questionary.text("Endpoint URL (e.g. http://127.0.0.1:9000; empty: AWS S3):", default=last or "",
                                validate=lambda t: not t.strip() or _url_ok(t))).strip()
    return url or None


def _url_ok(text: str):
    return text.strip().startswith(("http://", "https://")) or "an http:// or https:// URL"


def ask_credentials(backend: str) -> None:
    """Only when none are found: typed in, kept in this process's environment, never echoed or saved."""
    if backend == "oss":
        if os.environ.get("OSS_ACCESS_KEY_ID") and os.environ.get("OSS_ACCESS_KEY_SECRET"):
            return
        names = ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")
    else:
        import boto3
        if boto3.Session().get_credentials() is not None:
            return
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    os.environ[names[0]] = _ask(questionary.text("Access key id:", validate=lambda t: bool(t.strip()))).strip()
    os.environ[names[1]] = _ask(questionary.password("Access key secret:", validate=lambda t: bool(t)))


def show_preview(console: Console, preview: Preview) -> None:
    """The same lines as --dry-run prints (numbers highlighted)."""
    console.print(Text(preview.text()), highlight=True)


def confirm(preview: Preview) -> bool:
    big = preview.bytes_to_fetch > BIG_JOB
    left = f"Download {objects(preview.to_fetch)} ({human_bytes(preview.bytes_to_fetch)})"
    doomed = getattr(preview.deletion, "count", 0)
    if doomed:  # a mirror: what goes is part of the question, and the answer defaults to No
        left += f" and delete {objects(doomed)} ({human_bytes(preview.deletion.bytes)}) here"
    return _ask(questionary.confirm(left + "?", default=not big and not doomed))


class Seen(NamedTuple):
    done: int = 0
    failed: int = 0
    retrying: int = 0
    retried: int = 0


class RichDisplay:
    """Round 1 and round 2 as their own phases: each with its count, bytes, failures, a bar, speed and ETA
    over the last seconds from the first byte. Two short lines per phase, so it reads at 80 columns."""

    def __init__(self, console: Console, preview: Preview):
        self.console, self.preview = console, preview
        self.bytes, self.objects = Meter(), Meter()
        # What update() last saw: rich draws from its own thread while batches change the live counts.
        self.seen, self.bytes_done, self.final = Seen(), 0, False
        self.round_2_started: float | None = None
        self.round_2_bytes = 0
        self.view = RichLive(console=console, get_renderable=self.render, refresh_per_second=10)

    def __enter__(self) -> "RichDisplay":
        self.view.start()
        return self

    def __exit__(self, *exc) -> None:
        self.view.stop()

    def update(self, live: Counts, bytes_done: int, final: bool = False) -> None:
        now = time.monotonic()
        seen = Seen(live.done, live.failed, live.retrying, live.retried)
        self.bytes.add(bytes_done, now)
        self.objects.add(seen.done + seen.failed, now)
        if seen.retrying and self.round_2_started is None:
            self.round_2_started, self.round_2_bytes = now, bytes_done
        self.seen, self.bytes_done, self.final = seen, bytes_done, final

    @property
    def active_seconds(self) -> float | None:
        return self.bytes.active_seconds

    def render(self) -> Constrain:
        live, p = self.seen, self.preview
        in_round_2 = self.round_2_started is not None
        finished = live.done + live.failed
        total = max(p.count, finished)  # listed counts filtered-out keys too
        failed = f"  [red]{live.failed} failed[/]" if live.failed else ""
        if self.final or in_round_2:
            eta = ""
        elif p.bytes_to_fetch:
            eta = clock(self.bytes.eta(p.bytes_to_fetch - self.bytes_done))
        else:
            eta = clock(self.objects.eta(total - finished))
        rows = [self._phase("round 1" if in_round_2 else ("done" if self.final else "downloading"),
                            f"{finished}/{total} objects  {human_bytes(self.bytes_done)} of"
                            f" {human_bytes(p.bytes_to_fetch)}{failed}", finished, total,
                            "" if in_round_2 else self._speed(self.bytes.rate()), eta)]
        if in_round_2:
            rows.append(self._phase("round 2", f"{live.retried}/{live.retrying} retried (retryable failures,"
                                               " with backoff)", live.retried, live.retrying,
                                    self._speed(self._round_2_rate()),
                                    "" if self.final else clock(self._round_2_eta())))
        # Narrower than the terminal: the "^C" a terminal echoes must not wrap the last line, or the next
        # frame is drawn one line too low.
        return Constrain(Group(*rows), width=max(self.console.width - 3, 20))

    def _round_2_eta(self) -> float | None:
        """From round 2's own start: its time goes to backoff waits more than to bytes, and its objects
        finish in bursts, so a short window would swing between 0 and unknown."""
        seen, started = self.seen, self.round_2_started
        if not seen.retried or started is None:
            return None
        return (time.monotonic() - started) * (seen.retrying - seen.retried) / seen.retried

    def _round_2_rate(self) -> float | None:
        """Round 2's own bytes since it started: round 1's speed would hide its backoff waits."""
        elapsed = time.monotonic() - self.round_2_started
        return (self.bytes_done - self.round_2_bytes) / elapsed if elapsed > 0 else None

    @staticmethod
    def _speed(rate: float | None) -> str:
        return f"{human_bytes(rate)}/s" if rate is not None else "-/s"

    @staticmethod
    def _phase(name: str, counts: str, completed: int, total: int, speed: str, eta: str) -> Group:
        bar = Table.grid(expand=True, padding=(0, 1))
        bar.add_column(ratio=1)
        bar.add_column(no_wrap=True, justify="right")
        bar.add_row(ProgressBar(total=max(total, 1), completed=completed),
                    f"{speed}  ETA {eta}".strip() if eta else speed)
        return Group(Text.from_markup(f"[bold]{name:<11}[/] {counts}", overflow="fold"), bar)
