"""``ThreadPoolTaskRunner``: runs calls in a local thread pool, without Dask."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Any, Callable

from daskflow.runners.base import TaskRunner


class ThreadPoolTaskRunner(TaskRunner):
    """Run tasks in threads of this process: no cluster, no serialization.

    Example:
        >>> @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))  # doctest: +SKIP
        ... def pipeline(): ...
    """

    serializes = False

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"

    def duplicate(self) -> ThreadPoolTaskRunner:
        return ThreadPoolTaskRunner(self.max_workers)

    @property
    def pool(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self.closed = False
                self._pool = cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="daskflow")
            return self._pool

    def total_threads(self) -> int:
        return self.max_workers

    def submit_many(self, fn: Callable[..., Any], *iterables: list, keys: list[str]) -> list[Any]:
        return [self._submit_after(fn, args) for args in zip(*iterables)]

    def _submit_after(self, fn: Callable[..., Any], args: tuple) -> cf.Future:
        """Start the call once the handles in its list arguments are done (no pool thread blocks)."""
        out: cf.Future = cf.Future()
        waiting = [d for a in args if type(a) is list for d in a if isinstance(d, cf.Future)]
        remaining = [len(waiting)]
        lock = threading.Lock()

        def job(values: tuple) -> None:
            if not out.set_running_or_notify_cancel():
                return  # cancelled while queued
            try:
                out.set_result(fn(*values))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever gathers it
                out.set_exception(exc)

        def start(_: Any = None) -> None:
            if waiting:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] > 0:
                        return
            try:
                values = tuple(_resolved(a) for a in args)
            except BaseException as exc:  # an upstream call failed or was cancelled
                if out.set_running_or_notify_cancel():
                    out.set_exception(exc)
                return
            self.pool.submit(job, values)

        if not waiting:
            start()
        for d in waiting:
            d.add_done_callback(start)
        return out

    def cancel(self, handle: Any) -> bool:
        return handle.cancel()

    def wait(self, handles: list[Any], timeout: float | None) -> None:
        _, not_done = cf.wait(handles, timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} task runs did not finish within {timeout}s")

    def gather(self, handles: list[Any]) -> list[Any]:
        out: list = []
        for h in handles:
            try:
                out.append(h.result())
            except BaseException as exc:  # noqa: BLE001 - the caller decides what it means
                out.append(exc)
        return out

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=wait, cancel_futures=not wait)
                self._pool = None
        self.closed = True



def _resolved(arg: Any) -> Any:
    """A list argument with the values of its handles in their place."""
    if type(arg) is not list:
        return arg
    return [d.result() if isinstance(d, cf.Future) else d for d in arg]
