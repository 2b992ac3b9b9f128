"""The delaying side: ``t.delay()``, ``t.map(..., deferred=True)`` and background futures.

``delay`` binds and checks the arguments (a bad call fails here, naming the task),
pickles them (the task itself is pickled once per task object), gives the run an id,
and appends the call to a per-server buffer; the first call into an empty buffer
schedules one flush ``FLUSH_DELAY`` (2 ms) later on the client's event loop, which
sends every buffered call in one message on the client's batched stream. Nothing waits for the server: ``.delay()``
costs a pickle and a list append. The server makes the call durable (LMDB) before
it submits the run. Buffered calls are flushed when the process exits.

A ``BackgroundFuture`` knows only its run id and server address: ``.result()`` asks
the server to wait for the final state (event-driven on the server, no polling) and
reads the persisted value or exception it returns; ``.state`` asks for the latest
record; ``.run_count`` and ``.history()`` read the final record, as a task-run
future's do; ``.cancel()`` asks the server to cancel the run if no task worker has taken
it. Without a configured server they read the local store
(``$DASKFLOW_HOME/background``), which is what a later process on the server's host
does with ``daskflow.background.result(run_id)``.
"""

from __future__ import annotations

import atexit
import pickle
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import cloudpickle

from daskflow import config
from daskflow.background.records import Call, Outcome, calls_to_wire
from daskflow.engine.client.refs import collect_refs
from daskflow.engine.client.submit import plan_columns
from daskflow.engine.core.context import current_flow_run_id
from daskflow.engine.core.inputs import ATOMS, BROADCAST, UpstreamNotCompleted, quote, resolve
from daskflow.exceptions import (
    CancelledRun,
    NoBackgroundServer,
    ParameterSerializationError,
    UpstreamFailed,
)
from daskflow.ids import background_run_name, new_run_base, run_id
from daskflow.runners import dask_internals

if TYPE_CHECKING:
    from distributed import Client

    from daskflow.engine.api.tasks import Task

__all__ = ["delay", "delay_map", "disconnect"]

R = TypeVar("R")
FLUSH_DELAY = 0.002  # seconds: delayed calls made meanwhile travel in the same message
_HOW = ("start one with `daskflow server start` (it prints its address) and set "
        "DASKFLOW_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786 (or the dask config key daskflow.scheduler-address)")


# -- delaying --------------------------------------------------------------------------------


class _Link:
    """This process's connection to one server: a client and a buffer of delayed calls."""

    def __init__(self, address: str) -> None:
        from daskflow.runners.clients import shared_client

        try:
            self.client: Client = shared_client(address, {"timeout": config.get("background.connect-timeout")
                                                           or "10s"})
        except (OSError, TimeoutError) as exc:
            raise NoBackgroundServer(f"no daskflow server answers at {address} ({exc}); {_HOW}") from None
        from daskflow.background.plugin import PLUGIN_NAME, BackgroundPlugin

        # A plain `dask scheduler` works too: it gets the plugin on first use.
        if not self.client.run_on_scheduler(_has_plugin, PLUGIN_NAME):
            self.client.register_plugin(BackgroundPlugin(), name=PLUGIN_NAME)
        self.address = address
        self._buf: list[Call] = []
        self._armed = False  # a flush is scheduled
        self._lock = threading.Lock()

    def send(self, item: Call) -> None:
        with self._lock:
            self._buf.append(item)
            if self._armed:
                return
            self._armed = True
        # Waking the event loop costs a socket write (~30 µs): once per FLUSH_DELAY at most.
        self.client.loop.add_callback(self._arm)

    def _arm(self) -> None:  # on the client's event loop
        self.client.loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:  # on the client's event loop
        with self._lock:
            items, self._buf = self._buf, []
            self._armed = False
        if items:
            from daskflow.background.plugin import OP

            calls, tasks = calls_to_wire(items)  # each pickled task travels once per message
            dask_internals.send_to_scheduler(self.client, {"op": OP, "enqueue": calls, "tasks": tasks})

    def flush(self) -> None:
        """Hand buffered calls to the batched stream and let it send them (at exit)."""
        async def flush() -> None:
            self._flush()
            await dask_internals.sent(self.client)  # messages that went by RPC (no batched stream)

        if self._buf and self.client.status == "running":
            self.client.sync(flush)


def _has_plugin(name: str, dask_scheduler: Any = None) -> bool:
    return name in dask_scheduler.plugins


_links: dict[str, _Link] = {}
_links_lock = threading.Lock()
_task_blobs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def server_link(address: str | None = None) -> _Link:
    """This process's connection to the daskflow server at ``address`` (the configured one by default)."""
    address = address or config.get("scheduler-address")
    if not address:
        raise NoBackgroundServer(f"background runs need a daskflow server and none is configured: {_HOW}")
    link = _links.get(address)
    if link is None or link.client.status in ("closing", "closed"):
        with _links_lock:
            link = _links.get(address)
            if link is None or link.client.status in ("closing", "closed"):
                if not _links:
                    # Registered after the shared clients' closer, so it runs before it (LIFO):
                    # import that closer's module first, whatever was imported before.
                    import daskflow.runners.dask  # noqa: F401

                    atexit.register(_flush_links)
                link = _links[address] = _Link(address)
    return link


def disconnect(address: str) -> None:
    """Flush and close this process's connection to the server at ``address`` (if any)."""
    from daskflow.runners import clients

    with _links_lock:
        link = _links.pop(address, None)
    if link is not None:
        try:
            link.flush()
        except Exception:  # noqa: BLE001 - the server may be gone
            pass
    clients.close_shared_client(address)


def _flush_links() -> None:
    _wait_deferred()
    for link in list(_links.values()):
        try:
            link.flush()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _task_blob(task: Task) -> bytes:
    cached = _task_blobs.get(task)
    if cached is not None and cached[0] is task.options:
        return cached[1]
    blob = cloudpickle.dumps(task, protocol=5)
    _task_blobs[task] = (task.options, blob)
    return blob


def _refs(value: Any, ups: list) -> Any:
    """``value`` with its task-run futures replaced by ``Ref``s (their chunks appended to ``ups``).

    Costs no wait: the engine's own collection, so ``allow_failure``/``quote``/``unmapped``
    mean what they mean for ``.submit()``. A background future stays as it is (``_resolve``
    waits for it).
    """
    if type(value) in ATOMS or isinstance(value, (BackgroundFuture, BackgroundFutures)):
        return value
    return collect_refs(value, {}, ups)


def _waits(value: Any, ups: list) -> bool:
    """Whether ``value`` (as ``_refs`` left it) has upstream runs to wait for."""
    return bool(ups) or isinstance(value, (BackgroundFuture, BackgroundFutures))


def _resolve(task: Task, value: Any, ups: list) -> Any:
    """``value`` (as ``_refs`` left it) with its upstream values in place: waits for them."""
    if isinstance(value, (BackgroundFuture, BackgroundFutures)):
        return value.result()
    if not ups:
        return value
    try:
        return resolve(value, [chunk.outcome() for chunk in ups])
    except UpstreamNotCompleted as exc:
        raise UpstreamFailed(f"task {task.name!r}: cannot delay the run: {exc.message}") from None


# -- calls that wait for their upstream runs -------------------------------------------------
#
# ``.delay(future)`` returns at once: the call gets its run id and future now, and a helper
# thread of this process sends it once its upstream runs are final (the server learns of the
# run only then; until then its future reads Scheduled and waits). An upstream that did not
# complete ends the run here, never sent: its future is final ``NotReady`` and raises
# ``UpstreamFailed`` naming the upstream, as ``.delay()`` itself did before. At exit the
# process waits for such calls (their upstreams are runs of this process) before it flushes.

_DEFERRED_THREADS = 16  # calls waiting at once; more queue behind them (their upstreams still run)
_deferring: Any = None  # the helper pool, made on first use
_deferring_lock = threading.Lock()
_in_flight: set[Deferred] = set()


class Deferred:
    """A delayed call waiting in this process for its upstream runs: then sent, failed or cancelled.

    ``sent`` is set once the call is on its way to the server or ended here; ``outcome``
    is then None (the server has the run) or the run's final outcome here.
    """

    __slots__ = ("sent", "outcome", "_lock", "_taken", "__weakref__")

    def __init__(self) -> None:
        self.sent = threading.Event()
        self.outcome: Outcome | None = None
        self._lock = threading.Lock()
        self._taken = False  # the helper is sending it, or it was cancelled: one of the two

    def take(self) -> bool:
        """The helper's claim before it sends; False if the run was cancelled meanwhile."""
        with self._lock:
            if self._taken:
                return False
            self._taken = True
            return True

    def cancel(self, fut: BackgroundFuture) -> bool:
        with self._lock:
            if self._taken:
                return False
            self._taken = True
        self.end(fut, "Cancelled", "CANCELLED", CancelledRun(f"background run {fut.task_run_id} "
                                                             f"({fut.task_name}) was cancelled before it was sent"))
        return True

    def end(self, fut: BackgroundFuture, name: str = "", type_: str = "", error: BaseException | None = None) -> None:
        """The call was sent (no ``error``), or its run ends here in state ``name``."""
        if error is not None:
            self.outcome = _local_outcome(fut, name, type_, error)
        _in_flight.discard(self)
        self.sent.set()

    def fail(self, fut: BackgroundFuture, error: BaseException) -> None:
        if isinstance(error, UpstreamFailed):
            self.end(fut, "NotReady", "FAILED", error)
        else:
            self.end(fut, "Failed", "FAILED", error)


def _local_outcome(fut: BackgroundFuture, name: str, type_: str, error: BaseException) -> Outcome:
    """The final record of a run that ended in this process, never sent (the ``runs show`` shape)."""
    now = time.time()
    message = str(error)
    history = [{"name": "Scheduled", "type": "SCHEDULED", "timestamp": now, "message": ""},
               {"name": name, "type": type_, "timestamp": now, "message": message}]
    record = {"id": fut.task_run_id, "name": background_run_name(fut.task_name, fut.task_run_id), "task_name": fut.task_name, "state": name,
              "state_type": type_, "history": history, "run_count": 0, "error": message, "persisted": False,
              "worker": None}
    return Outcome(record, cloudpickle.dumps(error, protocol=5))


def _defer(job: Callable[[], None], futures: list[BackgroundFuture]) -> None:
    """Run ``job`` (which waits for upstream runs, then sends calls) on a helper thread."""
    global _deferring
    if _deferring is None:
        with _deferring_lock:
            if _deferring is None:
                from concurrent.futures import ThreadPoolExecutor

                _deferring = ThreadPoolExecutor(_DEFERRED_THREADS, thread_name_prefix="daskflow-delay")
    _in_flight.update(f._deferred for f in futures)

    def run() -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - the runs' futures report it
            for f in futures:
                if not f._deferred.sent.is_set():
                    f._deferred.fail(f, exc)

    _deferring.submit(run)


def _wait_deferred() -> None:
    """At exit: let the calls still waiting for their upstream runs be sent."""
    for d in list(_in_flight):
        d.sent.wait()


def _args_blob(task: Task, row: tuple) -> bytes:
    try:
        # plain values (the common case) pickle the same with the C pickler, ~5x cheaper
        return (pickle.dumps(row, protocol=5) if ATOMS.issuperset(map(type, row))
                else cloudpickle.dumps(row, protocol=5))
    except Exception:
        for name, value in zip(task.param_names, row):
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                raise ParameterSerializationError(
                    f"task {task.name!r}: argument {name!r} of .delay() cannot be serialized "
                    f"({type(value).__name__}: {exc}); pass a picklable value") from None
        raise


def _send(task: Task, row: tuple, link: _Link, rid: str, flow_run_id: str | None) -> None:
    link.send(Call(rid, task.task_key, task.name, _task_blob(task), _args_blob(task, row), flow_run_id, time.time()))


def delay_row(task: Task, row: tuple, link: _Link) -> BackgroundFuture:
    """Enqueue one run whose parameter values (signature order) are ``row``."""
    rid = run_id(new_run_base())
    _send(task, row, link, rid, current_flow_run_id())
    return BackgroundFuture(rid, link.address, task.name)


def _later(task: Task, link: _Link, rows: list[Callable[[], tuple]]) -> BackgroundFutures:
    """Futures of runs whose rows come from ``rows`` (which wait for upstream runs), sent later.

    The calls are sent in order, each as soon as its row is known; a row whose upstream
    did not complete ends its run ``NotReady`` here.
    """
    flow_run_id = current_flow_run_id()
    futures = BackgroundFutures()
    for _ in rows:
        fut: BackgroundFuture = BackgroundFuture(run_id(new_run_base()), link.address, task.name)
        fut._deferred = Deferred()
        futures.append(fut)

    def job() -> None:
        for fut, row in zip(futures, rows):
            deferred = fut._deferred
            try:
                values = row()
                if deferred.take():
                    _send(task, values, link, fut.task_run_id, flow_run_id)
                    deferred.end(fut)
            except Exception as exc:  # noqa: BLE001 - this run's future reports it
                deferred.fail(fut, exc)

    _defer(job, futures)
    return futures


def delay(task: Task, args: tuple, kwargs: dict) -> BackgroundFuture:
    """``task.delay(*args, **kwargs)``: enqueue a background run; return its future at once.

    Upstream futures in the arguments are not waited for here: the call is sent when
    they are final (see ``Deferred``).
    """
    link = server_link()
    row = task.row_of(args, kwargs)
    if ATOMS.issuperset(map(type, row)):
        return delay_row(task, row, link)
    ups: list[list] = [[] for _ in row]
    refs = tuple(_refs(v, u) for v, u in zip(row, ups))
    if not any(_waits(v, u) for v, u in zip(refs, ups)):
        return delay_row(task, refs, link)
    return _later(task, link, [lambda: tuple(_resolve(task, v, u) for v, u in zip(refs, ups))])[0]


def delay_map(task: Task, args: tuple, kwargs: dict) -> BackgroundFutures:
    """``task.map(..., deferred=True)``: one background run per element.

    Elements whose arguments hold unfinished futures are sent when those are final, each
    on its own: an element whose upstream failed ends ``NotReady`` alone.
    """
    link = server_link()
    params = task.bind_params(args, kwargs)
    kinds, n, _ = plan_columns(task, params)
    columns: list[tuple[bool, Any, Any]] = []  # (mapped, values or value, their upstream chunks)
    for name in params:
        kind, value = kinds[name]
        if kind is BROADCAST:
            if isinstance(value, quote):
                columns.append((False, value.value, []))
            else:
                ups: list = []
                columns.append((False, _refs(value, ups), ups))
        else:
            values = list(value)
            if ATOMS.issuperset(map(type, values)):
                columns.append((True, values, None))
            else:
                each: list[list] = [[] for _ in values]
                columns.append((True, [_refs(v, u) for v, u in zip(values, each)], each))
    if all(not _waits(v, u) for mapped, v, u in columns if not mapped) and all(
            u is None or not any(_waits(x, ux) for x, ux in zip(v, u)) for mapped, v, u in columns if mapped):
        futures = BackgroundFutures()
        for i in range(n):
            futures.append(delay_row(task, tuple(v[i] if mapped else v for mapped, v, _ in columns), link))
        return futures

    def row(i: int) -> Callable[[], tuple]:
        return lambda: tuple(
            (v[i] if u is None else _resolve(task, v[i], u[i])) if mapped else _resolve(task, v, u)
            for mapped, v, u in columns)

    return _later(task, link, [row(i) for i in range(n)])


# -- futures ----------------------------------------------------------------------------------



from daskflow.background.futures import BackgroundFuture, BackgroundFutures  # noqa: E402  (futures call back into server_link)
