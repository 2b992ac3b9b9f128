"""The current task run (``prefect.runtime.task_run``): ``id``, ``name``, ``task_name``,
``run_count``, ``parameters``. Read as module attributes."""

from __future__ import annotations

from typing import Any

FIELDS = ("id", "name", "task_name", "run_count", "parameters")
__all__ = list(FIELDS)  # read through __getattr__


def __getattr__(name: str) -> Any:
    if name not in FIELDS:
        raise AttributeError(f"daskflow.runtime.task_run has no attribute {name!r} (it has {', '.join(FIELDS)})")
    from daskflow.engine.worker.current_run import current_task_run, task_run_name, task_run_parameters

    ctx = current_task_run()
    if ctx is None:
        return {} if name == "parameters" else 0 if name == "run_count" else None
    if name == "id":
        return ctx.task_run_id
    if name == "name":
        return task_run_name(ctx)
    if name == "task_name":
        return ctx.task.name
    if name == "run_count":
        return ctx.run_count
    return task_run_parameters(ctx)


def __dir__() -> list[str]:
    return sorted(FIELDS)
