"""The state tracker: mirrors every run's lifecycle into memory and the run store, cheaply.

Where states come from, per chunk (never per element on the hot path):

- *Pending* at submission: ``chunks_submitted`` registers the chunks as *live* (one dict
  entry each) and queues one store update per chunk.
- *Running* / *Retrying*: the chunk function reports ``start`` when a chunk begins and
  ``retry`` for each retry (slow path only). On a Dask worker the messages of ~100 ms
  go out together as one Dask structured event (``Worker.log_event`` on topic
  ``daskflow-runs``, see ``engine/reports.py``); the client
  subscribes (``subscribe``) and hands events to ``on_message``. In-process runners call
  ``on_message`` directly. ``live_state`` is what ``future.state`` reads meanwhile.
- *Final*: ``chunk_finished`` records the envelope when the client fetches it (codes
  and end times as packed arrays, errors and tracebacks as text); a small ``end``
  event (counts and the codes of the runs that did not simply complete) covers chunks
  whose results nobody fetches. Dask-level loss reaches here as the base runner's
  Crashed/Cancelled envelopes.
- Logs: records collected per chunk on the worker (``daskflow.engine.logging``) arrive
  in ``logs`` events about every 100 ms while a chunk runs; the rest travel in the
  chunk's envelope (a chunk whose envelope nobody fetches keeps those).

Direct calls ``t(x)`` (``inline_finished``) queue one compact tuple each, without a lock;
their run ids come from one per-process base with consecutive indexes
(``submit.direct_slot``), so the writer folds each burst of direct calls of a task into a
single chunk record (with per-run start and submission times) instead of one per call.

One writer thread drains the queue about every 100 ms and applies the whole batch in
one LMDB transaction (``RunStore.apply``), then echoes log records to the console.
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
import uuid
from typing import TYPE_CHECKING, Any, Iterable

import dask.config

from daskflow import config
from daskflow.codes import CODE_OF_NAME
from daskflow.exceptions import StoreError

if TYPE_CHECKING:
    from daskflow.engine.futures import Chunk
    from daskflow.engine.run import ChunkResult
    from daskflow.engine import states as st

__all__ = [
    "TOPIC", "chunk_finished", "chunks_submitted", "enabled", "flow_finished", "flow_started", "flush",
    "inline_finished", "live_state", "on_message", "progress_counts", "record_logs", "record_states", "subscribe",
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


class _Tracker:
    """The process's tracker: live chunk states, final counts, and the writer thread."""

    def __init__(self) -> None:
        self.live: dict[tuple[int, int], list] = {}  # (base, start) -> [task, n, (type, name, ts, msg)]
        self.counts: collections.OrderedDict[tuple[int, int], tuple[int, int, int]] = collections.OrderedDict()
        self.retrying: dict[tuple[int, int], set[int]] = {}
        # messages of chunks that started before their submission was registered
        self.early: collections.OrderedDict[tuple[int, int], list[dict]] = collections.OrderedDict()
        self.ops: collections.deque = collections.deque()
        self.lock = threading.Lock()
        # orders registering a chunk against its messages arriving on other threads
        self.registry = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.failed = False

    # -- queueing for the writer ----------------------------------------------------------
    def put(self, op: tuple) -> None:
        home = os.environ.get("DASKFLOW_HOME", "")  # the home when it happened ("" = the configured one)
        self.ops.append((home, op))  # deque.append is atomic: no lock on the hot paths
        if self.thread is None:
            self._start()

    def _start(self) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._writer, name="daskflow-run-store", daemon=True)
                self.thread.start()

    def _after_fork(self) -> None:
        # the parent's writer thread does not exist in a forked child
        self.thread = None
        self.ops.clear()
        self.lock = threading.Lock()
        self.registry = threading.Lock()
        self.wake = threading.Event()

    def _writer(self) -> None:
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            self._drain()

    def _drain(self) -> None:
        batch = []
        flushes: list[threading.Event] = []
        while True:
            try:
                item = self.ops.popleft()
            except IndexError:
                break
            if item[1][0] == "flush":
                flushes.append(item[1][1])
            else:
                batch.append(item)
        try:
            if not batch:
                return
            from daskflow.store.runs import open_run_store

            by_home: dict[str, list] = {}
            for home, op in batch:
                by_home.setdefault(home, []).append(op)
            for home, items in by_home.items():
                ops, logs = _to_store_ops(items)
                open_run_store(home or None).apply(ops)
                _echo(logs)
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
        self.ops.append(("", ("flush", done)))
        if self.thread is None or not self.thread.is_alive():
            self._start()
        self.wake.set()
        return done.wait(timeout)


_tracker = _Tracker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tracker._after_fork)


# -- submission and envelopes (client side) ---------------------------------------------------


def chunks_submitted(chunks: list[Chunk], flow_run_id: str | None, state: tuple[str, str] = ("PENDING", "Pending")) -> None:
    """Register freshly submitted chunks as live, Pending (or Scheduled), and queue their records."""
    if not chunks or not enabled():
        return
    live, early = _tracker.live, _tracker.early
    arrived: list[dict] = []
    # The chunks may already run (threads runner, events): the record is queued before a
    # message can queue an update of it, and a message either finds its chunk live or is
    # kept in ``early`` until the chunk is registered.
    with _tracker.registry:
        _tracker.put(("submitted", chunks, flow_run_id, state))
        for c in chunks:
            live[(c.base, c.start)] = [c.task.name, c.n, None]
        if early:
            for c in chunks:
                arrived.extend(early.pop((c.base, c.start), ()))
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
    if _tracker.live.pop(key, None) is None and not enabled():
        return
    _tracker.retrying.pop(key, None)
    _remember_counts(key, res.codes)
    _tracker.put(("final", chunk.base, chunk.start, res, None))


def inline_finished(task: Any, res: ChunkResult, flow_run_id: str | None, submitted: float) -> None:
    """Record a direct call ``t(x)`` that ran in this thread (one queued op, no live entry)."""
    # The caller's whole cost: one tuple on the queue. The writer folds consecutive
    # direct calls of one task (consecutive indexes of ``direct_slot``) into one record.
    if enabled():
        if res.n_failed or res.history or res.run_counts or res.logs or res.cache_records or res.names or res.n != 1:
            item: tuple = ("inline", task.name, task.task_key, flow_run_id, submitted, res)
        else:  # the common case: the envelope is not kept alive until the writer runs
            item = ("inline1", task.name, task.task_key, flow_run_id, submitted, res.base, res.start,
                    res.codes[0], res.ends[0], res.started)
        _tracker.ops.append((os.environ.get("DASKFLOW_HOME", ""), item))
        if _tracker.thread is None:
            _tracker._start()


def live_state(base: int, start: int) -> st.State | None:
    """The latest non-final state known for a chunk's runs (Running while it executes)."""
    entry = _tracker.live.get((base, start))
    if entry is None or entry[2] is None:
        return None
    from daskflow.engine import states as st

    t, name, ts, msg = entry[2]
    return st.State(st.StateType[t], name, message=msg, timestamp=ts)


def progress_counts(keys: Iterable[tuple[int, int]]) -> tuple[int, int, int, int]:
    """(completed, cached, failed, retrying) over chunks, from final envelopes and end events."""
    done = cached = failed = retrying = 0
    counts, retry = _tracker.counts, _tracker.retrying
    for key in keys:
        c = counts.get(key)
        if c is not None:
            done += c[0]
            cached += c[1]
            failed += c[2]
        else:
            retrying += len(retry.get(key, ()))
    return done, cached, failed, retrying


def _remember_counts(key: tuple[int, int], codes: bytes | bytearray) -> None:
    cached = codes.count(1)
    ok = codes.count(0)
    counts = _tracker.counts
    counts[key] = (ok, cached, len(codes) - ok - cached)
    if len(counts) > 100_000:
        counts.popitem(last=False)


# -- messages from the chunk function (Dask events, or direct calls in-process) ------------------


def on_message(msg: dict) -> None:
    """Apply one tracker message: ``start``, ``retry``, ``end`` or ``logs``."""
    kind = msg["k"]
    if kind == "logs":
        if enabled():
            _tracker.put(("logs", msg["r"]))
        return
    key = (int.from_bytes(msg["b"], "big"), msg["s"])
    entry = _tracker.live.get(key)
    if entry is None:  # not registered yet, already final, another client's chunk, or tracking off
        if kind in ("start", "end") and key not in _tracker.counts:  # a final chunk needs nothing more
            with _tracker.registry:
                entry = _tracker.live.get(key)
                if entry is None:
                    early = _tracker.early
                    early.setdefault(key, []).append(msg)
                    if len(early) > 10_000:
                        early.popitem(last=False)
        if entry is None:
            return
    if kind == "start":
        entry[2] = ("RUNNING", "Running", msg["t"], "")
        _tracker.put(("live", key, msg["t"], msg.get("w")))
    elif kind == "retry":
        i, event = msg["i"], tuple(msg["h"])
        waiting = _tracker.retrying.setdefault(key, set())
        (waiting.add if event[1] == "AwaitingRetry" else waiting.discard)(i)
        _tracker.put(("events", key, {i: [list(event)]}))
    elif kind == "end":
        _tracker.live.pop(key, None)
        _tracker.retrying.pop(key, None)
        codes = bytearray(entry[1])
        for i, code in msg.get("c") or ():
            codes[i] = code
        _remember_counts(key, codes)
        _tracker.put(("end", key, bytes(codes), msg["t"], msg.get("w")))


def _on_dask_event(event: tuple[float, Any]) -> None:
    try:
        msg = event[1]
        if msg.get("k") == "batch":
            for one in msg["m"]:
                on_message(one)
        else:
            on_message(msg)
    except Exception:  # a malformed event must not break the client's event loop
        logger.debug("daskflow: bad tracker event %r", event, exc_info=True)


_subscribed: set[str] = set()


def subscribe(client: Any) -> None:
    """Have a Dask client feed the workers' tracker events to this process's tracker."""
    if client.id in _subscribed:
        return
    _subscribed.add(client.id)
    client.subscribe_topic(TOPIC, _on_dask_event)


# -- flows, logs and the public API for other recorders ------------------------------------------


def flow_started(flow_run_id: str, name: str, parameters: dict, parent_id: str | None = None) -> None:
    if enabled():
        params = {k: _summary(v) for k, v in parameters.items()}
        _tracker.put(("flow", flow_run_id, {"name": name, "parameters": params, "state": "Running",
                                            "state_type": "RUNNING", "start": time.time(), "parent_id": parent_id}))


def flow_finished(flow_run_id: str, state: st.State) -> None:
    if enabled():
        _tracker.put(("flow", flow_run_id, {"state": state.name, "state_type": state.type.name,
                                            "end": time.time(), "message": state.message or ""}))


def record_logs(records: list[list]) -> None:
    """Queue log records ``[owner (24 bytes), index, timestamp, level, message, logger name]``."""
    if records and enabled():
        _tracker.put(("logs", records))


def record_states(events: Iterable[tuple[str, str, float, str]], task_name: str, task_key: str | None = None,
                  flow_run_id: str | None = None, worker: str | None = None) -> None:
    """Record state events of single runs by run id, e.g. from the background path.

    ``events`` holds ``(run_id, state_name, timestamp, message)``: ``Scheduled``,
    ``Pending``, ``Running``, ``Retrying``, ``AwaitingRetry`` or a final name
    (``Completed``, ``Failed``, ``Crashed``, ...). Final names set the run's final state.
    Safe to call from any process that can reach ``$DASKFLOW_HOME`` (a task worker,
    the server); the write is batched by this process's writer thread.

    Example:
        >>> record_states([(rid, "Scheduled", time.time(), "")], task_name="email")  # doctest: +SKIP
    """
    if enabled():
        _tracker.put(("states", list(events), task_name, task_key, flow_run_id, worker))


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


# -- building store operations (writer thread) ------------------------------------------------

_TYPES = {"Scheduled": "SCHEDULED", "Pending": "PENDING", "Running": "RUNNING", "Retrying": "RUNNING",
          "AwaitingRetry": "SCHEDULED", "Completed": "COMPLETED", "Cached": "COMPLETED", "Failed": "FAILED",
          "NotReady": "FAILED", "TimedOut": "FAILED", "Crashed": "CRASHED", "Cancelled": "CANCELLED"}


def envelope_fields(res: ChunkResult) -> dict:
    """The final fields of a chunk record from its envelope (packed arrays, text only)."""
    fields: dict[str, Any] = {"codes": bytes(res.codes), "ends": res.ends.tobytes(), "live": None}
    if res.started:
        fields["started"] = res.started
    if res.worker:
        fields["worker"] = res.worker
    if res.messages or res.errors:
        from daskflow.engine.states import _describe

        msgs = {i: res.messages.get(i) or _describe(res.errors.get(i)) for i in set(res.messages) | set(res.errors)}
        fields["messages"] = msgs
    if res.tracebacks:
        fields["tracebacks"] = dict(res.tracebacks)
    if res.history:
        fields["history"] = {i: [list(h) for h in hist] for i, hist in res.history.items()}
    if res.run_counts:
        fields["run_counts"] = dict(res.run_counts)
    if res.names:
        fields["names"] = dict(res.names)
    return fields


def _to_store_ops(batch: list[tuple]) -> tuple[list[tuple], list[list]]:
    ops: list[tuple] = []
    logs: list[list] = []
    group: list[tuple] = []  # consecutive direct calls folded into one record
    for item in batch:
        kind = item[0]
        if group and (kind[:6] != "inline" or not _continues(group[-1], item)):
            ops.append(_inline_op(group, logs))
            group = []
        if kind == "inline" or kind == "inline1":
            group.append(item)
        elif kind == "submitted":
            _, chunks, flow_run_id, (t, name) = item
            for c in chunks:
                ops.append(("chunk", c.base, c.start, {
                    "task": c.task.name, "task_key": c.task.task_key, "n": c.n, "flow_run_id": flow_run_id,
                    "submitted": c.submitted, "live": [t, name, c.submitted, ""]}))
        elif kind == "final":
            _, base, start, res, _ = item
            ops.append(("chunk", base, start, dict(envelope_fields(res), n=res.n, task=res.task_name)))
            if getattr(res, "logs", None):
                logs.extend(res.logs)
        elif kind == "live":
            _, (base, start), ts, worker = item
            fields = {"live": ["RUNNING", "Running", ts, ""], "started": ts}
            if worker:
                fields["worker"] = worker
            ops.append(("chunk", base, start, fields))
        elif kind == "events":
            _, (base, start), events = item
            ops.append(("chunk", base, start, {"events": events}))
        elif kind == "end":
            _, (base, start), codes, ts, worker = item
            from array import array

            fields = {"codes": codes, "ends": array("d", [ts]).tobytes() * len(codes), "live": None}
            if worker:
                fields["worker"] = worker
            ops.append(("chunk", base, start, fields))
        elif kind == "logs":
            logs.extend(item[1])
        elif kind == "flow":
            ops.append(item)
        elif kind == "states":
            ops.extend(_state_ops(*item[1:]))
    if group:
        ops.append(_inline_op(group, logs))
    for owner, index, ts, level, message, name in logs:
        ops.append(("log", bytes(owner), index, ts, level, message, name))
    return ops, logs


def _span(item: tuple) -> tuple[int, int, int]:
    """``(base, start, n)`` of a queued direct call (compact or with its envelope)."""
    if item[0] == "inline1":
        return item[5], item[6], 1
    res = item[5]
    return res.base, res.start, res.n


def _continues(prev: tuple, item: tuple) -> bool:
    """Whether direct call ``item`` extends the record of ``prev``: same task, flow run and
    base, and the next index (``direct_slot`` hands out consecutive indexes)."""
    if prev[1] != item[1] or prev[2] != item[2] or prev[3] != item[3]:
        return False
    base, start, n = _span(prev)
    b2, s2, _ = _span(item)
    return b2 == base and s2 == start + n


def _inline_op(group: list[tuple], logs: list) -> tuple:
    """One ``new`` chunk record for consecutive direct calls (usually a batch of 100 ms).

    Per-run start and submission times are kept as packed arrays (``starts``,
    ``submits``): the runs of a direct-call record did not run back to back.
    """
    from array import array

    from daskflow.store.runs import chunk_key

    _, name, key, flow_run_id, submitted = group[0][:5]
    base, start, _ = _span(group[0])
    if len(group) == 1 and group[0][0] == "inline":
        res = group[0][5]
        if res.logs:
            logs.extend(res.logs)
        return ("new", base, start, dict(envelope_fields(res), task=name, task_key=key, n=res.n,
                                         flow_run_id=flow_run_id, submitted=submitted))
    codes = bytearray()
    ends, starts, submits = array("d"), array("d"), array("d")
    extra: dict[str, dict] = {}
    head = chunk_key(base, start)
    at = 0
    for item in group:
        if item[0] == "inline1":  # (kind, name, key, flow, submitted, base, start, code, end, started)
            codes.append(item[7])
            ends.append(item[8])
            starts.append(item[9])
            submits.append(item[4])
            at += 1
            continue
        res = item[5]
        codes += res.codes
        ends.extend(res.ends)
        for _ in range(res.n):
            starts.append(res.started)
            submits.append(item[4])
        for field, values in envelope_fields(res).items():
            if type(values) is dict:
                extra.setdefault(field, {}).update({at + i: v for i, v in values.items()})
        if res.logs:
            logs.extend([head, at + index, *rest] for _owner, index, *rest in res.logs)
        at += res.n
    fields = dict(extra, codes=bytes(codes), ends=ends.tobytes(), starts=starts.tobytes(),
                  submits=submits.tobytes(), live=None, started=starts[0], task=name, task_key=key,
                  n=at, flow_run_id=flow_run_id, submitted=submitted)
    return ("new", base, start, fields)


def _state_ops(events: list, task_name: str, task_key: str | None, flow_run_id: str | None,
               worker: str | None) -> list[tuple]:
    ops = []
    for rid, name, ts, message in events:
        base = uuid.UUID(rid).int
        fields: dict[str, Any] = {"task": task_name, "task_key": task_key, "n": 1, "flow_run_id": flow_run_id,
                                  "submitted": ts}
        if worker:
            fields["worker"] = worker
        code = CODE_OF_NAME.get(name)
        if code is not None:
            from array import array

            fields.update(codes=bytes([code]), ends=array("d", [ts]).tobytes(), live=None)
            if message and code != 0:
                fields["messages"] = {0: message}
        else:
            t = _TYPES.get(name, "RUNNING")
            fields["events"] = {0: [[t, name, ts, message or ""]]}
            fields["live"] = [t, name, ts, message or ""]
            if t == "RUNNING":
                fields["started"] = ts
        ops.append(("chunk", base, 0, fields))
    return ops


def console() -> logging.Logger:
    """The ``daskflow.runs`` logger, printing INFO and up on stderr unless logging is configured."""
    if not run_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(message)s", "%H:%M:%S"))
        run_logger.addHandler(handler)
        run_logger.setLevel(logging.INFO)
    return run_logger


def _echo(logs: list[list]) -> None:
    """Echo run log records on the client's console (``daskflow.runs`` logger)."""
    if not logs:
        return
    console()
    from daskflow.engine.context import run_id

    for owner, index, ts, level, message, name in logs:
        if run_logger.isEnabledFor(level):
            owner = bytes(owner)
            if owner[16:] == b"\xff" * 8:
                label = f"flow run {uuid.UUID(bytes=owner[:16])}"[:17]
            else:
                label = "task run " + run_id(int.from_bytes(owner[:16], "big"), int.from_bytes(owner[16:], "big") + index)[:8]
            record = run_logger.makeRecord(run_logger.name, level, "", 0, "%s - %s", (label, message), None)
            record.created = ts
            run_logger.handle(record)
