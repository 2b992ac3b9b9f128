"""Task runners: where runs execute. ``DaskTaskRunner`` is the default."""

from __future__ import annotations

import atexit
import sys
import threading
from typing import TYPE_CHECKING, Any

from daskflow import config
from daskflow.runners.base import LOCAL_HOST, Host, TaskRunner
from daskflow.runners.threads import ThreadPoolTaskRunner

if TYPE_CHECKING:
    from daskflow.runners.dask import DaskTaskRunner

__all__ = ["DaskLockManager", "DaskTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]

_default: TaskRunner | None = None
_worker: TaskRunner | None = None
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
    if _default is not None:
        try:
            _default.shutdown()
        except Exception:
            pass
