"""Futures of background runs: ``BackgroundFuture`` and the reads by run id (``result``, ``state``).

A background future asks the server (or, without one, the run store) for its run's final
state by run id; many futures of one server are read in one call (``BackgroundFutures``).
A call still waiting here for its upstream runs (``client.Deferred``) is sent, or
cancelled, through the future.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, TypeVar

import cloudpickle

from daskflow import config
from daskflow.background import store
from daskflow.background.records import Outcome, outcome_from_wire
from daskflow.engine.core import states as st
from daskflow.exceptions import (
    ResultNotPersisted,
    UnfinishedRun,
    UnknownRun,
)

if TYPE_CHECKING:
    from daskflow.background.client import Deferred


__all__ = ["BackgroundFuture", "BackgroundFutures", "result", "state"]

R = TypeVar("R")


class BackgroundFuture(Generic[R]):
    """The future of a background run: reads its state and persisted result by run id.

    Example:
        >>> fut = send_email.delay("ada@example.com")   # doctest: +SKIP
        >>> fut.state.name                               # doctest: +SKIP
        'Scheduled'
        >>> fut.result(timeout=30)                       # doctest: +SKIP
        'sent'
    """

    __slots__ = ("task_run_id", "address", "task_name", "_final", "_deferred")

    def __init__(self, task_run_id: str, address: str | None = None, task_name: str = "") -> None:
        self.task_run_id = task_run_id
        self.address = address
        self.task_name = task_name
        self._final: Outcome | None = None
        self._deferred: Deferred | None = None  # a call waiting here for its upstream runs

    def _sent(self, timeout: float | None) -> bool:
        """Whether the server has this run: waits up to ``timeout`` for a call still held here.

        A run that ended here (its upstream failed, or cancelled before it was sent) is
        final at once, and not on the server.
        """
        deferred = self._deferred
        if deferred is None:
            return True
        if not deferred.sent.wait(timeout):
            return False
        if deferred.outcome is not None:
            self._final = deferred.outcome
            return False
        self._deferred = None
        return True

    def __repr__(self) -> str:
        return f"BackgroundFuture({self.task_name!r}, task_run_id={self.task_run_id!r})"

    @property
    def state(self) -> st.State:
        """The latest known state (Scheduled until the server knows more)."""
        if self._final is None and not self._sent(0) and self._final is None:
            return st.Scheduled()  # held here until its upstream runs are final
        if self._final is not None:
            return _to_state(self._final)
        rec = _get([self.task_run_id], self.address).get(self.task_run_id)
        if rec is None:
            return st.Scheduled()
        if store.is_final(rec) and self._fetch(0) is not None:
            return _to_state(self._final)  # type: ignore[arg-type]
        return _to_state(Outcome(rec, None))

    def done(self) -> bool:
        return self._final is not None or self._fetch(0) is not None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the run is final (or ``timeout`` seconds passed); never raises for failure."""
        self._fetch(timeout)

    def add_done_callback(self, fn: Callable[[BackgroundFuture[R]], None]) -> None:
        """Call ``fn(future)`` once the run is final: at once if it is, else from a helper thread.

        The helper thread waits on the server (one long poll); a callback that raises is
        logged. Meant for a few futures at a time, not for every run of a large map.
        """
        def call() -> None:
            try:
                fn(self)
            except Exception:
                logging.getLogger("daskflow").exception("done callback of background run %s raised",
                                                        self.task_run_id)

        if self._final is not None:
            call()
            return

        def wait_then_call() -> None:
            try:
                while self._fetch(60) is None:
                    pass
            except Exception:  # an unknown run, a server gone for good: say so, call nothing
                logging.getLogger("daskflow").exception("background run %s: cannot wait for it", self.task_run_id)
                return
            call()

        threading.Thread(target=wait_then_call, name=f"daskflow-done-{self.task_run_id[:8]}", daemon=True).start()

    def record(self, timeout: float | None = None) -> dict:
        """The run's record (``id, name, state, history, worker, ...``), once final."""
        if self._fetch(timeout) is None:
            raise TimeoutError(f"background run {self.task_run_id} is not final after {timeout}s")
        return self._final.record  # type: ignore[union-attr]

    def history(self) -> list[st.State]:
        """Every state the run went through, oldest first (waits for the final one).

        As ``TaskRunFuture.history()``; ``record(timeout)`` waits for a bounded time.
        """
        return [st.State(st.StateType[h["type"]], h["name"], message=h["message"], timestamp=h["timestamp"])
                for h in self.record()["history"]]

    @property
    def run_count(self) -> int:
        """How many times the run's body was attempted (waits for the final state).

        The count the server recorded from the task worker (``codes.run_count_of``'s rule:
        a retried run counts each attempt; a run that never started, e.g. Cancelled or
        Cached, counts 0), the same number ``daskflow runs show`` prints.
        """
        return self.record()["run_count"]

    def known_to_server(self) -> bool:
        """Whether the server (or, without one, this host's background store) has this run."""
        return self.task_run_id in _get([self.task_run_id], self.address)

    def cancel(self) -> bool:
        """Cancel the run if no task worker has taken it yet; True if it will not run.

        A run still queued (Scheduled, or Pending on a task worker that has not started
        its chunk) ends ``Cancelled`` on the server: no task worker executes it, and
        ``.result()`` raises ``CancelledRun``. A run a task worker has taken (Running, or
        waiting behind other runs of its chunk) is not stopped, and ``cancel()`` returns
        False: Dask cannot interrupt a task that runs on a worker, and the chunk carries
        other runs. False too for a final run, and without a server (a future read from
        the local store). As ``TaskRunFuture.cancel()``, it does not wait for the state:
        ``.state`` and ``.result()`` show it.

        Example:
            >>> fut = send_email.delay("ada@example.com")  # doctest: +SKIP
            >>> fut.cancel(), fut.state.name               # doctest: +SKIP
            (True, 'Cancelled')
        """
        if self._deferred is not None and self._deferred.cancel(self):
            self._sent(0)
            return True
        if self._final is not None or self.address is None or not self._sent(None):
            return False
        return self.task_run_id in _call(self.address, "daskflow_bg_cancel", 30, run_ids=[self.task_run_id])

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's persisted value; raises its exception if it failed (``raise_on_failure``).

        Raises ``TimeoutError`` if it is not final after ``timeout`` seconds, and
        ``ResultNotPersisted`` if it completed but its task does not persist results.
        """
        if self._fetch(timeout) is None:
            raise TimeoutError(f"background run {self.task_run_id} ({self.task_name}) is not final "
                               f"after {timeout}s")
        return _result(self._final, raise_on_failure)  # type: ignore[arg-type]

    @staticmethod
    def wait_many(futures: Iterable[BackgroundFuture], timeout: float | None = None) -> None:
        """Wait for many background runs with one request per server (``daskflow.wait`` uses it)."""
        _fetch_many(futures, timeout)

    def _fetch(self, timeout: float | None) -> Outcome | None:
        if self._final is None and self._deferred is not None:
            t0 = time.monotonic()
            if not self._sent(timeout):
                return self._final
            timeout = None if timeout is None else max(0.0, timeout - (time.monotonic() - t0))
        if self._final is None:
            got = _wait({self.task_run_id: self}, self.address, timeout).get(self.task_run_id)
            if got is not None:
                self._final = got
        return self._final


class BackgroundFutures(list):
    """The futures of ``t.map(..., deferred=True)``: a list with ``result()`` and ``wait()``."""

    def wait(self, timeout: float | None = None) -> None:
        _fetch_many(self, timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list:
        _fetch_many(self, timeout)
        missing = [f for f in self if f._final is None]
        if missing:
            raise TimeoutError(f"{len(missing)} of {len(self)} background runs not final after {timeout}s")
        return [_result(f._final, raise_on_failure) for f in self]


def _fetch_many(futures: Iterable[BackgroundFuture], timeout: float | None) -> None:
    by_address: dict[str | None, dict[str, BackgroundFuture]] = {}
    for f in futures:
        if f._final is None:
            by_address.setdefault(f.address, {})[f.task_run_id] = f
    deadline = None if timeout is None else time.monotonic() + timeout
    for group in by_address.values():
        for rid, f in list(group.items()):
            if f._deferred is not None and not f._sent(None if deadline is None
                                                     else max(0.0, deadline - time.monotonic())):
                del group[rid]  # still held here (timeout), or ended here
    for address, group in by_address.items():
        if not group:
            continue
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        for rid, got in _wait(group, address, left).items():
            group[rid]._final = got


def _wait(group: dict[str, Any], address: str | None, timeout: float | None) -> dict[str, Outcome]:
    """The outcomes of the runs in ``group`` that are final within ``timeout``."""
    ids = list(group)
    if address is None:
        return {rid: v for rid, v in store.read_records(ids, results=True).items() if store.is_final(v.record)}
    raw = _call(address, "daskflow_bg_wait", timeout, run_ids=ids, timeout=timeout)
    unknown = raw.pop("unknown", None)
    if unknown:
        raise UnknownRun(f"the daskflow server at {address} has no background run "
                         f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    return {rid: outcome_from_wire(item) for rid, item in raw.items()}


def _get(ids: list[str], address: str | None) -> dict[str, dict]:
    if address is None:
        return {rid: v.record for rid, v in store.read_records(ids).items()}
    return {rid: store.unpack(rec) for rid, rec in _call(address, "daskflow_bg_get", 30, run_ids=ids).items()}


def _call(address: str, handler: str, patience: float | None, **kwargs: Any) -> Any:
    """Call a server handler; ride out a server restart for ``patience`` seconds (None: forever)."""
    from distributed.comm.core import CommClosedError

    deadline = None if patience is None else time.monotonic() + patience + 5
    while True:
        from daskflow.background.client import server_link  # the module that sends calls, above this one

        link = server_link(address)
        try:
            return link.client.sync(getattr(link.client.scheduler, handler), **kwargs)
        except (OSError, CommClosedError):
            if deadline is not None and time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # the server is restarting: try again shortly


def _to_state(outcome: Outcome) -> st.State:
    rec, blob = outcome
    type_ = st.StateType[rec["state_type"]]
    data = cloudpickle.loads(blob) if blob is not None else None
    return st.State(type_, rec["state"], message=rec["history"][-1]["message"] if rec["history"] else "",
                    data=data, timestamp=rec["history"][-1]["timestamp"] if rec["history"] else None)


def _result(outcome: Outcome, raise_on_failure: bool) -> Any:
    state = _to_state(outcome)
    rec = outcome.record
    if state.is_completed() and not rec.get("persisted"):
        raise ResultNotPersisted(
            f"background run {rec['id']} of task {rec['task_name']!r} completed, but its value was not kept: "
            "decorate the task with @task(persist_result=True) to read results of background runs")
    return state.value(raise_on_failure)


def result(task_run_id: str, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
    """The persisted result of a background run, by run id, from any later process.

    Asks the configured server (``DASKFLOW_SCHEDULER_ADDRESS``), waiting up to
    ``timeout`` seconds; without one, reads the store of this host (the server's).

    Example:
        >>> daskflow.background.result("0b7c...", timeout=10)  # doctest: +SKIP
        'sent'
    """
    fut: BackgroundFuture = BackgroundFuture(task_run_id, config.get("scheduler-address") or None)
    if fut._fetch(timeout) is None:
        if fut.address is None:
            if not store.read_records([task_run_id]):
                raise UnknownRun(f"no background run {task_run_id} in {store.path()}")
            raise UnfinishedRun(f"background run {task_run_id} has no final state yet in {store.path()}")
        raise TimeoutError(f"background run {task_run_id} is not final after {timeout}s")
    return _result(fut._final, raise_on_failure)  # type: ignore[arg-type]


def state(task_run_id: str) -> st.State:
    """The latest known state of a background run, by run id."""
    return BackgroundFuture(task_run_id, config.get("scheduler-address") or None).state
