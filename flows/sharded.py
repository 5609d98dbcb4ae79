"""Scale-out on Prefect itself: split a huge prefix into key-range shards and run each shard as a child
flow run of the download deployment, so every worker of the work pool takes a share.

    python -m flows.sharded --shards 4 --deployment object-download/s3-download --bucket B ...
"""
from __future__ import annotations

import json
import time

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment

from flows.params import DownloadParams
from tasks import download_tasks as units
from tasks.backends import make_backend
from tasks.batch import Tally
from tasks.keys import prepare_output
from tasks.report import Summary
from tasks.shards import merge_failed_csvs, shard_names, split, tally_from_rows

DEFAULT_DEPLOYMENT = "object-download/s3-download"


def _wait(client, run_ids: list, poll: float) -> dict:
    while True:
        runs = {rid: client.read_flow_run(rid) for rid in run_ids}
        if all(r.state and r.state.is_final() for r in runs.values()):
            return runs
        time.sleep(poll)


def _summary_rows(client, run_id) -> list[dict]:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=[units.SUMMARY_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    if not found:
        return []
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


@flow(name="sharded-download", persist_result=False)
def sharded_download(params: DownloadParams, shards: int = 4, deployment: str = DEFAULT_DEPLOYMENT,
                     poll_seconds: float = 2.0) -> Summary:
    logger = get_run_logger()
    started = time.monotonic()
    output = prepare_output(params.output)
    ranges = split(make_backend(params.store_config()).folders(), shards)
    names = shard_names(len(ranges))
    children = []
    for name, (after, before) in zip(names, ranges):
        child = params.model_copy(update={"start_after": after, "end_before": before, "shard": name})
        children.append(run_deployment(deployment, parameters={"params": child.model_dump(mode="json")},
                                       timeout=0, as_subflow=True, flow_run_name=f"shard-{name}"))
        logger.info("shard %s: keys after %r, before %r", name, after or "(start)", before or "(end)")
    tally = Tally()
    with get_client(sync_client=True) as client:
        runs = _wait(client, [c.id for c in children], poll_seconds)
        broken = [r.name for r in runs.values() if not r.state.is_completed()]
        for run_id in runs:
            tally.add(tally_from_rows(_summary_rows(client, run_id)))
    csv_path, first_rows = merge_failed_csvs(output, names)
    summary = Summary.of(tally, time.monotonic() - started, csv_path)
    units.publish_summary(summary, first_rows)
    if broken:
        raise RuntimeError(f"shard runs did not complete: {', '.join(sorted(broken))}")
    return summary


def main(argv: list[str] | None = None) -> int:
    import sys

    from flows.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, params_from_args
    from tasks.errors import UsageError
    parser = build_parser(prog="python -m flows.sharded")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--deployment", default=DEFAULT_DEPLOYMENT)
    args = parser.parse_args(argv)
    try:
        params = params_from_args(args, exclude=("yes", "shards", "deployment", "dry_run"))
        summary = sharded_download(params, shards=args.shards, deployment=args.deployment)
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.text())
    return EXIT_FAILED if summary.failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
