"""The current flow run (``prefect.runtime.flow_run``): ``id``, ``name``, ``flow_name``,
``parameters``, ``run_count``, ``parent_flow_run_id``. Read as module attributes."""

from __future__ import annotations

from typing import Any

FIELDS = ("id", "name", "flow_name", "parameters", "run_count", "parent_flow_run_id")
__all__ = list(FIELDS)  # read through __getattr__


def __getattr__(name: str) -> Any:
    if name not in FIELDS:
        raise AttributeError(f"daskflow.runtime.flow_run has no attribute {name!r} (it has {', '.join(FIELDS)})")
    from daskflow.engine.worker.current_run import flow_run_field

    return flow_run_field(name)


def __dir__() -> list[str]:
    return sorted(FIELDS)
