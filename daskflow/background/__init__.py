"""Background runs: ``t.delay()``, task workers and the daskflow server.

- ``daskflow server start``: a Dask scheduler with ``BackgroundPlugin`` (durable queue,
  run records and results in ``$DASKFLOW_HOME/background`` on its host).
- ``t.delay(x)`` / ``t.map(xs, deferred=True)``: enqueue runs and return futures at once.
- ``daskflow worker module:task`` / ``serve(task, limit=N)``: task workers.
- ``result(run_id)`` / ``state(run_id)``: read a background run from any later process.

Importing this package does not import distributed.
"""

from __future__ import annotations

from typing import Any

from daskflow.background.futures import BackgroundFuture, BackgroundFutures, result, state
from daskflow.background.store import list_records as runs

__all__ = ["BackgroundFuture", "BackgroundFutures", "result", "runs", "serve", "state"]


def serve(*tasks: Any, limit: int | None = None, scheduler: str | None = None, host: str | None = None) -> None:
    """Serve background runs of ``tasks`` in this process (see ``daskflow.background.worker.serve``).

    Example:
        >>> serve(send_email, resize_image, limit=8)  # doctest: +SKIP
    """
    from daskflow.background.worker import serve as _serve

    _serve(*tasks, limit=limit, scheduler=scheduler, host=host)
