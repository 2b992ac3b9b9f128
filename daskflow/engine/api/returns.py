"""A flow's final state from its return value: Prefect's rule.

1. Futures anywhere in the returned value (inside lists, tuples, sets, dicts; a
   ``.map()``'s futures count as a list) become their runs' final *States*: the caller
   receives States, not values.
2. A State made by hand (not the state of a run) is the flow's final state as it is.
3. The state of a run, or a non-empty list/tuple/set made only of States, decides by
   aggregation: completed if all completed, else cancelled if any was cancelled, else
   failed; the returned value is the new state's data.
4. Any other value completes the flow with that value (a tuple of a failed State and a
   string completes).
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any

from daskflow.engine.client.chunks import bring_values
from daskflow.engine.client.futures import MapFutures, TaskRunFuture
from daskflow.engine.core import states as st

__all__ = ["resolve_futures_to_states", "state_of_return"]


def resolve_futures_to_states(value: Any) -> Any:
    """``value`` with every future replaced by its run's final state (waits for them)."""
    kind = type(value)
    if isinstance(value, TaskRunFuture):
        value.chunk.observe(value.index)
        value.wait()
        bring_values([value.chunk])  # returned: the caller holds the value after the flow's runner is gone
        return value.state
    if isinstance(value, MapFutures):
        value.wait()
        bring_values(value.chunks)
        for chunk in value.chunks:
            chunk.observe()
        return value.states
    if kind in (list, tuple, set, frozenset):
        items = [resolve_futures_to_states(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else kind(items)
    if kind is dict:
        out = {k: resolve_futures_to_states(v) for k, v in value.items()}
        return value if all(out[k] is v for k, v in value.items()) else out
    return value


def state_of_return(value: Any) -> st.State:
    """The final state of a flow run whose body returned ``value`` (futures already resolved)."""
    if isinstance(value, st.State) and value.task_run_id is None:
        return value
    if isinstance(value, types.GeneratorType):
        value = list(value)
    if isinstance(value, st.State) or st.is_state_iterable(value):
        states = [value] if isinstance(value, st.State) else list(value)
        counts = Counter(s.type for s in states)
        total = len(states)
        if counts[st.StateType.COMPLETED] == total:
            return st.State(st.StateType.COMPLETED, message="All states completed.", data=value)
        if counts[st.StateType.CANCELLED]:
            return st.State(st.StateType.CANCELLED, message=f"{counts[st.StateType.CANCELLED]}/{total} states "
                            "cancelled.", data=value)
        failed = counts[st.StateType.FAILED] + counts[st.StateType.CRASHED]
        message = f"{failed}/{total} states failed." if failed else f"{total - sum(s.is_final() for s in states)}" \
            f"/{total} states are not final."
        return st.State(st.StateType.FAILED, message=message, data=value)
    return st.Completed(value)
