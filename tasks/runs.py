"""A run's live objects in each process that works on it, made from its Job (picklable, no secrets) the first
time a task of that run needs them; and Prefect flow runs left behind by killed runs.

Tasks take the Job and page descriptors, never live clients: a task could be retried, or run in another
process, and would build what it needs here — the store's client with the secret read from its Prefect
block in that process, the engine, the manifest and the output's lock."""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading

from core import run as core_run
from core.model import Job
from core.network import Network
from core.sources import Deferred, StoreConfig, make_source

log = logging.getLogger(__name__)
_runs: dict[str, core_run.Run] = {}
_lock = threading.Lock()


def source_of(job: Job):
    """The live source of a job (or a maker of it, given the engine), its secret and proxy loaded in this
    process."""
    spec = job.source
    proxy = None
    if job.proxy_block:
        from tasks.credentials import proxy_from_block
        proxy = proxy_from_block(job.proxy_block)
    if isinstance(spec, StoreConfig):
        from tasks.credentials import load_block_credentials
        credentials = load_block_credentials(job.secret) if job.secret else {}
        return make_source(dataclasses.replace(spec, credentials=credentials, proxy=proxy))
    # A FeishuSpec exists only once its module is imported (by whoever made the job, or by unpickling it), so an
    # S3 or OSS run does not import the Feishu source (~8 ms of an empty prefix's start-up).
    feishu = sys.modules.get("core.sources.feishu")
    if feishu is not None and isinstance(spec, feishu.FeishuSpec):
        from tasks.credentials import personal_base_token
        token = personal_base_token(job.secret)
        return Deferred(lambda engine: spec.source(token, engine),
                        Network.for_api(proxy, f"proxy block {job.proxy_block!r}"))
    raise TypeError(f"no source for {type(spec).__name__}")


def open_job(job: Job, owner: dict | None = None) -> core_run.Run:
    """This process's run of the job, opened once (the output's lock taken, the engine started)."""
    with _lock:
        run = _runs.get(job.plan.run_id)
        if run is None:
            run = _runs[job.plan.run_id] = core_run.open_run(job.plan, job.settings, source_of(job), owner)
        return run


def close_job(job: Job) -> None:
    with _lock:
        run = _runs.pop(job.plan.run_id, None)
    if run is not None:
        core_run.close_run(run)


def mark_crashed(previous_owner: dict, current_run_id) -> None:
    """A run killed with kill -9 (or a machine that went down) stays Running in Prefect for ever: nothing
    is left to report its end. The next run of the same output holds its lock — so that process is gone —
    and ends its flow run as Crashed."""
    run_id = previous_owner.get("flow_run_id")
    if not run_id or str(run_id) == str(current_run_id or ""):
        return
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
            if state is not None and not state.is_final():
                client.set_flow_run_state(run_id, Crashed(
                    message="the process stopped without reporting (killed, or its machine went down);"
                            " a later run of the same output folder took over"), force=True)
    except Exception as exc:  # noqa: BLE001 - housekeeping: never a reason to fail this run
        log.debug("could not mark flow run %s crashed: %s", run_id, exc)
