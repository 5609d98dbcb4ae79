"""Scale-out on Prefect itself: split a huge prefix into key-range shards and run each shard as a child
flow run of a download deployment, so every worker of the work pool takes a share.

    python -m flows.sharded --shards 4 --deployment object-download/shard --bucket B ...
"""
from __future__ import annotations

import json
import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment as this_deployment
from prefect.states import Cancelled, Failed
from pydantic import Field

from flows.params import DownloadParams, with_deployment_defaults
from tasks import artifacts
from tasks.runs import source_of
from core.model import Counts
from core import listing, mirror
from core.sources import within
from core.engine.limits import divide_bwlimit
from core.errors import ListingError, UsageError
from core.paths import prepare_output
from core.report import Summary
from core.shards import counts_from_rows, merge_changes_csvs, merge_failed_csvs, shard_names, split

DEFAULT_DEPLOYMENT = "object-download/shard"
MAX_SHARDS = 64


class ShardsNotStarted(RuntimeError):
    """No shard ran for start_timeout_seconds while some were still waiting: no worker could take them."""


class ShardsBroken(RuntimeError):
    """Shard runs that ended without a summary (crashed, cancelled, failed before downloading)."""


def _check_pool(client, deployment: str) -> str:
    """The work pool the shards go to; UsageError when they could never start there."""
    try:
        target = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise UsageError(f"deployment: {deployment!r} not found (make deploy creates it)") from None
    pool = client.read_work_pool(target.work_pool_name)
    parent_on_pool = bool(this_deployment.id) and \
        client.read_deployment(this_deployment.id).work_pool_name == pool.name
    needed = 2 if parent_on_pool else 1
    if pool.concurrency_limit is not None and pool.concurrency_limit < needed:
        holder = " (this sharded run holds one of them)" if parent_on_pool else ""
        raise UsageError(f"work pool {pool.name!r} runs at most {pool.concurrency_limit} flow run(s) at once{holder}:"
                         f" shards could never start; raise it (prefect work-pool set-concurrency-limit"
                         f" {pool.name} N) or clear it")
    return pool.name


def _wait(client, run_ids: list, poll: float, start_timeout: float, pool: str) -> dict:
    """Wait until every shard is final. Shards may queue for worker slots for as long as others run, but
    when none has run for `start_timeout` seconds while some still wait, the rest are cancelled (so none
    starts later unseen) and ShardsNotStarted says which."""
    idle_since = time.monotonic()
    while True:
        runs = {rid: client.read_flow_run(rid) for rid in run_ids}
        waiting = [r for r in runs.values() if not (r.state and r.state.is_final())]
        if not waiting:
            return runs
        if any(r.state.is_running() or r.state.is_pending() for r in waiting):
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > start_timeout:
            for run in waiting:
                client.set_flow_run_state(run.id, Cancelled(message="the sharded run gave up waiting"), force=True)
            names = ", ".join(f"{r.name} ({r.state.name})" for r in sorted(waiting, key=lambda r: r.name))
            raise ShardsNotStarted(f"shards did not start within {start_timeout:g} s and were cancelled: {names};"
                                   f" is a worker with a free slot polling work pool {pool!r}? (make worker)")
        time.sleep(poll)


def _summary_rows(client, run_id) -> list[dict]:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=[artifacts.SUMMARY_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    if not found:
        return []
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


@flow(name="sharded-download", persist_result=False)
def sharded_download(
    params: DownloadParams,
    shards: Annotated[int, Field(ge=1, le=MAX_SHARDS)] = 4,
    deployment: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$")] = DEFAULT_DEPLOYMENT,
    poll_seconds: Annotated[float, Field(ge=0.5, le=60)] = 2.0,
    start_timeout_seconds: Annotated[float, Field(ge=5, le=86400)] = 600,
) -> Summary:
    """Split a prefix at its top-level folders into key ranges and download each as a child run.

    Args:
        params: What to download; every shard gets these with its own key range.
        shards: How many shards (1-64); fewer when the prefix has fewer top-level folders.
        deployment: The download deployment each shard runs as, flow-name/deployment-name.
        poll_seconds: How often the shards' states are read (0.5-60 s).
        start_timeout_seconds: Give up (and cancel the waiting shards) when no shard has run for this
            long (5-86400 s) while some wait: no worker is free to take them.
    """
    try:
        return _run(with_deployment_defaults(params), shards, deployment, poll_seconds, start_timeout_seconds)
    except (UsageError, ShardsNotStarted, ShardsBroken) as exc:
        # Failed with the reason as its message, no traceback; a caller of the flow gets the exception.
        return Failed(message=str(exc), data=exc)


def _run(params: DownloadParams, shards: int, deployment: str, poll_seconds: float, start_timeout: float):
    logger = get_run_logger()
    started = time.monotonic()
    output = prepare_output(params.output)
    with get_client(sync_client=True) as client:
        pool = _check_pool(client, deployment)
    job = params.job("shard-split")
    source = source_of(job)
    try:
        ranges = split(listing.folders(source, job.plan.max_attempts, job.plan.retry_backoff), shards)
    except ListingError as exc:
        raise UsageError(f"cannot cut {params.where} into shards: {exc}") from None
    finally:
        source.close()
    names = shard_names(len(ranges))
    children = []
    for name, (after, before) in zip(names, ranges):
        child = params.model_copy(update={"start_after": after, "end_before": before, "shard": name,
                                          "bwlimit": divide_bwlimit(params.bwlimit, len(ranges))})
        children.append(run_deployment(deployment, parameters={"params": child.model_dump(mode="json")},
                                       timeout=0, as_subflow=True, flow_run_name=f"shard-{name}"))
        logger.info("shard %s: keys after %r, before %r", name, after or "(start)", before or "(end)")
    tally = Counts()
    with get_client(sync_client=True) as client:
        runs = _wait(client, [c.id for c in children], poll_seconds, start_timeout, pool)
        broken, unlisted = [], []
        for run_id, run in runs.items():
            rows = _summary_rows(client, run_id)
            # A shard that ran to its report has a summary (Failed too, when some objects failed).
            if rows:
                tally.add(counts_from_rows(rows))
                unlisted += [run.name for r in rows if r["metric"] == "incomplete"]
            else:
                broken.append(f"{run.name} ({run.state.name})")
    notes, incomplete, deleted = [], "", []
    if params.delete and unlisted:
        notes.append(f"deletion skipped: the listing was incomplete in {', '.join(sorted(unlisted))}")
    elif params.delete and not broken:  # every shard listed completely and ran to its report
        from prefect.runtime import flow_run
        deletion = mirror.mirror_shards(
            params.plan("parent"), [(name, str(c.id), _covers(params, after, before))
                                    for name, c, (after, before) in zip(names, children, ranges)],
            owner={"flow_run_id": str(flow_run.id or "")}, listed=tally.listed,
            selected=tally.listed - tally.filtered_out)
        tally.add(deleted=0 if deletion.refused else deletion.count)
        incomplete, deleted = deletion.refused, deletion.rows
        notes += [deletion.skipped] if deletion.skipped else []
    elif params.delete:
        notes.append("deletion skipped: not every shard ran to its end")
    csv_path, first_rows = merge_failed_csvs(output, names)
    changes_csv, first_changes = merge_changes_csvs(output, names, deleted)
    summary = Summary.of(tally, time.monotonic() - started, csv_path, incomplete, notes, changes_csv=changes_csv,
                         first_changes=first_changes)
    artifacts.publish_summary(summary, first_rows)
    if broken:
        raise ShardsBroken(f"shard runs did not finish: {', '.join(sorted(broken))}")
    return artifacts.final_state(summary)


def _covers(params: DownloadParams, after: str, before: str):
    """What one shard's listing takes in: the prefix, its key range."""
    config = params.model_copy(update={"start_after": after, "end_before": before}).store_config()
    return lambda key: within(config, key)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from flows.arguments import build_parser, params_from_args, take_proxy_flag
    from flows.console import print_result
    from flows.signals import exit_code

    def bounded(kind, low, high):
        def parse(text: str):
            value = kind(text)
            if not low <= value <= high:
                raise ValueError
            return value
        parse.__name__ = f"{kind.__name__} from {low:g} to {high:g}"
        return parse
    parser = build_parser(prog="python -m flows.sharded")
    parser.add_argument("--shards", type=bounded(int, 1, MAX_SHARDS), default=4, help="1-64 (default 4)")
    parser.add_argument("--deployment", default=DEFAULT_DEPLOYMENT, help=f"default {DEFAULT_DEPLOYMENT}")
    parser.add_argument("--poll-seconds", type=bounded(float, 0.5, 60), default=2.0)
    parser.add_argument("--start-timeout", type=bounded(float, 5, 86400), default=600.0,
                        help="seconds without any shard running before giving up (default 600)")
    args = parser.parse_args(argv)
    for flag in ("dry_run", "no_prefect"):  # a sharded run is its shards' flow runs, and it downloads
        if getattr(args, flag, False):
            parser.error(f"--{flag.replace('_', '-')} is not for a sharded run (run python -m flows.download for it)")
    given = vars(args)
    take_proxy_flag(given)

    def run() -> int:
        params = params_from_args(argparse.Namespace(**given), exclude=(
            "yes", "shards", "deployment", "dry_run", "no_prefect", "poll_seconds", "start_timeout"))
        return print_result(sharded_download(params, shards=args.shards, deployment=args.deployment,
                                             poll_seconds=args.poll_seconds,
                                             start_timeout_seconds=args.start_timeout))
    return exit_code(run)


if __name__ == "__main__":
    raise SystemExit(main())
