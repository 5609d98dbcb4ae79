"""The download command: flags (or answers on a terminal) → DownloadParams → a checked source → the one run loop,
as a Prefect flow run (default) or on the core alone (--no-prefect, the executables) → summary and exit code.

    flows/arguments.py     the flags, made from DownloadParams
    flows/signals.py       Ctrl-C, SIGTERM, exit codes
    flows/local_server.py  the temporary Prefect server, Prefect's console lines kept out
    flows/console.py       what is printed
    flows/terminal.py      questions, preview, confirmation, live progress (on a terminal only)
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from flows.arguments import build_parser, params_from_values, prefect_available, take_proxy_flag
from flows.signals import EXIT_OK, EXIT_USAGE, RESUMES, exit_code, on_ctrl_c

STARTED = time.monotonic()  # the summary's time is the whole command's
NO_PREFECT_BLOCK = {"credentials_block": "give the keys as environment variables (see --help) or --profile",
                    "proxy_block": "give the proxy as --proxy or HTTPS_PROXY"}


@dataclass
class Session:
    """What one command has going: whether downloads started (what Ctrl-C means) and its temporary server."""
    downloading: bool = False
    server: object | None = None
    started: float = STARTED

    def stop_server_at_once(self) -> None:
        if self.server is not None:
            self.server.stop(wait=0)


def main(argv: list[str] | None = None) -> int:
    # Before Prefect is imported: no telemetry banner or events from a download tool (the user may opt in).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    yes = given.pop("yes", False)
    take_proxy_flag(given)
    prefect = not given.pop("no_prefect", False) and prefect_available()
    blocks = [f for f in ("credentials_block", "proxy_block") if f in given]
    if blocks and not prefect_available():
        print(f"error: --{blocks[0].replace('_', '-')} reads a Prefect block, and this executable is built without"
              f" Prefect: {NO_PREFECT_BLOCK[blocks[0]]}", file=sys.stderr)
        return EXIT_USAGE
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if "bucket" not in given and not terminal:
        parser.print_usage(sys.stderr)
        print("error: --bucket is required", file=sys.stderr)
        return EXIT_USAGE
    session = Session()
    on_ctrl_c(session.stop_server_at_once)
    return exit_code(lambda: _run(given, yes, terminal, session, prefect),
                     interrupted=lambda: (f"interrupted: finished files are kept; {RESUMES}" if session.downloading
                                          else "interrupted: nothing was downloaded"))


def _run(given: dict, yes: bool, terminal: bool, session: Session, prefect: bool) -> int:
    params, source, listed = _params_checked(given, terminal, session)
    if params.no_verify_ssl:
        from core.network import NO_VERIFY_WARNING
        print(f"warning: {NO_VERIFY_WARNING}", file=sys.stderr)
    if listed is False:
        # An empty prefix: the summary, the warning (or exit 3) and the work area's upkeep come from the core
        # in a fraction of a second; a flow run would add Prefect's start-up (seconds) for nothing.
        prefect = False
    if not params.dry_run:
        from core.paths import prepare_output
        prepare_output(params.output)
    if prefect:
        from flows.local_server import start_temporary_server
        session.server = start_temporary_server()
    display = None
    if terminal and not params.dry_run:
        preview = _preview_on_terminal(source, params)
        if not preview.to_fetch and not getattr(preview.deletion, "count", 0):
            return _nothing_to_fetch(preview, params)
        if not yes:
            if not _terminal().confirm(preview):
                print("cancelled: nothing downloaded", file=sys.stderr)
                return EXIT_OK
            session.started = time.monotonic()  # the person's thinking time is not the command's
        from flows.console import console
        display = _terminal().RichDisplay(console(), preview)
    from core.progress import LineDisplay
    display = display or LineDisplay()
    session.downloading = not params.dry_run
    with display:
        if prefect:
            source.close()  # the flow run opens its own, in its own lifetime
            result = _run_flow(params, session, terminal, display)
        else:
            result = _run_core(params, source, display)
    session.downloading = False
    from core.report import nothing_selected
    from flows.console import print_result
    return print_result(result, time.monotonic() - session.started, getattr(display, "active_seconds", None),
                        nothing_selected(result, params.plan(""), params.where, params.empty_hint))


def _run_flow(params, session: Session, terminal: bool, display):
    """The download as a Prefect flow run (what the command does by default)."""
    from core.errors import ObjectsFailed
    from core.progress import use_display
    from flows.local_server import prefect_ready
    download_objects = prefect_ready(session.server, terminal, "flows.download:download_objects")
    with use_display(display):
        try:
            return download_objects(params)
        except ObjectsFailed as exc:  # the run finished and its flow run is Failed: the summary says why
            return exc.summary


def _run_core(params, source, display):
    """The download without Prefect: the one run loop on this process's engine (--no-prefect, executables)."""
    import uuid

    from core import run as core_run
    job = params.job(uuid.uuid4().hex)
    if params.dry_run:
        try:
            return core_run.preview(job.plan, job.settings, source)
        finally:
            source.close()
    run = core_run.open_run(job.plan, job.settings, source)
    try:
        return core_run.run_job(run, core_run.LocalBatches(run),
                                tick=lambda: display.update(run.counts, run.engine.bytes_done))
    finally:
        core_run.close_run(run)  # and with it the source


def _params_checked(given: dict, terminal: bool, session: Session):
    """The parameters (asked on a terminal when --bucket is missing) and a source that can list the bucket
    (its owner: whoever runs it). Checked before Prefect starts: bad input costs no flow run and no traceback."""
    from core.errors import UsageError
    asking = terminal and "bucket" not in given
    values = _terminal().ask(given) if asking else given
    while True:
        params = params_from_values(values)
        if terminal:
            _terminal().ask_credentials(params.backend)
        try:
            source = job_source(params.job("preflight"))
            listed = source.check()
            break
        except UsageError as exc:
            if not asking:
                raise
            values = _terminal().ask(given, reason=str(exc))
    if asking:
        session.started = time.monotonic()
    return params, source, listed


def job_source(job):
    """A job's live source: with its secrets from Prefect blocks when it names any (tasks/runs.py), else the
    core alone (the executables have no Prefect)."""
    if job.secret or job.proxy_block:
        from tasks.runs import source_of
        return source_of(job)
    from core.sources import open_source
    return open_source(job)


def _preview_on_terminal(source, params):
    from core.run import preview
    from flows.console import console
    job = params.job("preview")
    shown = console()
    with shown.status(f"listing {params.backend}://{params.bucket}/{params.prefix} …"):
        result = preview(job.plan, job.settings, source)
    _terminal().show_preview(shown, result)
    return result


def _nothing_to_fetch(preview, params) -> int:
    """On a terminal the preview already knows: no flow run for nothing (exit 3 with --fail-if-empty)."""
    from core.report import nothing_selected
    why = nothing_selected(preview, params.plan(""), params.where, params.empty_hint)
    if why:
        print(f"warning: {why}", file=sys.stderr)
    else:
        print(f"nothing to download: all {preview.count} objects are already present in {params.output}",
              file=sys.stderr)
    return EXIT_OK


def _terminal():
    from flows import terminal  # questionary/rich only when a person is there
    return terminal
