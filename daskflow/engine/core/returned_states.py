"""Runs whose body returned a ``State``: the state becomes the run's, as in Prefect.

A completed state gives its data as the run's value; a failed one is the run's failure
(the lifecycle in ``engine.worker.lifecycle`` retries it like a raised exception); a cancelled or
crashed one is final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daskflow.codes import CANCELLED, COMPLETED, CRASHED, FAILED, OK_CODES
from daskflow.engine.core import states as st

if TYPE_CHECKING:
    from daskflow.engine.core.envelope import ChunkResult

__all__ = ["adopted", "returned_state_outcome", "settle_returned_states"]


def settle_returned_states(res: ChunkResult) -> None:
    """Runs whose body returned a ``State`` take that state (no retries here: the fast path has none)."""
    values = res.values
    for i, value in enumerate(values):  # type: ignore[arg-type]
        if type(value) is st.State and res.codes[i] in OK_CODES:
            code, payload = returned_state_outcome(value)
            if code in OK_CODES:
                values[i] = payload  # type: ignore[index]
            else:
                values[i] = None  # type: ignore[index]
                res.fail(i, code, payload, value.message)
            res.keep(i, adopted(value, (res.base, res.start + i)))


def adopted(state: st.State, run: tuple[int, int]) -> st.State:
    """The state a body returned, as its run's final state: its type, name, message and data kept."""
    return st.State(state.type, state.name, message=state.message, data=state.data, task_run_id=run)


def returned_state_outcome(state: st.State) -> tuple[int, Any]:
    """``(code, value or exception)`` of a run whose body returned ``state``."""
    if state.is_completed():
        return COMPLETED, state.data
    code = {st.StateType.CRASHED: CRASHED, st.StateType.CANCELLED: CANCELLED}.get(state.type, FAILED)
    return code, state.exception()
