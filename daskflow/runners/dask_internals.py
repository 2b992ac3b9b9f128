"""The one door to names Dask does not promise to keep, each with a public fallback.

daskflow calls a few parts of dask/distributed that are not public API because they
are measurably cheaper than the public route. Every such use goes through this
module, and nowhere else: a Dask upgrade that renames or reshapes one of them costs
speed, never correctness. The check is feature detection (the name exists and has
the signature we call), made once per process (``available``), not a version test.
A fast path that still fails at run time with ``AttributeError``/``TypeError`` (Dask
changed under us) is marked broken for the process and the public route is taken.

The switch ``daskflow.dask-internals`` (default ``true``; environment variable
``DASK_DASKFLOW__DASK_INTERNALS=False``) turns every fast path off, so the public
routes can be tested on their own: the test suite runs the core engine tests that way
(tests/runners/test_dask_internals.py). Set before a LocalCluster starts, it reaches
the cluster's workers (Dask's nanny hands its configuration to the worker processes).

The names, what each buys, and its fallback:

``graph`` — ``Client._graph_to_futures``, ``dask._expr.LLGExpr`` (with its
    ``_determ_token`` argument), ``dask._task_spec.Task`` and ``parse_input``: what
    ``client.submit``/``client.map`` themselves use. They let ``runners.batching``
    send a burst of calls as one graph: a diamond of 1,201 ``.submit()`` calls costs
    about half of 1,201 ``client.submit`` calls on this machine. Fallback: one
    ``client.submit``/``client.map`` per submission (``submit-batch`` off). A burst
    already held when ``_graph_to_futures`` fails at run time cannot be re-sent by
    ``client.submit`` (it refuses keys it holds futures for): the probe in
    ``available`` builds the objects once so that such a change is found before any
    call is held, and a failure at run time turns the path off for later bursts.
``client-stream`` — ``Client._send_to_scheduler_safe``: a message on the client's
    batched stream (no round trip, several messages per write); used by ``.delay()``
    to enqueue calls. Fallback: the same message as an RPC to a scheduler handler of
    the same name (``client.scheduler.<op>(...)``), registered beside the stream
    handler by ``add_stream_handler``; messages of one sender go one after another,
    in order.
``worker-stream`` — ``Worker.batched_send`` (undocumented; its shape changed before):
    a message on the worker's batched stream; used for background run states and
    ledger checkpoints, from a loop. Fallback: an RPC through ``worker.scheduler``,
    as for the client.
``worker-task-state`` — ``worker.state.tasks[key].annotations``: lets a chunk see
    locally whether the scheduler marked it as a rerun with ledger entries, so only
    reruns ask the ledger (``runners.ledger.recall``). There is no public
    equivalent; fallback: ``worker_task_annotations`` answers "unknown" and every
    chunk with checkpoints asks the ledger (one round trip per chunk, on a path that
    already costs one chunk's work): slower, still correct. Also its
    ``resource_restrictions`` (``worker_task_resources``): a chunk that holds resources
    (a background run: its task worker's) retries its runs in its own thread, not as new
    tasks that would wait for what it holds; unknown, the same. And ``worker.state.ready``,
    ``constrained``, ``executing_count`` (``worker_others_queued``): a chunk that ends when
    its worker has nothing else queued writes its flow run's waiting storage records at once
    (``engine.worker.write_behind``); unknown, it writes them at once always (more, smaller
    writes: slower, still correct).

Names no longer used: ``distributed.client._wait`` (``wait_futures`` uses the public
``distributed.wait`` under ``client.as_current()``: the same coroutine, no measurable
difference). Names used that are not underscored but little documented, with no
public alternative, read where they are needed: a Server's ``handlers`` and
``stream_handlers`` dicts (the way distributed's own extensions add handlers; the
``Server`` docstring describes ``handlers``), ``scheduler.tasks`` and its task
states' ``processing_on``/``annotations``/``exception_text`` (scheduler plugins),
``distributed.worker.thread_state`` and ``distributed.utils.sync``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import uuid
import weakref
from typing import Any, Callable

from daskflow import config

logger = logging.getLogger("daskflow")

FEATURES = ("graph", "client-stream", "worker-stream", "worker-task-state")
_broken: set[str] = set()  # fast paths that failed at run time in this process


# -- detection ----------------------------------------------------------------------------


def switched_on() -> bool:
    """Whether the configuration allows fast paths (``daskflow.dask-internals``)."""
    return bool(config.get("dask-internals", True))


@functools.cache
def available() -> frozenset[str]:
    """The fast paths this Dask supports, found by feature detection (once per process)."""
    probes = {"graph": _has_graph, "client-stream": _has_client_stream,
              "worker-stream": _has_worker_stream, "worker-task-state": _has_worker_task_state}
    found = set()
    for name, probe in probes.items():
        try:
            ok = probe()
        except (ImportError, AttributeError, TypeError, ValueError, KeyError):
            ok = False
        if ok:
            found.add(name)
        else:
            logger.debug("daskflow: this Dask lacks the %s fast path; using the public API", name)
    return frozenset(found)


def enabled(feature: str | None = None) -> bool:
    """Whether fast path ``feature`` (or, without one, any) is in use now."""
    if not switched_on():
        return False
    if feature is None:
        return bool(available() - _broken)
    return feature in available() and feature not in _broken


def in_use() -> dict[str, bool]:
    """Every fast path and whether it is in use (for reports and tests)."""
    return {name: enabled(name) for name in FEATURES}


def mark_broken(feature: str, exc: BaseException) -> None:
    """Stop using ``feature`` in this process: it failed in a way that means Dask changed."""
    if feature not in _broken:
        _broken.add(feature)
        logger.warning("daskflow: Dask's %s internals failed (%s: %s); using the public API from now on",
                       feature, type(exc).__name__, exc)


def redetect() -> None:
    """Forget what was detected and what broke: the next use detects again (for tests)."""
    available.cache_clear()
    _broken.clear()


def _params(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _has_graph() -> bool:
    from dask._expr import LLGExpr
    from dask._task_spec import Task, parse_input
    from distributed import Client
    from distributed.spans import SpanMetadata  # noqa: F401

    if not {"expr", "keys", "span_metadata", "internal_priority"} <= set(_params(Client._graph_to_futures)):
        return False
    task = Task("daskflow-probe", max, *map(parse_input, (1, 2)))
    expr = LLGExpr({"daskflow-probe": task}, _determ_token=uuid.uuid4().hex)
    return list(expr.__dask_keys__()) == ["daskflow-probe"]


def _has_client_stream() -> bool:
    from distributed import Client

    return _params(Client._send_to_scheduler_safe) == ["self", "msg"]


def _has_worker_stream() -> bool:
    from distributed import Worker

    method = Worker.batched_send
    return _params(method) == ["self", "msg"] and not getattr(method, "__isabstractmethod__", False)


def _has_worker_task_state() -> bool:
    import dataclasses

    from distributed import Worker
    from distributed.worker_state_machine import BaseWorker, TaskState, WorkerState

    return (issubclass(Worker, BaseWorker) and "state" in BaseWorker.__annotations__
            and "tasks" in WorkerState.__annotations__
            and "annotations" in {f.name for f in dataclasses.fields(TaskState)})


# -- graph submission (runners.batching) -----------------------------------------------------


def task_spec() -> tuple[Callable[..., Any], Callable[[Any], Any]]:
    """``(Task, parse_input)`` of ``dask._task_spec``: how a held call becomes a graph node."""
    from dask._task_spec import Task, parse_input

    return Task, parse_input


def graph_submit(client: Any, tasks: dict[str, Any]) -> dict[str, Any]:
    """Send ``tasks`` (key -> ``Task``) to the scheduler as one graph, first submitted first run.

    Returns the futures Dask makes for the keys (the caller holds its own and drops these
    once its graph is sent).
    Raises what Dask raises; an ``AttributeError``/``TypeError`` from a Dask that changed
    also turns the path off for later bursts (``mark_broken``).
    """
    from dask._expr import LLGExpr
    from distributed.spans import SpanMetadata

    try:
        return client._graph_to_futures(
            LLGExpr(tasks, _determ_token=uuid.uuid4().hex),
            list(tasks),
            span_metadata=SpanMetadata(collections=[{"type": "Future"}]),
            internal_priority=dict(zip(tasks, range(len(tasks)))),
        )
    except (AttributeError, TypeError) as exc:
        if _names_changed(exc, "_graph_to_futures", "LLGExpr", "_determ_token", "span_metadata",
                          "internal_priority"):
            mark_broken("graph", exc)
        raise


def _names_changed(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` (an ``AttributeError``/``TypeError``) is about ``names``: Dask changed them.

    Not every such error is: a call whose arguments cannot be pickled raises ``TypeError``
    too, and is that call's own failure. Dask's message for it names the ``LLGExpr`` it could
    not serialize, which once turned the fast path off for the whole process.
    """
    text = str(exc)
    if "serializ" in text or "pickl" in text:
        return False
    return isinstance(exc, (AttributeError, TypeError)) and any(n in text for n in names)


# -- waiting -------------------------------------------------------------------------------


def wait_futures(client: Any, futures: list[Any], timeout: float | None) -> None:
    """Wait until every Dask future in ``futures`` of ``client`` is done (public ``distributed.wait``).

    Raises ``TimeoutError`` after ``timeout`` seconds and Dask's ``FuturesCancelledError``
    when some were cancelled (they are done too).
    """
    import distributed

    with client.as_current():  # distributed.wait asks for the default client: make it this one
        distributed.wait(futures, timeout=timeout)


# -- messages to a scheduler plugin -------------------------------------------------------------


def add_stream_handler(scheduler: Any, op: str, handler: Callable[..., Any]) -> None:
    """Have ``scheduler`` call ``handler(**msg)`` for messages ``{"op": op, ...}``.

    Registered for both routes: the batched streams (fast paths) and an RPC handler of
    the same name (the public fallback of ``send_to_scheduler`` and ``worker_send``).
    ``handler`` must accept and ignore extra keywords (the stream adds ``client=`` or
    ``worker=``).
    """
    scheduler.stream_handlers[op] = handler

    async def by_rpc(**msg: Any) -> None:
        got = handler(**msg)
        if inspect.isawaitable(got):
            await got

    scheduler.handlers[op] = by_rpc


def send_to_scheduler(client: Any, msg: dict) -> None:
    """Send ``msg`` (with an ``"op"`` of ``add_stream_handler``) from ``client``; on its event loop.

    Fire and forget, in order. Fast path: the client's batched stream. Fallback: an RPC.
    """
    if enabled("client-stream"):
        try:
            client._send_to_scheduler_safe(msg)
            return
        except (AttributeError, TypeError) as exc:  # this one goes by RPC; Dask changed if it names the method
            if _names_changed(exc, "_send_to_scheduler_safe"):
                mark_broken("client-stream", exc)
    _outbox(client).put(msg)


async def sent(sender: Any) -> None:
    """Wait until the messages ``sender`` (client or worker) sent by RPC so far have arrived.

    The batched streams need no wait (they flush on close); on the event loop.
    """
    box = _outboxes.get(sender)
    if box is not None:
        await box.drained()


def worker_send(worker: Any, msg: dict) -> None:
    """Send ``msg`` from ``worker`` to its scheduler; from any thread, fire and forget.

    Raises ``RuntimeError`` when the worker's event loop is closed (as Tornado does).
    """
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is not None and here is getattr(worker.loop, "asyncio_loop", None):
        _worker_send_on_loop(worker, msg)
    else:
        worker.loop.add_callback(_worker_send_on_loop, worker, msg)


def _worker_send_on_loop(worker: Any, msg: dict) -> None:
    if enabled("worker-stream"):
        try:
            worker.batched_send(msg)
            return
        except (AttributeError, TypeError) as exc:  # this one goes by RPC; Dask changed if it names the method
            if _names_changed(exc, "batched_send"):
                mark_broken("worker-stream", exc)
    _outbox(worker).put(msg)


class _Outbox:
    """Messages of one sender going as RPCs, one after another, in order (the fallback route)."""

    def __init__(self, sender: Any) -> None:
        self.rpc = sender.scheduler  # public: the sender's RPC to its scheduler
        self.queue: collections.deque[dict] = collections.deque()
        self.running: asyncio.Task | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    def put(self, msg: dict) -> None:
        self.queue.append(msg)
        self.idle.clear()
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._drain())

    async def drained(self) -> None:
        await self.idle.wait()

    async def _drain(self) -> None:
        try:
            while self.queue:
                msg = dict(self.queue.popleft())
                op = msg.pop("op")
                try:
                    await getattr(self.rpc, op)(**msg)
                except Exception:  # noqa: BLE001 - as a message on a broken stream: lost, and said
                    logger.warning("daskflow: a %r message did not reach the scheduler", op, exc_info=True)
        finally:
            if not self.queue:
                self.idle.set()


_outboxes: weakref.WeakKeyDictionary[Any, _Outbox] = weakref.WeakKeyDictionary()


def _outbox(sender: Any) -> _Outbox:
    box = _outboxes.get(sender)
    if box is None:
        box = _outboxes[sender] = _Outbox(sender)
    return box


# -- a worker's record of its tasks ----------------------------------------------------------------


def worker_task_annotations(worker: Any, key: Any) -> dict | None:
    """The annotations of task ``key`` as ``worker`` holds them; ``None`` when that cannot be known.

    ``{}`` for a task the worker does not hold. ``None`` (no fast path) means: ask the
    scheduler instead.
    """
    if not enabled("worker-task-state"):
        return None
    try:
        ts = worker.state.tasks.get(key)
        return dict(ts.annotations or {}) if ts is not None else {}
    except (AttributeError, TypeError) as exc:
        mark_broken("worker-task-state", exc)
        return None


def worker_task_resources(worker: Any, key: Any) -> dict | None:
    """The resources task ``key`` needs (``{}``: none), as ``worker`` holds it; ``None`` when
    that cannot be known."""
    if not enabled("worker-task-state"):
        return None
    try:
        ts = worker.state.tasks.get(key)
        return dict(ts.resource_restrictions or {}) if ts is not None else None
    except (AttributeError, TypeError) as exc:
        mark_broken("worker-task-state", exc)
        return None


def worker_others_queued(worker: Any) -> bool | None:
    """Whether ``worker`` holds tasks waiting to run besides the one calling (ready, or
    executing on other threads); ``None`` when that cannot be known."""
    if not enabled("worker-task-state"):
        return None
    try:
        state = worker.state
        return bool(state.ready) or bool(state.constrained) or state.executing_count > 1
    except (AttributeError, TypeError) as exc:
        mark_broken("worker-task-state", exc)
        return None
