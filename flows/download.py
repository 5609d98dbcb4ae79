"""The object download flow: list page by page, download in batches while listing goes on, retry, report.

    python -m flows.download --backend s3 --endpoint URL --bucket B --prefix P --output DIR
"""
from __future__ import annotations

import uuid
from contextlib import closing

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params import DownloadParams, with_deployment_defaults
from flows.pipeline import BATCH_WORKERS, download_all, preview_all
from tasks.backends import make_backend
from tasks.batch import Plan, Run
from tasks.download_tasks import final_state
from tasks.keys import parse_suffixes, prefix_folder, prepare_output
from tasks.manifest import Manifest
from tasks.report import Preview, Summary
from tasks.runs import mark_crashed
from tasks.transfer import Engine
from tasks.workarea import Output


@flow(name="object-download", task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS), persist_result=False)
def download_objects(params: DownloadParams) -> Summary | Preview:
    params = with_deployment_defaults(params)
    backend = make_backend(params.store_config())
    output = prepare_output(params.output)
    run_id = flow_run.id or uuid.uuid4().hex
    plan = Plan(output, prefix_folder(params.prefix), parse_suffixes(params.include_suffix), run_id=run_id,
                max_attempts=params.max_attempts, retry_backoff=params.retry_backoff, shard=params.shard,
                prefix=params.prefix)
    engine = Engine(params.concurrency, params.connect_timeout, params.read_timeout,
                    max_requests_per_second=params.max_requests_per_second,
                    low_speed_limit=params.low_speed_limit, low_speed_time=params.low_speed_time)
    if params.dry_run:
        with engine:
            return preview_all(backend, engine, plan)
    # Closed in reverse: the engine first (cancelled downloads record what finished), then the manifest
    # (its last writes), then the output (the lock is released last).
    with Output(output, plan.shard, owner={"flow_run_id": str(flow_run.id or "")}) as out, \
            closing(Manifest(output, plan.manifest_name)) as manifest, engine:
        mark_crashed(out.previous_owner, flow_run.id)
        return final_state(download_all(Run(plan, engine, backend, manifest, out)))


if __name__ == "__main__":
    import sys

    from flows.cli import main
    sys.exit(main())
