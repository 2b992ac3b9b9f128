"""Task runners: where runs execute. ``DaskTaskRunner`` is the default."""

from __future__ import annotations

import atexit
import sys
import threading
from typing import TYPE_CHECKING, Any

from daskflow import config
from daskflow.runners.base import LOCAL_HOST, Host, TaskRunner
from daskflow.runners.threads import ThreadPoolTaskRunner

config.register_defaults()  # runners live on dask: `dask.config.get("daskflow....")` sees the defaults

if TYPE_CHECKING:
    from daskflow.runners.dask import DaskTaskRunner

__all__ = ["DaskLockManager", "DaskTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]

_default: TaskRunner | None = None
_worker: TaskRunner | None = None
_flows: TaskRunner | None = None  # the runner of flows without a task_runner (see flow_runner)
_flows_made_with: Any = None  # the settings it was made with
_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name == "DaskTaskRunner":
        from daskflow.runners.dask import DaskTaskRunner

        return DaskTaskRunner
    if name == "DaskLockManager":  # locks kept by a Dask scheduler (transactions' isolation)
        from daskflow.runners.locks import DaskLockManager

        return DaskLockManager
    raise AttributeError(name)


def current_host() -> Host:
    """Where code outside any call that was handed a host runs: inside a Dask task, its
    worker's host; else this process (cheap when distributed is not loaded)."""
    if "distributed" not in sys.modules:
        return LOCAL_HOST
    from daskflow.runners.dask import current_host as dask_host

    return dask_host()


def new_default_runner() -> TaskRunner:
    """A fresh runner of the configured kind (``daskflow.default-task-runner``)."""
    kind = config.get("default-task-runner") or "dask"
    if kind == "threads":
        return ThreadPoolTaskRunner()
    if kind != "dask":
        raise ValueError(f"daskflow.default-task-runner must be 'dask' or 'threads', got {kind!r}")
    from daskflow.runners.dask import DaskTaskRunner

    return DaskTaskRunner()


def default_runner() -> TaskRunner:
    """The process-wide runner for submissions outside a flow; started on first use."""
    global _default
    with _lock:
        if _default is None or _default.closed:
            _default = new_default_runner()
        return _default


def flow_runner() -> TaskRunner:
    """The runner of top-level flows without a ``task_runner``: one per process, reused.

    Sequential flows of a script or a notebook share it, so only the first pays for starting
    the embedded LocalCluster (~1 s on a quiet machine, 5-7 s on a busy one); it is shut down
    at exit, or when a flow is interrupted. It is made again when the settings it was made with
    changed (``dask.config``, ``DASKFLOW_HOME``, ``DASKFLOW_SCHEDULER_ADDRESS``): settings made
    before a LocalCluster starts reach its workers, so a flow after a change gets a cluster
    that sees it, as it did when every flow started its own.
    """
    global _flows, _flows_made_with
    settings = _settings()
    with _lock:
        old = None
        if _flows is None or _flows.closed or not _same_settings(_flows_made_with, settings):
            old, _flows = _flows, new_default_runner()
        _flows_made_with = settings
        runner = _flows
    if old is not None and not old.closed:
        old.shutdown()
    return runner


def _settings() -> dict[str, Any]:
    """What a runner's cluster was made with: daskflow's settings, distributed's (once
    imported: importing it adds its defaults) and the environment aliases."""
    import copy
    import os

    import dask.config

    out = {name: copy.deepcopy(dask.config.config.get(name)) for name in ("daskflow", "distributed")
           if name in dask.config.config}
    out["env"] = (os.environ.get("DASKFLOW_HOME"), os.environ.get("DASKFLOW_SCHEDULER_ADDRESS"))
    return out


def _same_settings(before: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    return before is not None and all(before[k] == now[k] for k in before.keys() & now.keys())


def set_default_runner(runner: TaskRunner | None) -> TaskRunner | None:
    """Replace the process-wide default runner (shutting the old one down); returns the old one."""
    global _default
    with _lock:
        old, _default = _default, runner
    if old is not None and old is not runner:
        old.shutdown()
    return old


def worker_runner() -> TaskRunner:
    """Inside a Dask task: a runner that submits to the same cluster."""
    global _worker
    with _lock:
        if _worker is None:
            from daskflow.runners.dask import DaskTaskRunner

            _worker = DaskTaskRunner()
        return _worker


@atexit.register
def _shutdown_default() -> None:
    for runner in (_default, _flows):
        if runner is not None:
            try:
                runner.shutdown()
            except Exception:
                pass
