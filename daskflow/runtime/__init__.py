"""The run the calling code belongs to, as ``prefect.runtime`` tells it.

``from daskflow.runtime import flow_run, task_run``; then ``flow_run.id``, ``flow_run.name``,
``flow_run.flow_name``, ``flow_run.parameters``, ``flow_run.run_count``,
``flow_run.parent_flow_run_id``, and ``task_run.id``, ``task_run.name``,
``task_run.task_name``, ``task_run.run_count``, ``task_run.parameters``. Valid in direct
calls, in runs on Dask workers (the flow run travels with each chunk) and in background
runs (no flow run: ``flow_run.id`` is None). Outside a run, ids and names are None and
parameters ``{}``, as in Prefect.

Example:
    >>> from daskflow.runtime import task_run
    >>> task_run.id is None  # outside a run
    True
"""

from daskflow.runtime import flow_run, task_run

__all__ = ["flow_run", "task_run"]
