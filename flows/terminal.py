"""Interactive terminal mode: questions for what the flags did not say, a preview, a confirmation and
live progress. Used by flows/cli.py when it runs on a terminal."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import questionary
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tasks.backends import Backend
from tasks.batch import Plan, not_present, select
from tasks.errors import DownloadError
from tasks.keys import target
from tasks.listing import list_page, pages
from tasks.manifest import Manifest
from tasks.report import Preview, human_bytes
from tasks.workarea import Output

OSS_ENDPOINTS = [f"https://oss-{region}.aliyuncs.com" for region in (
    "cn-hangzhou", "cn-shanghai", "cn-beijing", "cn-shenzhen", "cn-qingdao", "cn-zhangjiakou", "cn-chengdu",
    "cn-hongkong", "ap-southeast-1", "us-west-1", "eu-central-1")]
CUSTOM = "custom endpoint…"
BIG_JOB = 10 * 1000 ** 3  # above this the confirmation defaults to No
REMEMBERED = ("backend", "endpoint", "bucket", "prefix", "output", "concurrency", "include_suffix")


def answers_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "oss-bulk-downloader" / "last-answers.json"


def load_last() -> dict:
    try:
        return json.loads(answers_file().read_text())
    except (OSError, ValueError):
        return {}


def save_last(values: dict) -> None:
    """Remember the answers (never credentials) as next time's defaults."""
    path = answers_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: values[k] for k in REMEMBERED if k in values}, ensure_ascii=False))
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
    last = {**load_last(), **given}
    values = dict(given)
    if reason:
        questionary.print(f"✗ {reason}", style="fg:red")
        for name in ("endpoint", "bucket"):
            values.pop(name, None)
    if "backend" not in values:
        values["backend"] = _ask(questionary.select("Backend:", choices=["oss", "s3"],
                                                    default=last.get("backend", "oss")))
    if "endpoint" not in values:
        values["endpoint"] = _ask_endpoint(values["backend"], last.get("endpoint"))
    if "bucket" not in values:
        values["bucket"] = _ask(questionary.text(
            "Bucket:", default=last.get("bucket", ""),
            validate=lambda t: bool(t.strip()) or "the bucket name cannot be empty")).strip()
    if "prefix" not in values:
        values["prefix"] = _ask(questionary.text("Prefix (empty: the whole bucket):", default=last.get("prefix", "")))
    if "output" not in values:
        values["output"] = _ask(questionary.text("Output folder:", default=last.get("output", "./downloads")))
    if "concurrency" not in values:
        values["concurrency"] = int(_ask(questionary.text(
            "Concurrency:", default=str(last.get("concurrency", 5)), validate=_concurrency_ok)))
    if "include_suffix" not in values:
        default = last.get("include_suffix", "")
        values["include_suffix"] = _ask(questionary.text(
            "Only these suffixes (e.g. .jpg,.png; empty: all):",
            default=",".join(default) if isinstance(default, list) else default))
    save_last(values)
    return values


def _ask_endpoint(backend: str, last: str | None) -> str:
    if backend == "oss":
        choices = OSS_ENDPOINTS + [CUSTOM]
        default = last if last in OSS_ENDPOINTS else (CUSTOM if last else OSS_ENDPOINTS[0])
        picked = _ask(questionary.select("Endpoint:", choices=choices, default=default))
        if picked != CUSTOM:
            return picked
    return _ask(questionary.text("Endpoint URL (e.g. http://127.0.0.1:9000):", default=last or "",
                                 validate=lambda t: t.startswith(("http://", "https://")) or
                                 "an http:// or https:// URL")).strip()


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


@dataclass
class Scan:
    preview: Preview = field(default_factory=Preview)
    present: int = 0
    bytes_to_fetch: int = 0


class _NoManifest:
    """No earlier run here: nothing recorded (files already on disk are still recognised)."""

    @staticmethod
    def done_entries(keys):
        return {}

    def close(self) -> None:
        pass


def scan(backend: Backend, plan: Plan) -> Scan:
    """List everything selected, and count what an earlier run already downloaded (nothing is written)."""
    result = Scan()
    manifest_path = plan.output / plan.manifest_name
    manifest = Manifest(plan.output, plan.manifest_name) if manifest_path.exists() else _NoManifest()
    out = Output(plan.output, read_only=True)
    try:
        for page in pages(backend, lambda token, _: list_page(backend, token, plan.max_attempts, plan.retry_backoff)):
            tally, chosen = select(page.objects, plan)
            result.preview.add(tally, chosen)
            todo = []
            for obj in chosen:
                try:
                    todo.append((obj, target(obj, plan.strip)))
                except DownloadError:
                    pass
            fresh, _ = not_present(manifest, out, todo)
            result.present += len(todo) - len(fresh)
            result.bytes_to_fetch += sum(obj.size for obj, _ in fresh)
        return result
    finally:
        manifest.close()
        out.close()


def show_preview(console: Console, found: Scan) -> None:
    p = found.preview
    console.print(f"[bold]{p.count}[/] objects, [bold]{human_bytes(p.total_bytes)}[/]"
                  f" ({p.filtered_out} filtered out); [bold]{found.present}[/] already present from an earlier"
                  f" run; {human_bytes(found.bytes_to_fetch)} to download")
    if p.largest:
        largest = Table(title="Largest", show_edge=False)
        largest.add_column("size", justify="right")
        largest.add_column("key")
        for size, key in sorted(p.largest, reverse=True):
            largest.add_row(human_bytes(size), key)
        console.print(largest)
    first = Table(title=f"First {len(p.first)} keys", show_edge=False)
    first.add_column("size", justify="right")
    first.add_column("key")
    for key, size in p.first:
        first.add_row(human_bytes(size), key)
    console.print(first)


def confirm(found: Scan) -> bool:
    big = found.preview.total_bytes > BIG_JOB
    return _ask(questionary.confirm(f"Download {found.preview.count} objects?", default=not big))


class RichDisplay:
    """Objects, bytes, speed, ETA and failures; rich redraws at most 10 times a second."""

    def __init__(self, console: Console, objects: int, bytes_to_fetch: int):
        self.bars = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("objects  {task.fields[bytes]}  {task.fields[speed]}"),
                             TimeRemainingColumn(), TextColumn("[red]{task.fields[failed]} failed"),
                             console=console, refresh_per_second=10)
        self.task = self.bars.add_task("downloading", total=objects, failed=0, bytes="", speed="")
        self.bytes_total = bytes_to_fetch
        self.started = time.monotonic()

    def __enter__(self) -> "RichDisplay":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def update(self, live, bytes_done: int, final: bool = False) -> None:
        phase = "done" if final else ("round 2: retrying" if live.phase.startswith("round 2") else "downloading")
        speed = bytes_done / max(time.monotonic() - self.started, 1e-6)
        self.bars.update(self.task, description=phase, completed=live.done + live.failed, failed=live.failed,
                         bytes=f"{human_bytes(bytes_done)}/{human_bytes(self.bytes_total)}",
                         speed=f"{human_bytes(speed)}/s")
