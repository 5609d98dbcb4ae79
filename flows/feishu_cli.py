"""Command line of the Feishu attachment flow: flags → FeishuParams → flow run → exit code (0/1/2/130)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from flows.cli import exit_code, print_result, validated

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
    return p


def params_from_args(values: dict):
    from flows.feishu import FeishuParams
    for name in LISTS:
        if name in values:
            values[name] = [v.strip() for v in values[name].split(",") if v.strip()]
    return validated(FeishuParams, values)


def check_source(params) -> None:
    """Token, base, table and fields checked before Prefect starts: bad input costs no flow run."""
    from core.engine import Engine
    from tasks.credentials import personal_base_token
    with Engine(1) as engine:
        source = params.spec().source(personal_base_token(params.token_block), engine)
        try:
            source.check()
        finally:
            source.close()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    values = vars(build_parser().parse_args(argv))

    def run() -> int:
        params = params_from_args(values)
        check_source(params)
        logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
        from flows.feishu import download_attachments
        return print_result(download_attachments(params))
    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
