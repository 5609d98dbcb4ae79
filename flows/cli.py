"""Command line of the download flow: flags → DownloadParams → flow run → exit code."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser(prog: str = "python -m flows.download") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="Download every object under a bucket/prefix; reruns resume.")
    p.add_argument("--backend", choices=["s3", "oss"], default="s3")
    p.add_argument("--endpoint", help="endpoint URL (empty: AWS S3)")
    p.add_argument("--bucket")
    p.add_argument("--prefix", default="")
    p.add_argument("--output", default="./downloads")
    p.add_argument("--concurrency", type=int, default=5, help="requests in flight at most (1-256)")
    p.add_argument("--include-suffix", default="", help="comma-separated, e.g. .jpg,.png")
    p.add_argument("--dry-run", action="store_true", help="list and preview only")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--addressing-style", choices=["auto", "path", "virtual"], default="auto")
    p.add_argument("--cname", action="store_true", help="OSS: the endpoint is a custom domain of the bucket")
    p.add_argument("--connect-timeout", type=float, default=10)
    p.add_argument("--read-timeout", type=float, default=60)
    p.add_argument("--retry-backoff", type=float, default=1.0)
    p.add_argument("--max-requests-per-second", type=float, help="cap request starts per second")
    p.add_argument("--credentials-block", help="name of a Prefect Secret block with the store's credentials")
    return p


def params_from_args(args: argparse.Namespace, exclude=("yes",)):
    """DownloadParams from parsed flags; ValueError with the flag's name when a value is out of range."""
    from flows.params import DownloadParams
    values = {k: v for k, v in vars(args).items() if k not in exclude and v is not None}
    try:
        return DownloadParams(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        raise ValueError(f"{field}: {first['msg']}") from None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.bucket:
        parser.print_usage(sys.stderr)
        print("error: --bucket is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        params = params_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from tasks.backends import make_backend
    from tasks.errors import UsageError
    from tasks.keys import prepare_output
    try:
        # Check before starting Prefect, so bad input costs no flow run and shows no traceback.
        make_backend(params.store_config()).check()
        prepare_output(params.output)
        if not (args.yes or params.dry_run) and sys.stdin.isatty() and not _confirm(params):
            print("cancelled", file=sys.stderr)
            return EXIT_USAGE
        logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
        from flows.download import download_objects
        result = download_objects(params)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted: the same command resumes where this run stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(result.text())
    return EXIT_FAILED if getattr(result, "failed", 0) else EXIT_OK


def _confirm(params) -> bool:
    answer = input(f"Download s3/oss objects from {params.bucket}/{params.prefix} to {params.output}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
