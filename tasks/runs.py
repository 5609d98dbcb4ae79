"""Prefect flow runs left behind: a run killed with kill -9 (or a machine that went down) stays Running in
Prefect for ever, because nothing is left to report its end. The next run of the same output folder holds
its lock — so the earlier process is gone — and ends that flow run as Crashed."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def mark_crashed(previous_owner: dict, current_run_id) -> None:
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
