"""The object download flow: list page by page, download in batches while listing goes on, retry, report.

    python -m flows.download --backend s3 --endpoint URL --bucket B --prefix P --output DIR
"""
from __future__ import annotations

if __name__ == "__main__":  # before Prefect is imported: the CLI sets its environment up first
    import sys

    from flows.cli import main
    sys.exit(main())

import uuid
from contextlib import closing
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params import DownloadParams, with_deployment_defaults
from flows.pipeline import BATCH_WORKERS, download_all, preview_all
from tasks.backends import make_backend
from tasks.batch import Plan, Run
from tasks.download_tasks import final_state
from tasks.errors import NothingSelected
from tasks.keys import parse_suffixes, prefix_folder, prepare_output
from tasks.manifest import Manifest
from tasks.report import Preview, Summary, nothing_selected
from tasks.runs import mark_crashed
from tasks.transfer import Engine
from tasks.workarea import Output


@flow(name="object-download", task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS), persist_result=False)
def download_objects(params: DownloadParams) -> Summary | Preview:
    params = with_deployment_defaults(params)
    backend = make_backend(params.store_config())
    # A dry run creates nothing, not even the output folder.
    output = Path(params.output).expanduser().resolve() if params.dry_run else prepare_output(params.output)
    run_id = flow_run.id or uuid.uuid4().hex
    plan = Plan(output, prefix_folder(params.prefix), parse_suffixes(params.include_suffix), run_id=run_id,
                max_attempts=params.max_attempts, retry_backoff=params.retry_backoff, shard=params.shard,
                prefix=params.prefix)
    engine = Engine(params.concurrency, params.connect_timeout, params.read_timeout,
                    max_requests_per_second=params.max_requests_per_second,
                    low_speed_limit=params.low_speed_limit, low_speed_time=params.low_speed_time)
    if params.dry_run:
        with engine:
            return _check_selected(preview_all(backend, engine, plan), params)
    # Closed in reverse: the engine first (cancelled downloads record what finished), then the manifest
    # (its last writes), then the output (the lock is released last).
    with Output(output, plan.shard, owner={"flow_run_id": str(flow_run.id or "")}) as out, \
            closing(Manifest(output, plan.manifest_name)) as manifest, engine:
        mark_crashed(out.previous_owner, flow_run.id)
        return final_state(_check_selected(download_all(Run(plan, engine, backend, manifest, out)), params))


def _check_selected(result: Summary | Preview, params: DownloadParams) -> Summary | Preview:
    """Warn (or fail, with fail_if_empty) when nothing was selected: a wrong prefix or filter looks like success."""
    why = nothing_selected(result, params)
    if why and params.fail_if_empty:
        raise NothingSelected(why)
    if why:
        get_run_logger().warning(why)
    return result

