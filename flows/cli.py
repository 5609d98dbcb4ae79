"""Command line of the download flow: flags (or answers on a terminal) → DownloadParams → flow run → exit code.

The command owns its console: Prefect's own console lines go only to the flow run's logs in Prefect, and
without PREFECT_API_URL the temporary Prefect server runs in a session of its own (flows/local_server.py)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from pydantic import ValidationError

STARTED = time.monotonic()  # the summary's time is the whole command's
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_EMPTY = 3  # --fail-if-empty and nothing was selected
SERVER_START_TIMEOUT = 90.0
# A onefile executable runs as two processes in the terminal's process group (PyInstaller's bootloader and
# the program), and the bootloader forwards every signal it gets: one Ctrl-C arrives twice, a few ms apart.
SAME_SIGNAL_SECONDS = 0.5 if getattr(sys, "frozen", False) else 0.0
RESUMES = "the same command resumes where this run stopped"

EPILOG = """\
examples:
  # everything under a prefix, no questions
  {prog} --endpoint http://127.0.0.1:9000 --bucket photos --prefix 2024/ --output ./photos --yes
  # Aliyun OSS: what would come, images only
  {prog} --backend oss --endpoint https://oss-cn-hangzhou.aliyuncs.com --bucket my-bucket \\
      --prefix data/ --include-suffix '*.jpg,*.png' --dry-run
  # on a terminal: asks for what is missing, previews, then confirms
  {prog}

credentials (never as flags):
  s3   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), or --profile, or ~/.aws files
  oss  OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET (+ OSS_SESSION_TOKEN)
  {block}on a terminal they are asked when none are found (never saved)

Prefect:
{prefect}

exit codes:
  0    every selected object is present locally (also when nothing was selected: a warning says why)
  1    some objects failed: see <output>/.oss-failed.csv (key,last_error,retry_count)
  2    bad input, or the store or output folder cannot be used (one line on stderr)
  3    nothing was selected and --fail-if-empty was given
  130  interrupted (Ctrl-C): the same command resumes where it stopped
  143  stopped by SIGTERM (a scheduler, kill): the same command resumes
"""


def _prog() -> str:
    name = os.path.basename(sys.argv[0] or "")
    return name if name and not name.endswith(".py") and name != "-c" else "python -m flows.download"


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("oss-bulk-downloader")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """--version, looked up only when asked: the search of the installed packages for it costs ~6 ms of every
    start-up otherwise (measured in .venv), 2% of a run that lists an empty prefix."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {version()}")
        parser.exit()


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    # SUPPRESS: only flags actually given appear, so on a terminal the rest can be asked; defaults live in
    # DownloadParams (one place for the CLI, the UI form and deployments).
    # Another command built on these flags (flows/sharded.py) names itself; the examples are this one's.
    prefect = prefect_available()
    epilog = None if prog else EPILOG.format(prog=_prog(), **(EPILOG_PREFECT if prefect else EPILOG_NO_PREFECT))
    p = argparse.ArgumentParser(
        prog=prog or _prog(), argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download every object under a bucket/prefix to a local folder; reruns resume.\n"
                    "On a terminal, missing values are asked and a preview is confirmed first.",
        epilog=epilog)
    p.add_argument("--version", action=_VersionAction)
    where = p.add_argument_group("what to download")
    where.add_argument("--backend", choices=["s3", "oss"],
                       help="s3: any S3-compatible store (boto3); oss: Aliyun OSS (oss2). Default: s3")
    where.add_argument("--endpoint", metavar="URL",
                       help="the store's URL, e.g. http://127.0.0.1:9000 or https://oss-cn-hangzhou.aliyuncs.com;"
                            " empty or not given: AWS S3 (s3 only)")
    where.add_argument("--bucket", metavar="NAME", help="the bucket (required)")
    where.add_argument("--prefix", metavar="P",
                       help="only keys starting with P, e.g. data/2024/ (keys rarely start with '/');"
                            " default: the whole bucket")
    where.add_argument("--include-suffix", metavar="LIST",
                       help="comma-separated suffixes or glob patterns, case-insensitive: .jpg,.png or"
                            " '*.jpg,photos/**/*.png' (* within a folder name, ** across folders); default: all")
    where.add_argument("--output", metavar="DIR",
                       help="local folder; keys land below it without the prefix's folder part."
                            " Default: ./downloads")
    run = p.add_argument_group("how")
    run.add_argument("--dry-run", action="store_true",
                     help="list and preview (count, size, already present, to fetch, largest, first keys);"
                          " download and create nothing")
    run.add_argument("--yes", action="store_true", help="on a terminal, do not ask to confirm the preview")
    run.add_argument("--no-prefect", action="store_true",
                     help="run the download directly, without Prefect (no flow run, no server): the same"
                          " rounds, manifest, summary and failure CSV; what the standalone executable does"
                     if prefect else argparse.SUPPRESS)  # the executable has no other way
    run.add_argument("--fail-if-empty", action="store_true",
                     help="exit 3 (and fail the flow run) when nothing is selected; default: warn, exit 0")
    run.add_argument("--concurrency", type=int, metavar="N",
                     help="requests in flight at most, listing included, 1-256. Default: 5")
    run.add_argument("--max-attempts", type=int, metavar="N",
                     help="attempts per object in all, round 1 + round 2, 1-10. Default: 3")
    run.add_argument("--retry-backoff", type=float, metavar="S",
                     help="first wait of round 2's exponential backoff, seconds. Default: 1")
    run.add_argument("--connect-timeout", type=float, metavar="S", help="per request, seconds. Default: 10")
    run.add_argument("--read-timeout", type=float, metavar="S",
                     help="seconds without data before a request fails, 0 = none. Default: 60")
    run.add_argument("--low-speed-limit", type=float, metavar="B",
                     help="bytes/s; a download slower than this for --low-speed-time fails as too slow and is"
                          " retried (curl's rule), 0 = none. Default: 1024")
    run.add_argument("--low-speed-time", type=float, metavar="S",
                     help="seconds a download may stay below --low-speed-limit. Default: 60")
    run.add_argument("--fsync", action="store_true",
                     help="make every file durable before it gets its final name (slower); default: one sync"
                          " of the output before the summary, so exit 0 still means on disk")
    run.add_argument("--max-requests-per-second", type=float, metavar="R",
                     help="space request starts to at most R per second (stores that throttle); default: no cap")
    store = p.add_argument_group("store options")
    store.add_argument("--region", metavar="NAME",
                       help="signing region (S3; OSS: switches to V4 signatures, e.g. cn-hangzhou)")
    store.add_argument("--profile", metavar="NAME", help="S3: a named profile from ~/.aws/config")
    store.add_argument("--addressing-style", choices=["auto", "path", "virtual"],
                       help="S3 bucket addressing. Default: auto")
    store.add_argument("--cname", action="store_true", help="OSS: the endpoint is a custom domain bound to the bucket")
    net = p.add_argument_group("network (README: Networks)")
    net.add_argument("--proxy", metavar="URL",
                     help="an http:// proxy for every request to the store (http://user:password@host:port),"
                          " over HTTP_PROXY/HTTPS_PROXY/ALL_PROXY; NO_PROXY still applies; '' = no proxy")
    net.add_argument("--ca-bundle", metavar="PATH",
                     help="certificates (PEM file or folder) to trust for the store, over AWS_CA_BUNDLE,"
                          " REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and SSL_CERT_FILE")
    net.add_argument("--no-verify-ssl", action="store_true",
                     help="do not verify the store's TLS certificates (insecure: for tests)")
    if prefect:
        net.add_argument("--proxy-block", metavar="NAME",
                         help="a Prefect Secret block holding the proxy URL (deployments: no password in parameters)")
    store.add_argument("--credentials-block", metavar="NAME",
                       help="a Prefect block with the store's keys: AWS Credentials (prefect-aws), OSS Credentials,"
                            " or a Secret holding JSON {access_key_id, secret_access_key, session_token};"
                            " 'type/name' picks one type" if prefect else argparse.SUPPRESS)
    return p


EPILOG_PREFECT = dict(block="or --credentials-block NAME; ", prefect="""\
  every run is a Prefect flow run. PREFECT_API_URL=http://HOST:4200/api records it in a running server;
  unset, a temporary local server is started for the run (about 10 s more).""")
EPILOG_NO_PREFECT = dict(block="", prefect="""\
  this executable runs without Prefect: no flow run and no server, the same summary and failure CSV.
  Flow runs, deployments and --credentials-block come with the Python package.""")
NO_PREFECT_BLOCK = ("--credentials-block reads a Prefect block, and this executable is built without Prefect:"
                    " give the keys as environment variables (see --help) or --profile")


def validated(model, values: dict):
    """The parameter model built from flag values; ValueError naming the flag when one is missing or wrong."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        raise ValueError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None


def params_from_values(values: dict):
    from flows.params import DownloadParams
    if not values.get("endpoint"):  # documented: empty means AWS S3
        values = {k: v for k, v in values.items() if k != "endpoint"}
    return validated(DownloadParams, values)


def params_from_args(args: argparse.Namespace, exclude=("yes",)):
    return params_from_values({k: v for k, v in vars(args).items() if k not in exclude})


@dataclass
class Session:
    """What one command has going: whether downloads started (what Ctrl-C means) and its temporary server."""
    downloading: bool = False
    server: object | None = None
    started: float = STARTED


def main(argv: list[str] | None = None) -> int:
    # Before Prefect is imported: no telemetry banner or events from a download tool (the user may opt in).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    yes = given.pop("yes", False)
    if "proxy" in given:  # the product's own variable: this process's clients (and the flow run in it), not Prefect's
        os.environ["OSSDL_PROXY"] = given.pop("proxy")
    prefect = not given.pop("no_prefect", False) and prefect_available()
    if "credentials_block" in given and not prefect_available():
        print(f"error: {NO_PREFECT_BLOCK}", file=sys.stderr)
        return EXIT_USAGE
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if "bucket" not in given and not terminal:
        parser.print_usage(sys.stderr)
        print("error: --bucket is required", file=sys.stderr)
        return EXIT_USAGE
    session = Session()
    on_ctrl_c(session)
    return exit_code(lambda: _run(given, yes, terminal, session, prefect),
                     interrupted=lambda: (f"interrupted: finished files are kept; {RESUMES}" if session.downloading
                                          else "interrupted: nothing was downloaded"))


def on_ctrl_c(session: Session) -> None:
    """The first Ctrl-C stops the run in order (KeyboardInterrupt: what finished is recorded, the flow run ends
    Crashed); a second one, while that happens, exits at once."""
    first_at = 0.0

    def first(signum, frame):
        nonlocal first_at
        first_at = time.monotonic()
        signal.signal(signal.SIGINT, second)
        raise KeyboardInterrupt

    def second(signum, frame):
        if time.monotonic() - first_at < SAME_SIGNAL_SECONDS:
            return  # the first one, forwarded by the executable's bootloader
        os.write(2, f"\ninterrupted again: stopped at once; {RESUMES}\n".encode())
        if session.server is not None:
            session.server.stop(wait=0)
        os._exit(EXIT_INTERRUPTED)
    signal.signal(signal.SIGINT, first)


_terminated = False
_terminated_at = 0.0


def _sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler or `kill` stopping the run) stops it the way Ctrl-C does."""
    global _terminated, _terminated_at
    if _terminated and time.monotonic() - _terminated_at < SAME_SIGNAL_SECONDS:
        return  # the same SIGTERM, sent to the process group and forwarded by the executable's bootloader
    _terminated, _terminated_at = True, time.monotonic()
    raise KeyboardInterrupt


def exit_code(run, interrupted=None) -> int:
    """Run a command body and map what escapes it to the exit codes (2 usage, 3 nothing selected with
    --fail-if-empty, 130 Ctrl-C, 143 SIGTERM, 1 otherwise), with one line on stderr and never a traceback.
    `interrupted()`: what to say on Ctrl-C."""
    from core.errors import NothingSelected, ObjectsFailed, UsageError
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return run()
    except ObjectsFailed as exc:  # the run finished, its flow run is Failed: print its summary, exit 1
        return print_result(exc.summary)
    except (ValueError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NothingSelected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_EMPTY
    except KeyboardInterrupt:
        if _terminated:
            print(f"\nstopped (SIGTERM): {RESUMES}", file=sys.stderr)
            return EXIT_TERMINATED
        message = interrupted() if interrupted else f"interrupted: {RESUMES}"
        print(f"\n{message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def print_result(result) -> int:
    print(result.text())
    ok = getattr(result, "ok", True)
    if getattr(result, "incomplete", ""):
        print(f"error: {result.incomplete}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def prefect_available() -> bool:
    """False in the standalone executables, which are built without Prefect."""
    import importlib.util
    return importlib.util.find_spec("prefect") is not None


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
    session.server = start_temporary_server() if prefect else None
    display = None
    if terminal and not params.dry_run:
        preview = _preview_on_terminal(source, params)
        if not preview.to_fetch:
            return _nothing_to_fetch(preview, params)
        if not yes:
            if not _terminal().confirm(preview):
                print("cancelled: nothing downloaded", file=sys.stderr)
                return EXIT_OK
            session.started = time.monotonic()  # the person's thinking time is not the command's
        display = _terminal().RichDisplay(_console(), preview)
    from core.progress import LineDisplay
    display = display or LineDisplay()
    session.downloading = not params.dry_run
    with display:
        if prefect:
            result = _run_flow(params, session, terminal, display)
        else:
            result = _run_core(params, source, display)
    session.downloading = False
    return _report(result, params, session, display)


def _run_flow(params, session: Session, terminal: bool, display):
    """The download as a Prefect flow run (what the command does by default)."""
    from core.errors import ObjectsFailed
    from core.progress import use_display
    download_objects = prefect_ready(session.server, terminal, "flows.download:download_objects")
    use_display(display)
    try:
        return download_objects(params)
    except ObjectsFailed as exc:  # the run finished and its flow run is Failed: the summary says why
        return exc.summary


def _run_core(params, source, display):
    """The download without Prefect: the runner itself, on this process's engine (--no-prefect, executables)."""
    import uuid

    from core import run as core_run
    from core.errors import NothingSelected
    from core.report import nothing_selected
    job = params.job(uuid.uuid4().hex)
    if params.dry_run:
        result = core_run.preview(job.plan, job.settings, source)
    else:
        run = core_run.open_run(job.plan, job.settings, source)
        try:
            result = run.engine.run(core_run.run_all(
                run, tick=lambda: display.update(run.counts, run.engine.bytes_done)))
        finally:
            core_run.close_run(run)
    why = nothing_selected(result, params)
    if why and params.fail_if_empty:
        raise NothingSelected(why)
    return result


def _params_checked(given: dict, terminal: bool, session: Session):
    """The parameters (asked on a terminal when --bucket is missing) and a source that can list the bucket.
    Checked before Prefect starts: bad input costs no flow run and shows no traceback."""
    from core.errors import UsageError
    from tasks.runs import source_of
    asking = terminal and "bucket" not in given
    values = _terminal().ask(given) if asking else given
    listed = None
    while True:
        params = params_from_values(values)
        if terminal:
            _terminal().ask_credentials(params.backend)
        try:
            source = source_of(params.job("preflight"))
            listed = source.check()
            break
        except UsageError as exc:
            if not asking:
                raise
            values = _terminal().ask(given, reason=str(exc))
    if asking:
        session.started = time.monotonic()
    return params, source, listed


def _report(result, params, session: Session, display) -> int:
    from core.report import Summary, nothing_selected
    if isinstance(result, Summary):
        print(result.text(seconds=time.monotonic() - session.started,
                          active_seconds=getattr(display, "active_seconds", None)))
    else:
        print(result.text())
    if getattr(result, "incomplete", ""):
        print(f"error: {result.incomplete}", file=sys.stderr)
    why = nothing_selected(result, params)
    if why:  # with fail_if_empty the flow raised instead (exit 3)
        print(f"warning: {why}", file=sys.stderr)
    return EXIT_OK if getattr(result, "ok", True) else EXIT_FAILED


def _preview_on_terminal(source, params):
    from core.run import preview
    console = _console()
    job = params.job("preview")
    with console.status(f"listing {params.backend}://{params.bucket}/{params.prefix} …"):
        result = preview(job.plan, job.settings, source)
    _terminal().show_preview(console, result)
    return result


def _nothing_to_fetch(preview, params) -> int:
    """On a terminal the preview already knows: no flow run for nothing."""
    from core.report import nothing_selected
    why = nothing_selected(preview, params)
    if why and params.fail_if_empty:
        print(f"error: {why}", file=sys.stderr)
        return EXIT_EMPTY
    if why:
        print(f"warning: {why}", file=sys.stderr)
    else:
        print(f"nothing to download: all {preview.count} objects are already present in {params.output}",
              file=sys.stderr)
    return EXIT_OK


def start_temporary_server():
    """Without a Prefect API to report to, start a temporary server now, in a session of its own; it gets
    ready while the command lists and asks. None when PREFECT_API_URL (or the profile) names a server."""
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    import atexit

    from flows.local_server import TemporaryServer
    server = TemporaryServer().start()
    atexit.register(server.stop)  # registered before Prefect's own exit hooks, so it runs after them
    return server


def prefect_ready(server, terminal: bool, flow: str):
    """The flow ("module:name"), with Prefect quiet on the console and, when needed, the temporary server
    answering. Quieted after the flow's import: importing Prefect is what installs its console handlers."""
    message = "starting a temporary Prefect server for this run (PREFECT_API_URL is not set) …"
    if server is not None and terminal:
        with _console().status(message):
            server.wait_ready(SERVER_START_TIMEOUT)
    elif server is not None:
        print(message, file=sys.stderr, flush=True)
        server.wait_ready(SERVER_START_TIMEOUT)
    if server is not None:
        from prefect.context import refresh_global_settings_context
        os.environ["PREFECT_API_URL"] = server.api_url
        refresh_global_settings_context()
    import importlib
    module, name = flow.split(":")
    loaded = getattr(importlib.import_module(module), name)
    _quiet_prefect()
    return loaded


class _OtherWarnings(logging.Handler):
    """Instead of Prefect's console handler on the root logger: other libraries' warnings, one line each
    (through rich's redirection while the live display runs); Prefect's records stay in its API logs."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("prefect"):
            print(f"warning: {record.name}: {record.getMessage()}", file=sys.stderr)


def _quiet_prefect() -> None:
    from prefect.logging.handlers import APILogHandler
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            if not isinstance(handler, APILogHandler) and isinstance(handler, logging.StreamHandler):
                logger.removeHandler(handler)
    logging.getLogger().addHandler(_OtherWarnings())
    # One task run per listing page or batch: their "Finished in state Completed()" is noise in the run's logs.
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)


def _console():
    from rich.console import Console
    return Console(stderr=True, highlight=False)


def _terminal():
    from flows import terminal  # questionary/rich only when a person is there
    return terminal
