"""daskflow: Prefect-3-style tasks and flows executed on Dask distributed.

Example:
    >>> from daskflow import flow, task
    >>> @task
    ... def double(x):
    ...     return 2 * x
    >>> double(21)
    42

The public names load on first use (PEP 562), so that a reader of the stores (the
CLI, ``import daskflow.store.runs``) does not load the engine, and ``import daskflow``
never loads distributed.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

_HOMES = {
    "Flow": "daskflow.engine.api.flows",
    "flow": "daskflow.engine.api.flows",
    "MapFutures": "daskflow.engine.client.futures",
    "TaskRunFuture": "daskflow.engine.client.futures",
    "as_completed": "daskflow.engine.client.futures",
    "wait": "daskflow.engine.client.futures",
    "allow_failure": "daskflow.engine.core.inputs",
    "quote": "daskflow.engine.core.inputs",
    "unmapped": "daskflow.engine.core.inputs",
    "get_run_logger": "daskflow.engine.worker.logging",
    "exponential_backoff": "daskflow.engine.core.retries",
    "Task": "daskflow.engine.api.tasks",
    "task": "daskflow.engine.api.tasks",
    "transaction": "daskflow.engine.worker.transactions",
    "create_link_artifact": "daskflow.engine.worker.artifacts",
    "create_markdown_artifact": "daskflow.engine.worker.artifacts",
    "create_table_artifact": "daskflow.engine.worker.artifacts",
    "serve": "daskflow.background",
    "concurrency": "daskflow.engine.worker.limits",
    "rate_limit": "daskflow.engine.worker.limits",
}

__all__ = [
    "Flow",
    "MapFutures",
    "Task",
    "TaskRunFuture",
    "allow_failure",
    "as_completed",
    "concurrency",
    "create_link_artifact",
    "create_markdown_artifact",
    "create_table_artifact",
    "exponential_backoff",
    "flow",
    "get_run_logger",
    "quote",
    "rate_limit",
    "serve",
    "task",
    "transaction",
    "unmapped",
    "wait",
]

if _TYPE_CHECKING:
    from daskflow.background import serve
    from daskflow.engine.api.flows import Flow, flow
    from daskflow.engine.api.tasks import Task, task
    from daskflow.engine.client.futures import MapFutures, TaskRunFuture, as_completed, wait
    from daskflow.engine.core.inputs import allow_failure, quote, unmapped
    from daskflow.engine.core.retries import exponential_backoff
    from daskflow.engine.worker.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
    from daskflow.engine.worker.limits import concurrency, rate_limit
    from daskflow.engine.worker.logging import get_run_logger
    from daskflow.engine.worker.transactions import transaction


def __getattr__(name: str) -> _Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'daskflow' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
