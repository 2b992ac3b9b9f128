"""daskflow: Prefect-3-style tasks and flows executed on Dask distributed.

Example:
    >>> from daskflow import flow, task
    >>> @task
    ... def double(x):
    ...     return 2 * x
    >>> double(21)
    42
"""

from __future__ import annotations

from daskflow.engine.flows import Flow, flow
from daskflow.engine.futures import MapFutures, TaskRunFuture, as_completed, wait
from daskflow.engine.inputs import allow_failure, quote, unmapped
from daskflow.engine.logging import get_run_logger
from daskflow.engine.retries import exponential_backoff
from daskflow.engine.tasks import Task, task
from daskflow.engine.transactions import transaction

__version__ = "0.1.0"


def __getattr__(name: str):
    # serve() needs distributed; `import daskflow` must not import it.
    if name == "serve":
        from daskflow.background import serve

        return serve
    raise AttributeError(f"module 'daskflow' has no attribute {name!r}")

__all__ = [
    "Flow",
    "MapFutures",
    "Task",
    "TaskRunFuture",
    "allow_failure",
    "as_completed",
    "exponential_backoff",
    "flow",
    "get_run_logger",
    "quote",
    "serve",
    "task",
    "transaction",
    "unmapped",
    "wait",
]
