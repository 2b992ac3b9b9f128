"""What ``daskflow.runtime`` reads: the task run and flow run the calling code belongs to.

Nothing here runs per run: a chunk sets its ``TaskRunContext`` once (with its spec and
upstream envelopes) and moves its index from run to run; a run's parameters are rebuilt
from the chunk's columns only when code asks for them. A flow run travels to workers as
the ``FlowRunInfo`` in each chunk's spec (``engine.core.context``), so the flow run's
id, name and (small) parameters are known wherever its task runs execute.
"""

from __future__ import annotations

from typing import Any

from daskflow.engine.core.context import (
    MAX_SHIPPED_PARAMETERS,
    TaskRunContext,
    current_flow_run_id,
    current_flow_run_info,
    flow_run_ctx,
    task_run_ctx,
)
from daskflow.codes import CRASHED, FAILED, TIMED_OUT
from daskflow.engine.core.input_reprs import input_reprs
from daskflow.engine.core.inputs import ALIGNED, BROADCAST, resolve

__all__ = ["current_task_run", "task_run_name", "task_run_parameters", "flow_run_field", "note_failed_inputs"]

_NOTED = (FAILED, TIMED_OUT, CRASHED)  # NotReady runs did not run: their inputs are the upstream's failure


def current_task_run() -> TaskRunContext | None:
    return task_run_ctx.get()


def task_run_name(ctx: TaskRunContext) -> str:
    return ctx.run_name


def task_run_parameters(ctx: TaskRunContext) -> dict[str, Any]:
    """The current run's parameters by name, rebuilt from its chunk's columns."""
    spec, deps = ctx.spec, ctx.deps or []
    if spec is None:
        return {}
    if spec.row is not None:
        row = spec.row
    else:
        row = tuple(_value_at(kind, payload, deps, ctx.index) for kind, payload in spec.columns)
    row = resolve(row, deps) if deps else row
    args, kwargs = ctx.task.split_row(row)
    return ctx.task.parameters_of(args, kwargs)


def note_failed_inputs(res: Any, ctx: TaskRunContext) -> None:
    """Record a short repr of the arguments of the chunk's failed runs (``res.inputs``), after its loop.

    Rebuilt from the chunk's columns as ``daskflow.runtime`` does, so the loop itself keeps
    no arguments; a run whose arguments cannot be rebuilt is simply left without.
    """
    index = ctx.index
    for i, code in enumerate(res.codes):
        if code in _NOTED and i not in res.inputs:
            ctx.index = i
            try:
                res.inputs[i] = input_reprs(task_run_parameters(ctx), ctx.task.redact)
            except Exception:  # noqa: BLE001, S112 - what failed is recorded anyway; its inputs are extra
                continue
    ctx.index = index


def _value_at(kind: Any, payload: Any, deps: list, i: int) -> Any:
    if kind is BROADCAST:
        return payload
    if kind is ALIGNED:
        return deps[payload].get_values()[i]
    return payload[i]


def flow_run_field(name: str) -> Any:
    """One field of the current flow run (None outside any; parameters ``{}``)."""
    if name == "id":
        return current_flow_run_id()
    flow = flow_run_ctx.get()
    if flow is not None:  # in the flow's own process: its live record
        run = flow.flow_run
        return {"name": run.name if run is not None else None, "flow_name": getattr(flow.flow, "name", None),
                "parameters": dict(flow.parameters), "run_count": run.run_count if run is not None else 0,
                "parent_flow_run_id": flow.parent.flow_run_id if flow.parent is not None else None}[name]
    info = current_flow_run_info()
    if info is None:
        return {} if name == "parameters" else None
    if name == "parameters":
        params = info.parameters
        if params is None:
            raise RuntimeError(
                f"daskflow.runtime.flow_run.parameters: the parameters of flow run {info.id} ({info.name!r}) "
                f"are larger than {MAX_SHIPPED_PARAMETERS // 1024} KB pickled (or not picklable), so they do not "
                "travel to the workers with each chunk; pass what the task needs as its arguments")
        return params
    return getattr(info, name)
