"""The state tracker: mirrors every run's lifecycle into memory and the run store, cheaply.

Where states come from, per chunk (never per element on the hot path):

- *Pending* at submission: ``chunks_submitted`` registers the chunks as *live* (one dict
  entry each) and queues one store update per chunk.
- *Running* / *Retrying*: the chunk function reports ``ChunkStarted`` when a chunk
  begins and ``RunRetrying`` for each retry (slow path only; ``engine/tracking/events.py``). On a
  Dask worker the messages of ~100 ms go out together as one Dask structured event
  (``Worker.log_event`` on topic ``daskflow-runs``, see ``engine/worker/reports.py``); the client
  runner delivers them to ``on_runner_event`` (``TaskRunner.attach``), which hands them to ``on_message``. In-process runners call
  ``on_message`` directly. ``live_state`` is what ``future.state`` reads meanwhile.
- *Final*: ``chunk_finished`` records the envelope when the client fetches it (codes
  and end times as packed arrays, errors and tracebacks as text); a small ``ChunkEnded``
  message (the codes of the runs that did not simply complete) covers chunks whose
  results nobody fetches. Dask-level loss reaches here as the engine's Crashed/Cancelled
  envelopes (``engine/client/chunks.py``).
- Logs: records collected per chunk on the worker (``daskflow.engine.worker.logging``) arrive
  in ``LogsShipped`` messages about every 100 ms while a chunk runs; the rest travel in
  the chunk's envelope (a chunk whose envelope nobody fetches keeps those).

Direct calls ``t(x)`` (``inline_finished``) queue one compact record each, without a lock.
Every producer queues a named record (``engine/tracking/records.py``); one writer thread drains
the queue about every 100 ms, turns the batch into run-store updates and applies them in
one LMDB transaction (``RunStore.apply``), then hands the batch to ``engine/tracking/console.py``
(log records, failures and retries, by run name).

Owners. Flow runs and submitted chunks are recorded with this process as their owner
(``daskflow.owners``: host, pid, start time), and the batches that carry them carry
the process's lease; while it has runs in flight the writer renews the lease every
``daskflow.owners.renew-seconds``. The first write to a store ends the runs of owners
that died (``RunStore.end_dead_owners``).
Nothing on a hot path waits for a disk write; ``flush`` waits for one, for tests and
readers in the same process. ``daskflow.tracking: false`` turns all of it off.

Public-ish API for other engine parts (the background path included): ``record_states``
(state events by run id), ``record_logs``, ``flow_started``/``flow_finished``, ``flush``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

import dask.config

from daskflow import config, owners
from daskflow.codes import CACHED, COMPLETED, StateEvent
from daskflow.engine.core.early import EarlyMessages
from daskflow.engine.core.envelope import PlainRun
from daskflow.engine.tracking import console as run_console
from daskflow.engine.tracking.events import (
    ChunkAside,
    ChunkEnded,
    ChunkStarted,
    LogsShipped,
    Message,
    RunRetrying,
    batch_from_wire,
)
from daskflow.engine.tracking.records import (
    DirectCall,
    DirectCallDone,
    Ended,
    Finished,
    FlowChange,
    FlushMarker,
    Logs,
    Record,
    Retried,
    RunStates,
    Started,
    Submitted,
    cost_record,
    to_store_ops,
)
from daskflow.exceptions import StoreError
from daskflow.store import retention
from daskflow.store.runs import ChunkUpdate, FlowUpdate, open_run_store

if TYPE_CHECKING:
    from daskflow.engine.client.chunks import Chunk
    from daskflow.engine.core import states as st
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.engine.worker.resources import CallWatch

__all__ = [
    "TOPIC", "chunk_finished", "chunks_submitted", "enabled", "flow_finished", "flow_started", "flush",
    "ended_completed", "inline_finished", "listen", "live_state", "on_message", "progress_counts", "record_logs", "record_states", "on_runner_event",
]

TOPIC = "daskflow-runs"
FLUSH_SECONDS = 0.1
logger = logging.getLogger("daskflow")
run_logger = logging.getLogger("daskflow.runs")  # where run logs are echoed on the client


def enabled() -> bool:
    # read straight from dask's config dict (``dask.config.set`` updates it in place):
    # this is on the path of every direct call, and ``dask.config.get`` costs a few µs
    try:
        return bool(dask.config.config["daskflow"]["tracking"])
    except (KeyError, TypeError):
        return bool(config.get("tracking", True))


ChunkId = tuple[int, int]  # (base, start): a chunk's identity


class LiveChunk:
    """A chunk submitted and not final yet: what ``future.state`` reads meanwhile."""

    __slots__ = ("task_name", "n", "state")

    def __init__(self, task_name: str, n: int) -> None:
        self.task_name = task_name
        self.n = n
        self.state: StateEvent | None = None  # Running once the chunk reported its start


class FinalCounts(NamedTuple):
    completed: int
    cached: int
    failed: int


class _Tracker:
    """The process's tracker: live chunk states, final counts, and the writer thread."""

    def __init__(self) -> None:
        self.live: dict[ChunkId, LiveChunk] = {}
        # final counts of the chunks whose client record (``Chunk``) lives: ``_forget`` drops them
        self.counts: dict[ChunkId, FinalCounts] = {}
        self.retrying: dict[ChunkId, set[int]] = {}
        # messages of chunks that started before their submission was registered
        self.early: EarlyMessages[Message] = EarlyMessages()
        self.ops: collections.deque[tuple[str, Record]] = collections.deque()
        self.lock = threading.Lock()
        # orders registering a chunk against its messages arriving on other threads
        self.registry = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.failed = False
        self.flows: set[str] = set()  # flow runs of this process not finished yet
        self.leases: dict[str, float] = {}  # home -> when this process last wrote its lease there

    # -- queueing for the writer ----------------------------------------------------------
    def put(self, record: Record) -> None:
        # (home, record): DASKFLOW_HOME when it happened ("" = the configured one). A plain pair
        # on the hot path; deque.append is atomic, so no lock.
        self.ops.append((os.environ.get("DASKFLOW_HOME", ""), record))
        if self.thread is None:
            self.start()

    def start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._writer, name="daskflow-run-store", daemon=True)
                self.thread.start()

    def after_fork(self) -> None:
        # the parent's writer thread does not exist in a forked child
        self.thread = None
        self.ops.clear()
        self.lock = threading.Lock()
        self.registry = threading.Lock()
        self.wake = threading.Event()
        self.flows = set()
        self.leases = {}

    def _writer(self) -> None:
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            self._drain()
            self._renew()

    def owning(self) -> bool:
        """Whether this process has runs in flight that only it will finish."""
        return bool(self.live) or bool(self.flows)

    def _lease_for(self, home: str, ops: list) -> owners.Lease | None:
        """This process's lease, when a batch for ``home`` must carry it (new owned records)."""
        if any(isinstance(op, (ChunkUpdate, FlowUpdate)) and "owner" in op.fields for op in ops):
            self.leases[home] = time.monotonic()
            return owners.lease()
        return None

    def _renew(self) -> None:
        """Renew the lease in every store this process has runs in flight in, when due."""
        if not self.leases or not self.owning():
            return
        due = time.monotonic() - owners.renew_seconds()
        for home, last in list(self.leases.items()):
            if last <= due:
                self.leases[home] = time.monotonic()
                try:
                    _open(home).apply((), lease=owners.lease())
                except Exception:  # noqa: BLE001 - a missed renewal is retried next time
                    logger.debug("daskflow: could not renew this process's lease", exc_info=True)

    def _drain(self) -> None:
        by_home: dict[str, list[Record]] = {}
        flushes: list[threading.Event] = []
        pop, last, records = self.ops.popleft, None, []  # (a loop run once per direct call: kept lean)
        while True:
            try:
                home, record = pop()
            except IndexError:
                break
            if type(record) is FlushMarker:
                flushes.append(record.done)
                continue
            if home != last:
                records, last = by_home.setdefault(home, []), home
            records.append(record)
        try:
            for home, records in by_home.items():
                ops, logs = to_store_ops(records)
                _open(home).apply(ops, lease=self._lease_for(home, ops))
                run_console.echo(records, logs, console)
        except Exception as exc:  # never let record keeping break the user's program
            if not self.failed:
                known = isinstance(exc, StoreError)  # says what is wrong and what to do: no traceback
                logger.warning("daskflow: run records are not kept: %s", exc if known else
                               "could not write run records to the run store", exc_info=not known)
                self.failed = True
        finally:
            for event in flushes:
                event.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        # A marker queued behind every op queued so far (the queue is FIFO): when the
        # writer reaches it, everything before it has been written.
        if self.thread is None and not self.ops:
            return True
        done = threading.Event()
        self.ops.append(("", FlushMarker(done)))
        if self.thread is None or not self.thread.is_alive():
            self.start()
        self.wake.set()
        return done.wait(timeout)


_pruned: dict[tuple[str, int], float] = {}  # (home, pid) -> when this process last applied runs.keep there


def _open(home: str) -> Any:
    """The run store of ``home`` ("" = the configured one); the first open ends dead owners' runs.

    The first open, and then one every ``daskflow.runs.prune-every``, also prunes what is
    older than ``daskflow.runs.keep``: the history stays bounded without anyone asking.
    """
    store = open_run_store(home or None)
    key = (home, os.getpid())
    last = _pruned.get(key)
    if last is None:
        ended = store.end_dead_owners()
        if ended:
            logger.info("daskflow: ended the unfinished runs of %d process(es) that died, as Crashed", len(ended))
    if last is None or time.monotonic() - last > retention.prune_every_seconds():
        _pruned[key] = time.monotonic()
        pruned = retention.enforce(store)
        if pruned.task_runs or pruned.flow_runs:
            logger.info("daskflow: pruned %d task run(s) and %d flow run(s) older than daskflow.runs.keep",
                        *pruned)
    return store


_tracker = _Tracker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tracker.after_fork)


# -- submission and envelopes (client side) ---------------------------------------------------


PENDING = StateEvent("PENDING", "Pending", 0.0)


def chunks_submitted(chunks: list[Chunk], flow_run_id: str | None, state: StateEvent = PENDING) -> None:
    """Register freshly submitted chunks as live, Pending (or Scheduled), and queue their records."""
    if not chunks or not enabled():
        return
    live, early = _tracker.live, _tracker.early
    arrived: list[Message] = []
    # The chunks may already run (threads runner, events): the record is queued before a
    # message can queue an update of it, and a message either finds its chunk live or is
    # kept in ``early`` until the chunk is registered.
    with _tracker.registry:
        _tracker.put(Submitted(chunks, flow_run_id, state))
        for c in chunks:
            live[(c.base, c.start)] = LiveChunk(c.task.name, c.n)
            # what is kept of a chunk after it ended (its counts) goes with the client's record of it
            weakref.finalize(c, _forget, (c.base, c.start))
        if early:
            for c in chunks:
                arrived.extend(early.take((c.base, c.start)))
    for msg in arrived:
        on_message(msg)
    for c in chunks:
        if c.result is not None:  # answered before submission (by the cache): final already
            chunk_finished(c)


def chunk_finished(chunk: Chunk) -> None:
    """Record a chunk's fetched envelope (final states, errors, history) in the store."""
    res = chunk.result
    if res is None:
        return
    key = (chunk.base, chunk.start)
    if _tracker.live.pop(key, None) is None:
        if not enabled():
            return
        if res.is_plain() and res.codes[0] == COMPLETED and ended_completed(chunk.base, chunk.start):
            return  # its end event recorded all there is to say: one completed run
    _tracker.retrying.pop(key, None)
    _remember_counts(key, res.codes)
    _tracker.put(Finished(chunk.base, chunk.start, res))


#: Builds a record (a NamedTuple) from all its fields without the Python-level ``__new__`` that
#: NamedTuple generates: 0.2 µs instead of 0.9 for ``DirectCallDone``, on every direct call.
_new_record = tuple.__new__


def inline_finished(task: Any, res: ChunkResult | PlainRun, flow_run_id: str | None, submitted: float,
                    watch: CallWatch | None = None, home: str | None = None) -> None:
    """Record a direct call ``t(x)`` that ran in this thread (one queued op, no live entry).

    ``res``: its envelope, or its ``PlainRun`` (it completed plainly). ``watch``: the thread's
    ``resources.CallWatch`` holding the call's CPU time and memory, when measured (read here,
    before the thread's next call changes it). ``home``: ``$DASKFLOW_HOME`` as the caller's
    flow run read it (else read here).
    """
    # The caller's whole cost: one record on the queue. The writer folds consecutive
    # direct calls of one task (consecutive indexes of ``direct_slot``) into one chunk record.
    if not enabled():
        return
    if type(res) is PlainRun:  # the common case
        run: tuple = (res.base, res.start, COMPLETED, res.end, res.started)
    elif res.is_plain():  # no envelope kept alive until the writer runs
        run = (res.base, res.start, res.codes[0], res.ends[0], res.started)
    else:
        if watch is not None:
            res.resources = cost_record(watch)
        run = ()
    if run:
        cost = _UNMEASURED if watch is None else (watch.cpu, watch.mem, watch.rss, watch.heavy)
        record: Record = _new_record(DirectCallDone, (task.name, task.task_key, flow_run_id, submitted, *run, *cost))
    else:
        record = DirectCall(task.name, task.task_key, flow_run_id, submitted, res)  # type: ignore[arg-type]
    _tracker.ops.append((os.environ.get("DASKFLOW_HOME", "") if home is None else home, record))
    if _tracker.thread is None:
        _tracker.start()


_UNMEASURED = (None, 0, 0, False)  # DirectCallDone's cpu, mem, rss, heavy when resources are off


def ended_completed(base: int, start: int) -> bool:
    """Whether the chunk's worker reported it ended with every run Completed."""
    counts = _tracker.counts.get((base, start))
    return counts is not None and counts.failed == 0 and counts.cached == 0


def live_state(base: int, start: int) -> st.State | None:
    """The latest non-final state known for a chunk's runs (Running while it executes)."""
    entry = _tracker.live.get((base, start))
    if entry is None or entry.state is None:
        return None
    from daskflow.engine.core import states as st

    event = entry.state
    return st.State(st.StateType[event.type], event.name, message=event.message, timestamp=event.timestamp)


def progress_counts(keys: Iterable[tuple[int, int]]) -> tuple[int, int, int, int]:
    """(completed, cached, failed, retrying) over chunks, from final envelopes and end events."""
    done = cached = failed = retrying = 0
    counts, retry = _tracker.counts, _tracker.retrying
    for key in keys:
        c = counts.get(key)
        if c is not None:
            done += c.completed
            cached += c.cached
            failed += c.failed
        else:
            retrying += len(retry.get(key, ()))
    return done, cached, failed, retrying


def _remember_counts(key: tuple[int, int], codes: bytes | bytearray) -> None:
    cached = codes.count(CACHED)
    ok = codes.count(COMPLETED)
    _tracker.counts[key] = FinalCounts(ok, cached, len(codes) - ok - cached)


# -- messages from the chunk function (Dask events, or direct calls in-process) ------------------


def _forget(key: ChunkId) -> None:
    """The client's record of a chunk is gone: nobody can ask for its counts any more."""
    _tracker.counts.pop(key, None)
    _tracker.retrying.pop(key, None)


def on_message(msg: Message) -> None:
    """Apply one tracker message from the task-run function (``engine/tracking/events.py``)."""
    if isinstance(msg, LogsShipped):
        if enabled():
            _tracker.put(Logs(msg.records))
        return
    key = (msg.base, msg.start)
    entry = _tracker.live.get(key)
    if entry is None:  # not registered yet, already final, another client's chunk, or tracking off
        if isinstance(msg, (ChunkStarted, ChunkEnded)) and key not in _tracker.counts:  # final: nothing more
            with _tracker.registry:
                entry = _tracker.live.get(key)
                if entry is None:
                    _tracker.early.keep(key, msg)
        if entry is None:
            return
    if isinstance(msg, ChunkStarted):
        entry.state = StateEvent("RUNNING", "Running", msg.timestamp)
        _tracker.put(Started(msg.base, msg.start, msg.timestamp, msg.worker))
    elif isinstance(msg, RunRetrying):
        waiting = _tracker.retrying.setdefault(key, set())
        (waiting.add if msg.event.name == "AwaitingRetry" else waiting.discard)(msg.index)
        _tracker.put(Retried(msg.base, msg.start, {msg.index: [list(msg.event)]}))
    elif isinstance(msg, ChunkEnded):
        _tracker.live.pop(key, None)
        _tracker.retrying.pop(key, None)
        codes = msg.run_codes(entry.n)
        _remember_counts(key, codes)
        ends, starts = msg.run_times()
        _tracker.put(Ended(msg.base, msg.start, bytes(codes), msg.timestamp, msg.worker, msg.started,
                           resources=msg.resources, first=msg.first, ends=ends, starts=starts, zends=msg.zends))


def on_runner_event(event: tuple[float, Any]) -> None:
    """A ``(timestamp, payload)`` event the runner's workers sent on ``TOPIC``."""
    try:
        heard: dict[type, list[Message]] = {}
        for msg in batch_from_wire(event[1]):
            if type(msg) is not ChunkAside:  # a chunk stepping aside changes no state: for listeners only
                on_message(msg)
            if type(msg) in _listeners:
                heard.setdefault(type(msg), []).append(msg)
        for kind, msgs in heard.items():
            for listener in _listeners[kind]:
                listener(msgs)
    except Exception:  # a malformed event must not break the client's event loop
        logger.debug("daskflow: bad tracker event %r", event, exc_info=True)


_listeners: dict[type, list[Callable[[list[Any]], None]]] = {}


def listen(kind: type, listener: Callable[[list[Any]], None]) -> None:
    """Have ``listener`` called with the messages of type ``kind`` (``ChunkEnded``: chunks that
    workers report ended; ``ChunkAside``: chunks that wait for retry delays only) of each
    event the workers send.

    Called on the client's event loop, once per Dask event (a worker's ~100 ms of
    messages), whether tracking is on or off; it must only take note.
    """
    _listeners.setdefault(kind, []).append(listener)


# -- flows, logs and the public API for other recorders ------------------------------------------


def flow_started(flow_run_id: str, name: str, parameters: dict, parent_id: str | None = None) -> None:
    if enabled():
        params = {k: _summary(v) for k, v in parameters.items()}
        _tracker.flows.add(flow_run_id)
        _tracker.put(FlowChange(flow_run_id, {"name": name, "parameters": params, "state": "Running",
                                              "state_type": "RUNNING", "start": time.time(),
                                              "parent_id": parent_id, "owner": owners.me().key}))


def flow_changed(flow_run_id: str, fields: dict[str, Any]) -> None:
    """Fold ``fields`` into a flow run's record (e.g. the retries of a flow run retried)."""
    if enabled():
        _tracker.put(FlowChange(flow_run_id, fields))


def flow_finished(flow_run_id: str, state: st.State) -> None:
    if enabled():
        _tracker.flows.discard(flow_run_id)
        _tracker.put(FlowChange(flow_run_id, {"state": state.name, "state_type": state.type.name,
                                              "end": time.time(), "message": state.message or ""}))


def record_logs(records: list[list]) -> None:
    """Queue log records ``[owner (24 bytes), index, timestamp, level, message, logger name]``."""
    if records and enabled():
        _tracker.put(Logs(records))


def record_states(events: Iterable[tuple[str, str, float, str]], task_name: str, task_key: str | None = None,
                  flow_run_id: str | None = None, worker: str | None = None,
                  run_counts: dict[str, int] | None = None, resources: dict[str, dict] | None = None) -> None:
    """Record state events of single runs by run id, e.g. from the background path.

    ``events`` holds ``(run_id, state_name, timestamp, message)``: ``Scheduled``,
    ``Pending``, ``Running``, ``Retrying``, ``AwaitingRetry`` or a final name
    (``Completed``, ``Failed``, ``Crashed``, ...). Final names set the run's final state.
    ``run_counts`` (by run id): how many times a final run's body was attempted, as its
    executor counted it (a retried run: 2); read through ``codes.run_count_of``.
    ``resources`` (by run id): what a final run took (a chunk's ``res`` record of one run).
    Safe to call from any process that can reach ``$DASKFLOW_HOME`` (a task worker,
    the server); the write is batched by this process's writer thread.

    Example:
        >>> record_states([(rid, "Scheduled", time.time(), "")], task_name="email")  # doctest: +SKIP
    """
    if enabled():
        _tracker.put(RunStates(list(events), task_name, task_key, flow_run_id, worker, run_counts or None,
                               resources or None))


def flush(timeout: float | None = 10.0) -> bool:
    """Wait until every record queued so far is written; True unless ``timeout`` passed.

    Example:
        >>> futures = inc.map(range(10)); futures.result(); flush()  # doctest: +SKIP
    """
    return _tracker.flush(timeout)


atexit.register(lambda: _tracker.flush(5.0))


def _summary(value: Any, limit: int = 200) -> Any:
    """A flow parameter as recorded: JSON values keep their type (``2000``, not ``"2000"``), others their repr."""
    if _is_json(value) and len(repr(value)) <= limit:
        return value
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_json(value: Any, depth: int = 0) -> bool:
    if value is None or type(value) in (bool, str, float):
        return True
    if type(value) is int:
        return -(1 << 63) <= value < (1 << 64)  # what msgpack can store
    if depth < 4 and type(value) in (list, tuple):
        return all(_is_json(v, depth + 1) for v in value)
    if depth < 4 and type(value) is dict:
        return all(type(k) is str and _is_json(v, depth + 1) for k, v in value.items())
    return False


def console() -> logging.Logger:
    """The ``daskflow.runs`` logger, printing INFO and up on stderr unless logging is configured."""
    if not run_logger.handlers and not logging.getLogger().handlers:
        handler = run_console.ConsoleHandler()  # sys.stderr at each line: above a live progress bar
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(message)s", "%H:%M:%S"))
        run_logger.addHandler(handler)
        run_logger.setLevel(logging.INFO)
    return run_logger
