"""Command line of the Feishu attachment flow: flags → FeishuParams → flow run (or, with --no-prefect, the core
alone) → exit code (0/1/2/130/143). Prefect is started the way the object command starts it: a temporary
server in a session of its own when no API is configured, so Ctrl-C at a terminal stops the run, not it."""
from __future__ import annotations

import argparse
import os
import sys

from flows.arguments import prefect_available, take_proxy_flag, validated
from flows.cli import Session, job_source
from flows.console import print_result
from flows.signals import RESUMES, exit_code, on_ctrl_c

LISTS = ("attachment_fields", "name_fields", "folder_fields")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.feishu", argument_default=argparse.SUPPRESS,
                                description="Download every attachment of a Feishu Bitable table; reruns resume."
                                            " Token: PERSONAL_BASE_TOKEN (env or .env) or --token-block.")
    p.add_argument("--app-token", required=True, help="the base's app token")
    p.add_argument("--table-id", required=True)
    p.add_argument("--view-id")
    p.add_argument("--attachment-fields", help="comma-separated names or ids (default: all attachment fields)")
    p.add_argument("--domain", choices=["feishu", "lark"], help="default: feishu")
    p.add_argument("--api-base-url", help="override the Open API address (private deployments)")
    p.add_argument("--token-block", help="Prefect Secret block holding the personal base token")
    p.add_argument("--output", help="default: ./downloads")
    p.add_argument("--job-name", help="job folder below the output (default: the table ID)")
    p.add_argument("--concurrency", type=int, help="downloads at once, 1-64 (default 5)")
    p.add_argument("--zip", action="store_true", help="also write <job>.zip next to the job folder")
    p.add_argument("--name-fields", help="comma-separated fields whose values name the file")
    p.add_argument("--name-separator", help="between name field values (default -)")
    p.add_argument("--folder-fields", help="one or two comma-separated fields for folder levels")
    p.add_argument("--uncategorized-folder", help="folder for empty values (default 未分类)")
    p.add_argument("--max-attempts", type=int, help="attempts per file in all (default 3)")
    p.add_argument("--retry-backoff", type=float, help="first wait of round 2, seconds (default 1)")
    p.add_argument("--api-requests-per-second", type=float, help="API calls per second (default 2)")
    p.add_argument("--connect-timeout", type=float)
    p.add_argument("--read-timeout", type=float, help="seconds, 0 = none (default 60)")
    p.add_argument("--dry-run", action="store_true", help="list and preview only")
    p.add_argument("--page-size", type=int, help="records per listing page, 1-500 (default 500)")
    p.add_argument("--proxy", metavar="URL",
                   help="an http:// proxy for the Open API and the downloads, over HTTPS_PROXY/HTTP_PROXY/ALL_PROXY"
                        " (NO_PROXY still applies); '' = no proxy")
    p.add_argument("--proxy-block", metavar="NAME", help="a Prefect Secret block holding the proxy URL")
    p.add_argument("--bwlimit", metavar="RATE",
                   help="cap the downloads together, as rclone's --bwlimit: 10M, 512k, off, \"08:00,4M 19:00,off\"")
    p.add_argument("--no-prefect", action="store_true",
                   help="download without Prefect (no flow run, no server): same files, summary, CSV and exit codes")
    return p


def params_from_args(values: dict):
    from flows.params import FeishuParams
    for name in LISTS:
        if name in values:
            values[name] = [v.strip() for v in values[name].split(",") if v.strip()]
    return validated(FeishuParams, values)


def check_source(params) -> None:
    """Token, base, table and fields checked before Prefect starts: bad input costs no flow run."""
    from pathlib import Path

    from core.engine import Engine
    make = job_source(params.job("check", Path(params.output)))
    with Engine(1, network=make.network) as engine:
        source = make(engine)
        try:
            source.check()
        finally:
            source.close()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    values = vars(build_parser().parse_args(argv))
    take_proxy_flag(values)
    prefect = not values.pop("no_prefect", False) and prefect_available()
    if ("token_block" in values or "proxy_block" in values) and not prefect:
        print("error: --token-block and --proxy-block read Prefect Secret blocks, which need Prefect (this run has"
              " none): set PERSONAL_BASE_TOKEN and --proxy instead", file=sys.stderr)
        return 2
    session = Session()
    on_ctrl_c(session.stop_server_at_once)

    def run() -> int:
        params = params_from_args(values)
        check_source(params)
        session.downloading = not params.dry_run
        if not prefect:
            return print_result(run_on_the_core(params))
        from flows.local_server import prefect_ready, start_temporary_server
        session.server = start_temporary_server()
        download_attachments = prefect_ready(session.server, False, "flows.feishu:download_attachments")
        return print_result(download_attachments(params))
    return exit_code(run, interrupted=lambda: (f"interrupted: finished files are kept; {RESUMES}"
                                               if session.downloading else "interrupted: nothing was downloaded"))


def run_on_the_core(params):
    """The flow's work without Prefect: the same job, source, runner, report and ZIP."""
    import uuid
    from pathlib import Path

    from core import run as core_run
    from core.paths import prepare_output
    from core.zipper import zip_folder
    job = params.job(uuid.uuid4().hex, Path(params.output).expanduser().resolve())
    if params.dry_run:
        return core_run.preview(job.plan, job.settings, job_source(job))
    folder = prepare_output(job.plan.output)
    run = core_run.open_run(job.plan, job.settings, job_source(job))
    try:
        summary = core_run.run_job(run, core_run.LocalBatches(run))
    finally:
        core_run.close_run(run)
    if params.zip:
        summary.zip_file = str(zip_folder(folder, folder.with_name(folder.name + ".zip"), folder.name))
    return summary


if __name__ == "__main__":
    sys.exit(main())
