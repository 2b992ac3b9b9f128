"""Task workers: Dask workers that serve some tasks, and the function they run.

``serve(task_a, task_b, limit=N)`` (and ``daskflow worker module:task ...``) starts a
Dask worker in this process advertising one resource per served task, named after
the task key, with amount ``limit``: Dask gives it only runs of those tasks (each run
needs 1 of its task's resource), and at most ``limit`` at once. The worker process has
imported the tasks, so their code is this process's code.

``run_background_chunk`` is the Dask task of a chunk of delayed runs of one task. It
asks the server which of its runs are not final yet (all of them, unless Dask runs the
chunk again after a worker died), then runs those one after the other: each reports
``Running``, runs through the engine's ``run_rows`` (retries, timeouts, hooks, cache:
exactly a normal run) and reports its final state, with the value when the task
persists results (or the exception). States go out on the worker's batched stream
several at a time (``ChunkEvents``, at most ``FLUSH_EVERY`` seconds late, a final
state only after the run's cache records are written); the last ones before the chunk
returns, so the server records them before Dask even learns the
chunk finished. It returns nothing: with ``fire_and_forget`` there is nobody to hold a
Dask result for.

When the server goes away, the worker reconnects to the same address and keeps
serving (the server resubmits unfinished runs when it comes back).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Callable, NamedTuple

import cloudpickle

from daskflow import config
from daskflow.background.plugin import OP
from daskflow.background.records import FinalState, Message, StateChange, to_wire
from daskflow.codes import CODE_STATES, OK_CODES
from daskflow.engine.api.tasks import Task
from daskflow.engine.core.envelope import ChunkSpec
from daskflow.engine.worker.resources import Meter
from daskflow.engine.worker.resources import enabled as measuring
from daskflow.engine.worker.run import run_rows
from daskflow.engine.worker.write_batch import WriteBatch, batched_cache_writes
from daskflow.exceptions import NoBackgroundServer
from daskflow.ids import background_run_name
from daskflow.runners import dask_internals

__all__ = ["ChunkEvents", "QueuedRun", "load_target", "run_background_chunk", "serve"]

logger = logging.getLogger("daskflow.background")
_tasks: dict[bytes, Task] = {}  # pickled task -> task, so each worker unpickles a task once
_tasks_lock = threading.Lock()
FLUSH_EVERY = 0.05  # seconds: the longest a run's state waits on the task worker before it is sent


class QueuedRun(NamedTuple):
    """One queued run of a chunk: its run id, pickled arguments (a row) and flow run."""

    run_id: str
    args: bytes
    flow_run_id: str | None


def _task(blob: bytes) -> Task:
    task = _tasks.get(blob)
    if task is None:
        task = cloudpickle.loads(blob)
        with _tasks_lock:
            if len(_tasks) > 256:
                _tasks.clear()
            _tasks[blob] = task
    return task


def persists(task: Task) -> bool:
    """Whether a background run of ``task`` keeps its value by run id."""
    p = task.options.persist_result
    return bool(p) if p is not None else task.caches


class ChunkEvents:
    """The state messages of a chunk's runs, sent on the worker's batched stream in groups.

    ``add`` (the task thread) buffers an event. A flusher thread, every ``FLUSH_EVERY``
    seconds, writes the cache records the runs staged (``WriteBatch``, one transaction)
    and then sends what was buffered, so a run reported final is cached too, and a long
    run does not hold back the states of the runs before it. ``close`` stops the
    flusher and sends the rest from the task thread (queued on the worker's loop
    before the chunk's own completion, so the server records the states first).
    """

    def __init__(self, worker: Any, batch: WriteBatch) -> None:
        self.worker, self.batch = worker, batch
        self.lock = threading.Lock()
        self.flushing = threading.Lock()  # one flush at a time: written, then sent, in order
        self.events: list[Message] = []  # Running states: sent at the next flush
        self.held: list[Message] = []  # final states: sent once their cache records are written
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._flusher, name="daskflow-chunk-states", daemon=True)
        self.thread.start()

    def add(self, event: Message) -> None:
        with self.lock:
            (self.held if type(event) is FinalState else self.events).append(event)

    def _flusher(self) -> None:
        while not self.stopped.wait(FLUSH_EVERY):
            self.flush()

    def flush(self) -> None:
        with self.flushing:
            with self.lock:
                held, self.held = self.held, []
                writes = self.batch.take()
            writes.flush()
            with self.lock:
                messages, self.events = self.events + held, []
            events = [to_wire(m) for m in messages]
            if events:
                try:
                    dask_internals.worker_send(self.worker, {"op": OP, "events": events})
                except RuntimeError:  # the worker's loop is closed: the server resubmits these runs
                    logger.warning("daskflow task worker: stopping; %d run state(s) not sent", len(events))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.flush()


def run_background_chunk(task_blob: bytes, runs: list[QueuedRun]) -> None:
    """Execute the runs of a chunk not final yet on a task worker; report their states to the server."""
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()
    address = worker.address
    runs = [QueuedRun(*r) for r in runs]
    try:
        todo = sync(worker.loop, worker.scheduler.daskflow_bg_todo, key=worker.get_current_task())
    except Exception:  # noqa: BLE001 - no answer: run them all (at-least-once)
        logger.warning("daskflow task worker: the server did not say which runs are left; running all %d",
                       len(runs), exc_info=True)
        todo = None
    if todo is not None:
        left = set(todo)
        runs = [r for r in runs if r.run_id in left]
    with batched_cache_writes() as batch:
        events = ChunkEvents(worker, batch)
        try:
            try:
                task = _task(task_blob)
            except Exception as exc:  # noqa: BLE001 - a task this worker cannot load fails its runs
                for run in runs:
                    _cannot_load(run.run_id, address, exc, events.add)
                return
            for run in runs:
                run_one(task, run, address, events.add)
        finally:
            events.close()


def _cannot_load(rid: str, address: str, exc: Exception, send: Callable[[Message], None]) -> None:
    message = f"the call could not be loaded on task worker {address}: {type(exc).__name__}: {exc}"
    send(StateChange(rid, "RUNNING", "Running", time.time(), "", address))
    send(FinalState(rid, "FAILED", "Failed", time.time(), message, error=traceback.format_exc(), run_count=1,
                    worker=address, result=_dumps_exc(RuntimeError(message))))


def run_one(task: Task, run: QueuedRun, address: str, send: Callable[[Message], None]) -> None:
    """Execute one delayed run of ``task``; ``send`` its Running and final states.

    The final state carries what the engine's envelope (``run_rows``' ``ChunkResult``)
    says of the run: its code, attempts (``run_count``), the states of its retries, its
    error, and the value or exception.
    """
    rid = run.run_id
    send(StateChange(rid, "RUNNING", "Running", time.time(), "", address))
    try:
        row = cloudpickle.loads(run.args)
    except Exception as exc:  # noqa: BLE001 - a call this worker cannot load fails its run
        message = f"the call could not be loaded on task worker {address}: {type(exc).__name__}: {exc}"
        send(FinalState(rid, "FAILED", "Failed", time.time(), message, error=traceback.format_exc(), run_count=1,
                        worker=address, result=_dumps_exc(RuntimeError(message))))
        return
    spec = ChunkSpec.single(task, uuid.UUID(rid).int, tuple(row), flow_run_id=run.flow_run_id,
                            name=background_run_name(task.name, rid))
    meter = Meter() if measuring() else None  # a run alone: as a chunk of one (not a hot path)
    try:
        res = run_rows(spec, [], meter=meter)
    finally:
        used = meter.finish() if meter is not None else None
    code = res.codes[0]
    final = FinalState(rid, CODE_STATES[code].type, CODE_STATES[code].name, res.ends[0] if res.ends else time.time(),
                       run_count=res.run_count(0), worker=address,
                       logs=getattr(res, "logs", None) or None,  # run logs not shipped while the run ran
                       resources=used)
    extra = res.history.get(0)
    if extra:  # retries: every state after the first Running, which was already reported
        final.history = list(extra[1:])
    if code in OK_CODES:
        if persists(task):
            try:
                final.result = cloudpickle.dumps(res.get_values()[0], protocol=5)
                final.persisted = True
            except Exception as exc:  # noqa: BLE001
                final.type, final.name = "FAILED", "Failed"
                final.message = (f"the result of task {task.name!r} cannot be serialized: "
                                 f"{type(exc).__name__}: {exc}")
                final.result = _dumps_exc(TypeError(final.message))
    else:
        state = res.state(0)
        final.message = state.message
        final.error = res.tracebacks.get(0) or state.message
        final.result = _dumps_exc(state.exception())
    send(final)


def _dumps_exc(exc: BaseException) -> bytes:
    try:
        return cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001
        return cloudpickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc} (exception not picklable)"))


# -- serving --------------------------------------------------------------------------------


def load_target(spec: str) -> Task:
    """The task named by ``"module:task"`` (``"pkg.mod:obj.attr"`` too); a clear error otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r}: expected 'module:task', e.g. 'myapp.tasks:send_email'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"{spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Task):
        raise ValueError(f"{spec!r}: {attr!r} is a {type(obj).__name__}, not a daskflow task (decorate it with @task)")
    return obj


def serve(*tasks: Task, limit: int | None = None, scheduler: str | None = None, host: str | None = None) -> None:
    """Serve background runs of ``tasks`` in this process until SIGTERM / Ctrl-C.

    Args:
        tasks: the tasks whose ``.delay()`` runs this worker takes.
        limit: how many runs at once (threads; default: the number of cores).
        scheduler: the server's address (default: ``DASKFLOW_SCHEDULER_ADDRESS``).
        host: the interface the worker listens on (default: 127.0.0.1 for a local server).

    Example:
        >>> from myapp.tasks import send_email, resize_image  # doctest: +SKIP
        >>> serve(send_email, resize_image, limit=8)           # doctest: +SKIP
    """
    if not tasks:
        raise ValueError("serve() needs at least one task")
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"serve() takes daskflow tasks, got {type(t).__name__}: {t!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"serve(): limit must be an int >= 1, got {limit!r}")
    address = scheduler or config.get("scheduler-address")
    if not address:
        raise NoBackgroundServer(
            "no daskflow server configured: start one with `daskflow server start` and set "
            "DASKFLOW_SCHEDULER_ADDRESS (e.g. tcp://127.0.0.1:8786), or pass scheduler=..."
        )
    nthreads = limit or os.cpu_count() or 1
    if host is None and any(h in address for h in ("127.0.0.1", "localhost")):
        host = "127.0.0.1"
    asyncio.run(_run_worker(address, nthreads, {t.task_key: nthreads for t in tasks}, host,
                            [t.name for t in tasks]))


async def _run_worker(address: str, nthreads: int, resources: dict[str, int], host: str | None,
                      names: list[str]) -> None:
    from distributed import Worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.ensure_future(stop.wait())
    while not stop.is_set():
        worker = Worker(address, nthreads=nthreads, resources=resources, host=host, dashboard=False,
                        name=f"daskflow-task-worker-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        starting = asyncio.ensure_future(worker.start())
        await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            starting.cancel()
            await worker.close(reason="daskflow worker stopped")
            break
        starting.result()
        print(f"daskflow task worker {worker.address} serving {', '.join(names)} from {address} "
              f"({nthreads} at a time)", flush=True)
        finished = asyncio.ensure_future(worker.finished())
        await asyncio.wait([finished, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            await worker.close(reason="daskflow worker stopped")
            break
        logger.warning("daskflow task worker: lost the server at %s; reconnecting", address)
    stopper.cancel()
