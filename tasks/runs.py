"""A flow run's live objects, made from its Job (picklable, no secrets: a block's secret is read here, in the
process that uses it) and held by the flow for its whole run; its tasks find them here by the run's id; and
Prefect flow runs left behind by killed runs.

Tasks take the Job and page descriptors, never live clients. The flow that holds a run opens and closes it
(`held`); its tasks run in the flow's process (the flows' task runner is a thread pool: one engine, one
connection pool and one concurrency cap per process, which a process or Dask task runner would split)."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

from core import run as core_run
from core.model import Job
from core.sources import StoreConfig, open_source

log = logging.getLogger(__name__)
_runs: dict[str, core_run.Run] = {}
_lock = threading.Lock()


def source_of(job: Job):
    """The live source of a job, with the secrets its Prefect blocks hold read in this process."""
    from tasks.credentials import load_block_credentials, personal_base_token, proxy_from_block
    proxy = proxy_from_block(job.proxy_block) if job.proxy_block else None
    where = f"proxy block {job.proxy_block!r}"
    if isinstance(job.source, StoreConfig):
        return open_source(job, load_block_credentials(job.secret) if job.secret else None, proxy=proxy,
                           proxy_source=where)
    return open_source(job, token=personal_base_token(job.secret) if job.secret else None, proxy=proxy,
                       proxy_source=where)


@contextlib.contextmanager
def held(job: Job, owner: dict | None = None) -> Iterator[core_run.Run]:
    """Open the job's run (the output's lock taken, the engine started) for the flow's whole run, and close
    it at the end; its tasks find it with run_of."""
    run = core_run.open_run(job.plan, job.settings, source_of(job), owner)
    with _lock:
        _runs[job.plan.run_id] = run
    try:
        yield run
    finally:
        with _lock:
            del _runs[job.plan.run_id]
        core_run.close_run(run)


def run_of(job: Job) -> core_run.Run:
    """The run a task works on: held by its flow in this process."""
    with _lock:
        run = _runs.get(job.plan.run_id)
    if run is None:
        raise RuntimeError(f"run {job.plan.run_id} is not held in this process (its flow holds it: tasks"
                           " run in the flow's task runner, a thread pool)")
    return run


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
