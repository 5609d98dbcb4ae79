"""Command line of the download flow: flags (or answers on a terminal) → DownloadParams → flow run → exit code."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from pydantic import ValidationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def build_parser(prog: str = "python -m flows.download") -> argparse.ArgumentParser:
    # SUPPRESS: only flags actually given appear, so on a terminal the rest can be asked; defaults live in
    # DownloadParams (one place for the CLI, the UI form and deployments).
    p = argparse.ArgumentParser(prog=prog, argument_default=argparse.SUPPRESS,
                                description="Download every object under a bucket/prefix; reruns resume."
                                            " On a terminal, missing values are asked.")
    p.add_argument("--backend", choices=["s3", "oss"], help="default: s3")
    p.add_argument("--endpoint", help="endpoint URL (empty: AWS S3)")
    p.add_argument("--bucket")
    p.add_argument("--prefix")
    p.add_argument("--output", help="default: ./downloads")
    p.add_argument("--concurrency", type=int, help="requests in flight at most, 1-256 (default 5)")
    p.add_argument("--include-suffix", help="comma-separated, e.g. .jpg,.png")
    p.add_argument("--dry-run", action="store_true", help="list and preview only")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--max-attempts", type=int, help="attempts per object in all (default 3)")
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--addressing-style", choices=["auto", "path", "virtual"])
    p.add_argument("--cname", action="store_true", help="OSS: the endpoint is a custom domain of the bucket")
    p.add_argument("--connect-timeout", type=float, help="seconds (default 10)")
    p.add_argument("--read-timeout", type=float, help="seconds, 0 = none (default 60)")
    p.add_argument("--low-speed-limit", type=float,
                   help="bytes/s; a download slower than this for --low-speed-time fails as too slow (default"
                        " 1024, 0 = none)")
    p.add_argument("--low-speed-time", type=float, help="seconds (default 60)")
    p.add_argument("--retry-backoff", type=float, help="first wait of round 2, seconds (default 1)")
    p.add_argument("--max-requests-per-second", type=float, help="cap request starts per second")
    p.add_argument("--credentials-block", help="name of a Prefect Secret block with the store's credentials")
    return p


def validated(model, values: dict):
    """The parameter model built from flag values; ValueError naming the flag when one is missing or wrong."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        raise ValueError(f"{flag}: {first['msg']}") from None


def params_from_values(values: dict):
    from flows.params import DownloadParams
    return validated(DownloadParams, values)


def params_from_args(args: argparse.Namespace, exclude=("yes",)):
    return params_from_values({k: v for k, v in vars(args).items() if k not in exclude})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    yes = given.pop("yes", False)
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if "bucket" not in given and not terminal:
        parser.print_usage(sys.stderr)
        print("error: --bucket is required", file=sys.stderr)
        return EXIT_USAGE
    return exit_code(lambda: _run(given, yes, terminal))


_terminated = False


def _sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler or `kill` stopping the run) stops it the way Ctrl-C does."""
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def exit_code(run) -> int:
    """Run a command body and map what escapes it to the exit codes (2 usage, 130 Ctrl-C, 143 SIGTERM,
    1 otherwise), with one line on stderr and never a traceback."""
    from tasks.errors import ObjectsFailed, UsageError
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return run()
    except ObjectsFailed as exc:  # the run finished, its flow run is Failed: print its summary, exit 1
        return print_result(exc.summary)
    except (ValueError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if _terminated:
            print("\nstopped (SIGTERM): the same command resumes where this run stopped", file=sys.stderr)
            return EXIT_TERMINATED
        print("\ninterrupted: the same command resumes where this run stopped", file=sys.stderr)
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


def _run(given: dict, yes: bool, terminal: bool) -> int:
    from tasks.backends import make_backend
    from tasks.errors import UsageError
    from tasks.keys import prepare_output

    asking = terminal and "bucket" not in given
    values = _terminal().ask(given) if asking else given
    while True:
        params = params_from_values(values)
        if terminal:
            _terminal().ask_credentials(params.backend)
        try:
            # Checked before Prefect starts: bad input costs no flow run and shows no traceback.
            backend = make_backend(params.store_config())
            backend.check()
            break
        except UsageError as exc:
            if not asking:
                raise
            values = _terminal().ask(given, reason=str(exc))
    output = prepare_output(params.output)

    display = None
    if terminal and not params.dry_run:
        display = _confirm_on_terminal(backend, params, output, yes)
        if display is None:
            print("cancelled: nothing downloaded", file=sys.stderr)
            return EXIT_OK
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
    from flows.download import download_objects
    from tasks.progress import use_display
    if display:
        use_display(display)
        with display:
            result = download_objects(params)
    else:
        result = download_objects(params)
    return print_result(result)


def _confirm_on_terminal(backend, params, output, yes: bool):
    """Preview what will be downloaded, ask to confirm (unless --yes); the live display, or None."""
    from rich.console import Console

    from tasks.batch import Plan
    from tasks.keys import parse_suffixes, prefix_folder
    terminal = _terminal()
    console = Console(stderr=True, highlight=False)
    plan = Plan(output, prefix_folder(params.prefix), parse_suffixes(params.include_suffix), run_id="preview",
                shard=params.shard)
    with console.status("listing…"):
        found = terminal.scan(backend, plan)
    terminal.show_preview(console, found)
    if not yes and not terminal.confirm(found):
        return None
    return terminal.RichDisplay(console, found.preview.count, found.bytes_to_fetch)


def _terminal():
    from flows import terminal  # questionary/rich only when a person is there
    return terminal
