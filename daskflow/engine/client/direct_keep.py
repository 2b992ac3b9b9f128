"""Keeping the values of direct calls ``t(x)`` for ``flow-runs retry``: by bursts, written off the caller.

A direct call runs in the flow's own thread, one at a time, and a loop of them is the case
to make cheap: a trivial call costs ~15 µs in all. So nothing is built per call. A flow
run's ``KeepScope`` holds an open ``Burst``: consecutive completed calls of one task, the
calls ``{call}#{first}`` and on (``engine.worker.keep`` says how calls are named). A call
of the burst's task takes the next number from the burst (``take``) and, when it completes,
appends its value (``keep``): no name, no dict, no clock read per call. Anything else (a
call of another task, a failed call, a ``.submit()``/``.map()``/subflow of the flow run that
takes a number) closes the burst first (``settle``: the scope's counter takes over from it).

Every 256 kept calls or half a second, and when the flow run ends, the closed bursts are
handed to one writer thread per process (``flush``), which signs them as one record per
result storage (``cache.kept.KeptCallRuns``) and writes it: the calling thread queues, it
does not pickle, sign or commit. A flow run that ends waits for its records (``close``), so
a retry started after it returns finds them; a process killed meanwhile loses at most the
calls since the last batch written, which then run again on a retry, as before.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daskflow.cache import kept
from daskflow.cache.store import CacheWarning
from daskflow.codes import OK_CODES
from daskflow.engine.core.envelope import PlainRun

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.client.resume import KeepScope
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.engine.worker.keep import KeepSpec

BATCH_CALLS = 256  # kept calls handed to the writer at once, at most ...
BATCH_SECONDS = 0.5  # ... and at least this often while calls are made


@dataclass(slots=True, eq=False)
class Burst:
    """Consecutive completed direct calls of one task: calls ``first .. first+len(values)-1``."""

    task: Task
    call: str  # the calls' name without the number: "{subflow path}{task name}"
    first: int
    next: int  # the number the next call of the task takes (a failed call leaves a gap)
    values: list
    storage: str | None  # the task's result storage (None: the flow's)


def take(scope: KeepScope, task: Task) -> int:
    """The number of a direct call of ``task`` about to run in ``scope``'s flow run."""
    burst = scope.burst
    if burst is not None and burst.task is task:
        number = burst.next
        burst.next = number + 1
        return number
    return scope.next_number(task.name)


def keep(scope: KeepScope, task: Task, number: int, res: ChunkResult | PlainRun, now: float) -> None:
    """Keep the value of call ``number`` of ``task`` if it completed; hand a batch to the writer
    when one is due (``now``: the call's start, a ``time.time()`` reading)."""
    if type(res) is PlainRun:  # the common case: it completed
        completed, value = True, res.value
    else:
        completed = res.codes[0] in OK_CODES
        value = res.values[0] if completed else None  # type: ignore[index]
    burst = scope.burst
    if completed and burst is not None and burst.task is task and number == burst.first + len(burst.values):
        burst.values.append(value)
    else:
        _open(scope, task, number, completed, value)
    scope.held += 1
    if scope.held >= BATCH_CALLS or now - scope.flushed > BATCH_SECONDS:
        flush(scope, now)


def _open(scope: KeepScope, task: Task, number: int, completed: bool, value: Any) -> None:
    """Close the open burst; start one at call ``number`` if it completed and values are kept."""
    settle(scope)
    if not completed or scope.keep_seconds <= 0:
        return
    scope.burst = Burst(task, scope.prefix + task.name, number, max(number + 1, scope.calls.get(task.name, 0)),
                        [value], task.options.result_storage)


def settle(scope: KeepScope) -> None:
    """Close the open burst: its task's calls take their numbers from the scope's counter again."""
    burst = scope.burst
    if burst is None:
        return
    scope.burst = None
    name = burst.task.name
    if burst.next > scope.calls.get(name, 0):
        scope.calls[name] = burst.next
    scope.bursts.append(burst)


def flush(scope: KeepScope, now: float) -> None:
    """Hand the bursts kept since the last flush to the writer: one record per result storage."""
    settle(scope)
    scope.flushed, scope.held = now, 0
    bursts, scope.bursts = scope.bursts, []
    by_storage: dict[str | None, list[Burst]] = {}
    for burst in bursts:
        by_storage.setdefault(burst.storage, []).append(burst)
    for storage, group in by_storage.items():
        spec = scope.spec_for(f"{group[0].call}#{group[0].first}", storage, single=True)
        record = kept.KeptCallRuns([b.call for b in group], [b.first for b in group], [b.values for b in group])
        _writer.put((spec, record))
        scope.handed = True


def close(scope: KeepScope, now: float) -> None:
    """The flow run ends: its kept calls written before it returns."""
    flush(scope, now)
    if scope.handed:
        scope.handed = False
        _writer.wait()


class _Writer:
    """One thread per process that signs and writes kept calls, in the order they were handed."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.pid = 0

    def put(self, job: Any) -> None:
        self.jobs.put(job)
        if self.pid != os.getpid():  # first use, or a forked child: no thread here yet
            with self.lock:
                if self.pid != os.getpid():
                    self.pid = os.getpid()
                    threading.Thread(target=self._run, name="daskflow-keep-calls", daemon=True).start()

    def wait(self) -> None:
        """Return once everything handed so far is written."""
        done = threading.Event()
        self.put(done)
        done.wait()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if isinstance(job, threading.Event):
                job.set()
            else:
                write(*job)


_writer = _Writer()
os.register_at_fork(after_in_child=_writer.__init__)  # a forked child: none of its parent's jobs, a new lock


def write(spec: KeepSpec, record: kept.KeptCallRuns) -> None:
    """One signed record of kept direct calls (never raises: not kept only means they run
    again on a retry)."""
    try:
        store = spec.store()
        blob = kept.encode(record, "direct calls", spec.keep_seconds, store.secret)
        store.put_many([(kept.chunk_key(spec.flow_run_id, f"direct:{spec.call}", 0, spec.attempt), blob)])
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"direct calls of flow run {spec.flow_run_id} could not be kept for a retry "
                      f"({type(exc).__name__}: {exc})", CacheWarning, stacklevel=2)
