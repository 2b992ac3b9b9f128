"""What the tracker queues for its writer thread, and how a batch becomes run-store updates.

Every producer (submissions, fetched envelopes, worker messages, direct calls, flows,
the background path) appends one of the records below to the tracker's queue; the
writer thread turns a batch of them into ``ChunkUpdate`` / ``FlowUpdate`` / ``LogLine``
operations of the run store (``to_store_ops``) and applies them in one LMDB
transaction. The records are plain NamedTuples: as cheap as the tuples they replace on
the direct-call path, and readable by name.

Direct calls ``t(x)`` (``DirectCall``, or the compact ``DirectCallDone`` for a plain
completed call) take consecutive indexes of one per-process run base
(``submit.direct_slot``), so ``to_store_ops`` folds each burst of direct calls of a task
into a single chunk record, with per-run start and submission times.
"""

from __future__ import annotations

import threading
import uuid
from array import array
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from daskflow import owners
from daskflow.codes import CODE_OF_NAME, CODE_STATES, COMPLETED, LIVE_STATES, StateEvent
from daskflow.engine.core.states import describe_error
from daskflow.store.runs import ChunkUpdate, FlowUpdate, LogLine, chunk_key
from daskflow.ids import background_run_name

if TYPE_CHECKING:
    from daskflow.engine.client.chunks import Chunk
    from daskflow.engine.core.envelope import ChunkResult


class Submitted(NamedTuple):
    """Chunks just submitted: live, in state ``state`` (Pending, or Scheduled)."""

    chunks: list[Chunk]
    flow_run_id: str | None
    state: StateEvent


class Finished(NamedTuple):
    """A chunk's fetched envelope: final states, errors, history."""

    base: int
    start: int
    result: ChunkResult


class DirectCall(NamedTuple):
    """A direct call ``t(x)`` with something to record beyond "Completed"."""

    task_name: str
    task_key: str
    flow_run_id: str | None
    submitted: float
    result: ChunkResult


class DirectCallDone(NamedTuple):
    """A plain direct call that completed: no envelope kept alive until the writer runs."""

    task_name: str
    task_key: str
    flow_run_id: str | None
    submitted: float
    base: int
    start: int
    code: int
    end: float
    started: float
    cpu: float | None = None  # CPU seconds, peak RSS increase, RSS at its end, measured alone
    mem: int = 0  # (>= 5 ms): what ``resources.call_ended`` found; cpu None when not measured
    rss: int = 0
    heavy: bool = False


class Started(NamedTuple):
    """A chunk began executing (on ``worker``)."""

    base: int
    start: int
    timestamp: float
    worker: str | None


class Retried(NamedTuple):
    """State events of retrying runs of a chunk: ``{index: [StateEvent]}``."""

    base: int
    start: int
    events: dict[int, list]


class Ended(NamedTuple):
    """A chunk finished whose envelope the client may never fetch: its codes and end time."""

    base: int
    start: int
    codes: bytes
    timestamp: float
    worker: str | None
    started: float | None = None  # when its start was not reported on its own
    resources: dict | None = None  # CPU and memory the runs took (engine/worker/resources.py)
    first: float = 0.0  # when its run loop began (run 0's start)
    ends: bytes = b""  # each run's end (float64s), when the worker sent them
    starts: bytes = b""  # each run's start, for runs that did not run back to back
    zends: bytes = b""  # each run's end packed as the store keeps them, in place of ``ends``


class Logs(NamedTuple):
    records: list[list]  # [owner (24 bytes), index, timestamp, level, message, logger name]


class FlowChange(NamedTuple):
    flow_run_id: str
    fields: dict[str, Any]


class RunStates(NamedTuple):
    """State events of single runs by run id (the background path): ``(run_id, name, ts, message)``."""

    events: list[tuple[str, str, float, str]]
    task_name: str
    task_key: str | None
    flow_run_id: str | None
    worker: str | None
    run_counts: dict[str, int] | None = None  # attempts of final runs, by run id
    resources: dict[str, dict] | None = None  # what final runs took, by run id (a chunk's ``res``)


class FlushMarker(NamedTuple):
    """Set ``done`` once everything queued before this marker is written."""

    done: threading.Event


Record = Union[Submitted, Finished, DirectCall, DirectCallDone, Started, Retried, Ended, Logs, FlowChange,
               RunStates, FlushMarker]
StoreOp = Union[ChunkUpdate, FlowUpdate, LogLine]

_DIRECT = (DirectCall, DirectCallDone)
TYPE_OF_NAME = {**LIVE_STATES, **{cs.name: cs.type for cs in CODE_STATES.values()}}


def envelope_fields(res: ChunkResult) -> dict:
    """The final fields of a chunk record from its envelope (packed arrays, text only)."""
    fields: dict[str, Any] = {"codes": bytes(res.codes), "live": None}
    packed = getattr(res.ends, "packed", None)  # as they came from the worker: written as they are
    if packed:
        fields["zends"] = packed
    else:
        fields["ends"] = res.ends.tobytes()
    if res.started:
        fields["started"] = res.started
    if res.first:
        fields["first"] = res.first
    if res.starts is not None:
        fields["starts"] = res.starts.tobytes()
    if res.worker:
        fields["worker"] = res.worker
    if res.messages or res.errors:
        keys = set(res.messages) | set(res.errors)
        fields["messages"] = {i: res.messages.get(i) or describe_error(res.errors.get(i)) for i in keys}
    if res.tracebacks:
        fields["tracebacks"] = dict(res.tracebacks)
    if res.history:
        fields["history"] = {i: [list(h) for h in hist] for i, hist in res.history.items()}
    if res.run_counts:
        fields["run_counts"] = dict(res.run_counts)
    if res.names:
        fields["names"] = dict(res.names)
    if res.resources:
        fields["res"] = res.resources
    if res.inputs:
        fields["inputs"] = dict(res.inputs)  # the run store keeps them apart, keyed by run
    return fields


def cost_record(cost: Any) -> dict:
    """The ``res`` field of one measured direct call, as a chunk's (``cost``: a record with
    ``cpu``, ``mem``, ``rss``, ``heavy``: a ``DirectCallDone`` or a ``resources.CallWatch``)."""
    out: dict[str, Any] = {"cpu": cost.cpu, "mem": cost.mem, "rss": cost.rss}
    if cost.heavy:
        out["runs"] = [[0, cost.cpu, cost.mem]]
    return out


def _fold_cost(into: dict, res: dict | None, at: int) -> None:
    """Add the ``res`` of the direct call(s) at index ``at`` of a folded record to its ``res``."""
    if not res:
        return
    into["cpu"] = into.get("cpu", 0.0) + (res.get("cpu") or 0.0)
    into["mem"] = max(into.get("mem", 0), res.get("mem") or 0)
    into["rss"] = res.get("rss")
    for index, cpu, mem in res.get("runs") or ():
        into.setdefault("runs", []).append([at + index, cpu, mem])


def _fold_call(into: dict, cost: DirectCallDone | _Cost, at: int) -> None:
    """``_fold_cost`` for one plain direct call (no ``res`` record made for it)."""
    into["cpu"] = into.get("cpu", 0.0) + cost.cpu
    into["mem"] = max(into.get("mem", 0), cost.mem)
    into["rss"] = cost.rss
    if cost.heavy:
        into.setdefault("runs", []).append([at, cost.cpu, cost.mem])


def to_store_ops(batch: list[Record]) -> tuple[list[StoreOp], list[list]]:
    """The run-store operations of a batch of records, and the log records to echo."""
    ops: list[StoreOp] = []
    logs: list[list] = []
    group: list[DirectCall | DirectCallDone] = []  # consecutive direct calls folded into one record
    i, n = 0, len(batch)
    while i < n:
        record = batch[i]
        i += 1
        if not group and type(record) is DirectCallDone:  # a loop of plain calls: folded by columns
            end = _plain_run(batch, i - 1)
            if end - i >= 1:
                burst = _burst_op(batch[i - 1:end])
                if burst is not None:
                    ops.append(burst)
                    i = end
                    continue
        if group and not (isinstance(record, _DIRECT) and _continues(group[-1], record)):
            ops.append(_direct_calls_op(group, logs))
            group = []
        if isinstance(record, _DIRECT):
            group.append(record)
        elif isinstance(record, Submitted):
            t, name, _, _ = record.state
            owner = owners.me().key  # this process: if it dies, these runs end Crashed (store/runs.py)
            for c in record.chunks:
                fields = {"task": c.task.name, "task_key": c.task.task_key, "n": c.n, "flow_run_id": record.flow_run_id,
                          "submitted": c.submitted, "live": [t, name, c.submitted, ""], "owner": owner}
                if c.task.caches:  # its runs count as cache hits or misses (store/metrics.py)
                    fields["caches"] = True
                ops.append(ChunkUpdate(c.base, c.start, fields, new=True))
        elif isinstance(record, Finished):
            res = record.result
            ops.append(ChunkUpdate(record.base, record.start, dict(envelope_fields(res), n=res.n, task=res.task_name)))
            if res.logs:
                logs.extend(res.logs)
        elif isinstance(record, Started):
            fields = {"live": ["RUNNING", "Running", record.timestamp, ""], "started": record.timestamp}
            if record.worker:
                fields["worker"] = record.worker
            ops.append(ChunkUpdate(record.base, record.start, fields))
        elif isinstance(record, Retried):
            ops.append(ChunkUpdate(record.base, record.start, {"events": record.events}))
        elif isinstance(record, Ended):
            fields = {"codes": record.codes, "live": None}
            if record.zends:  # packed by the worker: written as they are
                fields["zends"] = record.zends
            else:
                fields["ends"] = record.ends or array("d", [record.timestamp]).tobytes() * len(record.codes)
            if record.first:
                fields["first"] = record.first
            if record.starts:
                fields["starts"] = record.starts
            if record.started is not None:
                fields["started"] = record.started
            if record.worker:
                fields["worker"] = record.worker
            if record.resources:
                fields["res"] = record.resources
            ops.append(ChunkUpdate(record.base, record.start, fields))
        elif isinstance(record, Logs):
            logs.extend(record.records)
        elif isinstance(record, FlowChange):
            ops.append(FlowUpdate(record.flow_run_id, record.fields))
        elif isinstance(record, RunStates):
            ops.extend(_run_state_ops(record))
    if group:
        ops.append(_direct_calls_op(group, logs))
    for owner, index, ts, level, message, name in logs:
        ops.append(LogLine(bytes(owner), index, ts, level, message, name))
    return ops, logs


def _plain_run(batch: list[Record], i: int) -> int:
    """The end of the run of ``DirectCallDone`` records that starts at ``batch[i]``."""
    n = len(batch)
    while i < n and type(batch[i]) is DirectCallDone:
        i += 1
    return i


def _burst_op(run: list[DirectCallDone]) -> ChunkUpdate | None:
    """One new chunk record for plain direct calls that continue one another (None: they do not).

    The writer's share of a loop of direct calls: the records are read as columns (one
    transposition in C), not call by call, so a call costs the writer about a tenth of a
    microsecond instead of two. The same record as ``_direct_calls_op`` makes of them.
    """
    first, m = run[0], len(run)
    cols = dict(zip(DirectCallDone._fields, zip(*run)))
    if (cols["start"] != tuple(range(first.start, first.start + m)) or cols["base"].count(first.base) != m
            or cols["task_name"].count(first.task_name) != m or cols["task_key"].count(first.task_key) != m
            or cols["flow_run_id"].count(first.flow_run_id) != m):
        return None
    starts = cols["started"]
    fields = dict(codes=bytes(cols["code"]), ends=array("d", cols["end"]).tobytes(),
                  starts=array("d", starts).tobytes(), submits=array("d", cols["submitted"]).tobytes(), live=None,
                  started=starts[0], task=first.task_name, task_key=first.task_key, n=m,
                  flow_run_id=first.flow_run_id, submitted=first.submitted)
    cost = _burst_cost(cols["cpu"], cols["mem"], cols["rss"], cols["heavy"])
    if cost:
        fields["res"] = cost
    return ChunkUpdate(first.base, first.start, fields, new=True)


def _burst_cost(cpus: tuple, mems: tuple, rsss: tuple, heavy: tuple) -> dict:
    """The calls' resources folded as a chunk's (``_fold_call`` call by call gives the same)."""
    unmeasured = cpus.count(None)
    if unmeasured == len(cpus):
        return {}
    if unmeasured:  # resources turned on or off within the burst: the measured calls only
        cost: dict[str, Any] = {}
        for at, (cpu, mem, rss, h) in enumerate(zip(cpus, mems, rsss, heavy)):
            if cpu is not None:
                _fold_call(cost, _Cost(cpu, mem, rss, h), at)
        return cost
    cost = {"cpu": sum(cpus), "mem": max(max(mems), 0), "rss": rsss[-1]}
    if True in heavy:
        cost["runs"] = [[at, cpus[at], mems[at]] for at, h in enumerate(heavy) if h]
    return cost


class _Cost(NamedTuple):
    cpu: float
    mem: int
    rss: int
    heavy: bool


class _Span(NamedTuple):
    base: int
    start: int
    n: int


def _span(record: DirectCall | DirectCallDone) -> _Span:
    if isinstance(record, DirectCallDone):
        return _Span(record.base, record.start, 1)
    res = record.result
    return _Span(res.base, res.start, res.n)


def _continues(prev: DirectCall | DirectCallDone, record: DirectCall | DirectCallDone) -> bool:
    """Whether direct call ``record`` extends the record of ``prev``: same task, flow run and
    base, and the next index (``direct_slot`` hands out consecutive indexes).

    Called once per direct call on the writer thread: the common case (two plain
    completed calls) compares fields without building spans.
    """
    if (prev.task_name != record.task_name or prev.task_key != record.task_key
            or prev.flow_run_id != record.flow_run_id):
        return False
    if type(prev) is DirectCallDone and type(record) is DirectCallDone:
        return record.base == prev.base and record.start == prev.start + 1
    before, after = _span(prev), _span(record)
    return after.base == before.base and after.start == before.start + before.n


def _direct_calls_op(group: list[DirectCall | DirectCallDone], logs: list) -> ChunkUpdate:
    """One new chunk record for consecutive direct calls (usually a batch of 100 ms).

    Per-run start and submission times are kept as packed arrays (``starts``,
    ``submits``): the runs of a direct-call record did not run back to back.
    """
    first = group[0]
    head = _span(first)
    if len(group) == 1 and isinstance(first, DirectCall):
        res = first.result
        if res.logs:
            logs.extend(res.logs)
        return ChunkUpdate(head.base, head.start, dict(envelope_fields(res), task=first.task_name,
                                                       task_key=first.task_key, n=res.n,
                                                       flow_run_id=first.flow_run_id, submitted=first.submitted),
                           new=True)
    codes = bytearray()
    ends, starts, submits = array("d"), array("d"), array("d")
    extra: dict[str, dict] = {}
    owner = chunk_key(head.base, head.start)
    cost: dict[str, Any] = {}  # the calls' resources, folded as a chunk's (engine/worker/resources.py)
    at = 0
    for record in group:
        if isinstance(record, DirectCallDone):
            codes.append(record.code)
            ends.append(record.end)
            starts.append(record.started)
            submits.append(record.submitted)
            if record.cpu is not None:
                _fold_call(cost, record, at)
            at += 1
            continue
        res = record.result
        codes += bytes(res.codes)  # a bytearray, or the UniformCodes of a chunk whose runs ended alike
        ends.extend(res.ends)
        for _ in range(res.n):
            starts.append(res.started)
            submits.append(record.submitted)
        _fold_cost(cost, res.resources, at)
        for field, values in envelope_fields(res).items():
            if field != "res" and type(values) is dict:
                extra.setdefault(field, {}).update({at + i: v for i, v in values.items()})
        if res.logs:
            logs.extend([owner, at + index, *rest] for _owner, index, *rest in res.logs)
        at += res.n
    fields = dict(extra, codes=bytes(codes), ends=ends.tobytes(), starts=starts.tobytes(),
                  submits=submits.tobytes(), live=None, started=starts[0], task=first.task_name,
                  task_key=first.task_key, n=at, flow_run_id=first.flow_run_id, submitted=first.submitted)
    if cost:
        fields["res"] = cost
    return ChunkUpdate(head.base, head.start, fields, new=True)


def _run_state_ops(record: RunStates) -> list[ChunkUpdate]:
    """One update per run of ``record`` (its events, oldest first, folded together: the
    background server hands over Pending, Running and the final state of a run at once)."""
    ops: dict[str, dict[str, Any]] = {}
    for rid, name, ts, message in record.events:
        fields = ops.get(rid)
        if fields is None:
            fields = ops[rid] = {"task": record.task_name, "task_key": record.task_key, "n": 1,
                                 "flow_run_id": record.flow_run_id, "submitted": ts,
                                 "names": {0: background_run_name(record.task_name, rid)}}
            if record.worker:
                fields["worker"] = record.worker
        code = CODE_OF_NAME.get(name)
        if code is not None:
            fields.update(codes=bytes([code]), ends=array("d", [ts]).tobytes(), live=None)
            if record.run_counts and rid in record.run_counts:
                fields["run_counts"] = {0: record.run_counts[rid]}
            if record.resources and rid in record.resources:
                fields["res"] = record.resources[rid]
            if message and code != COMPLETED:
                fields["messages"] = {0: message}
        else:
            t = TYPE_OF_NAME.get(name, "RUNNING")
            fields.setdefault("events", {0: []})[0].append([t, name, ts, message or ""])
            if "codes" not in fields:
                fields["live"] = [t, name, ts, message or ""]
            if t == "RUNNING":
                fields["started"] = ts
    return [ChunkUpdate(uuid.UUID(rid).int, 0, fields) for rid, fields in ops.items()]
