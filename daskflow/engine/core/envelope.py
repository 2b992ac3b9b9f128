"""The envelope of a chunk: what the task-run function returns instead of raising.

``ChunkSpec`` is everything a worker needs to execute runs ``start .. start+n`` of one
submission; ``ChunkResult`` is what comes back: a final state code, an end time and a
value or an exception per run (values pickled together as one blob when the chunk holds
many runs), extra state history for runs that had some, and the run-count and history
rules of the ground (``codes.run_count_of``). Whether a failure fails a downstream run
is decided by daskflow from the envelope, not by Dask's error propagation.
"""

from __future__ import annotations

import copy
import pickle
import time
import traceback
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import cloudpickle
from dask.utils import parse_bytes

from daskflow import config
from daskflow.codes import CODE_STATES, COMPLETED, FAILED, NOT_READY, OK_CODES, run_count_of
from daskflow.engine.core import states as st
from daskflow.engine.core.compact import PackedEnds, UniformCodes
from daskflow.engine.core.context import FlowRunInfo, current_flow_run_info
from daskflow.engine.core.inputs import ATOMS, BROADCAST, MAPPED, Column, Ref
from daskflow.engine.core.states import describe_error
from daskflow.engine.core.tracebacks import hide_internal
from daskflow.exceptions import MissingResult, UpstreamFailed
from daskflow.ids import run_id
from daskflow.store.packing import PACK_ENDS_FROM

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

#: A final state code's state type and name, as the engine's ``State`` takes them.
STATE_OF_CODE: dict[int, tuple[st.StateType, str]] = {
    code: (st.StateType[cs.type], cs.name) for code, cs in CODE_STATES.items()}


class Unpicklable:
    """Stands in for an argument that could not be serialized; its run fails."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __reduce__(self):
        return Unpicklable, (self.message,)


@dataclass(slots=True)
class ChunkSpec:
    """Everything a worker needs to execute runs ``start .. start+n`` of one submission.

    A single run made in this process (a direct call, a background run) gives its ``row``
    instead of ``columns`` (``ChunkSpec.single``).
    """

    task: Task
    base: int
    start: int
    n: int
    columns: Any  # a list of inputs.Column, one per parameter
    refs: bool = False  # mapped values hold Refs to resolve run by run
    wait_refs: tuple[Ref, ...] = ()
    flow_run_id: str | None = None
    cache: Any = None  # an engine.worker.cache_spec.CacheSpec for tasks that cache or have commit hooks
    checkpoints: bool = False  # the runner's scheduler keeps checkpoints (runners.ledger)
    task_blob: bytes | None = None  # the task pickled, when the submission made it already
    host: Any = None  # what the runner hands the runs (a runners.base.Host, pickled by name)
    row: tuple | None = None  # a single run's arguments instead of columns (in-process only)
    flow_run: FlowRunInfo | None = None  # for daskflow.runtime: taken from the submitting context
    kept: Any = None  # an engine.worker.keep.KeepSpec: the chunk keeps its completed values for a retry
    name: str = ""  # a single run's name when its task gives none (a background run's; in-process only)
    behind: bool = False  # its storage writes may end after it: its flow run waits for them (``write_behind``)

    def __post_init__(self) -> None:
        if self.flow_run is None and self.flow_run_id is not None:
            self.flow_run = current_flow_run_info()

    @classmethod
    def single(cls, task: Task, base: int, row: tuple, refs: bool = False, wait_refs: tuple[Ref, ...] = (),
               flow_run_id: str | None = None, start: int = 0, name: str = "",
               flow_run: FlowRunInfo | None = None) -> ChunkSpec:
        """The spec of run ``start`` of ``base``, whose arguments are ``row`` (one value per parameter);
        ``flow_run``: the caller's, when it has it at hand (else looked up)."""
        return cls(task, base, start, 1, None, refs, wait_refs, flow_run_id, row=row, name=name, flow_run=flow_run)

    def __reduce__(self):
        # The task travels as its pickled bytes (``Task.pickled``): a worker builds each task
        # once (``spec_from_wire``), not once per chunk.
        return spec_from_wire, (self.task_blob or self.task.pickled(), self.base, self.start, self.n, self.columns,
                                self.refs, self.wait_refs, self.flow_run_id, self.cache, self.checkpoints,
                                None, self.host, None, self.flow_run, self.kept, "", self.behind)

    def to_bytes(self) -> bytes:
        """The spec pickled for a worker. An argument that cannot be pickled is replaced by an
        ``Unpicklable`` marker that fails its run only (the chunk then checks run by run).

        ``pickle`` first (3x faster than ``cloudpickle``), as Dask does: kept unless it
        failed or named ``__main__`` outside the task's own bytes (a worker cannot import
        the client's ``__main__``); else ``cloudpickle``.
        """
        task_blob = self.task_blob = self.task_blob or self.task.pickled()
        try:
            blob = pickle.dumps(self, protocol=5)
            if blob.count(b"__main__") == task_blob.count(b"__main__"):
                return blob
        except Exception:
            pass
        try:
            return cloudpickle.dumps(self, protocol=5)
        except Exception:
            pass
        fixed = []
        for name, (kind, payload) in zip(self.task.param_names, self.columns):
            if kind is MAPPED:
                payload = [_picklable_arg(self.task, name, v) for v in payload]
            elif kind is BROADCAST:
                payload = _picklable_arg(self.task, name, payload)
            fixed.append(Column(kind, payload))
        self.columns, self.refs = fixed, True
        return cloudpickle.dumps(self, protocol=5)


def _picklable_arg(task: Task, name: str, value: Any) -> Any:
    try:
        cloudpickle.dumps(value)
        return value
    except Exception as exc:
        return Unpicklable(
            f"task {task.name!r}: argument {name!r} cannot be serialized to run on Dask "
            f"({type(value).__name__}: {exc}); pass a picklable value or create it inside the task"
        )


_tasks_by_blob: dict[bytes, Task] = {}


def spec_from_wire(task_blob: bytes, *fields: Any) -> ChunkSpec:
    """A ``ChunkSpec`` unpickled. Its task is unpickled once per process and pickled form:
    unpickling a ``Task`` inspects its function's signature again, ~15 µs a chunk."""
    task = _tasks_by_blob.get(task_blob)
    if task is None:
        if len(_tasks_by_blob) >= 256:
            _tasks_by_blob.clear()
        task = _tasks_by_blob[task_blob] = cloudpickle.loads(task_blob)
    return ChunkSpec(task, *fields)


@dataclass(slots=True)
class ChunkResult:
    """The envelope of a chunk: final state code and value or exception of every run."""

    task_name: str
    base: int
    start: int
    n: int
    codes: bytearray
    values: list | None
    blob: bytes | None = None
    errors: dict[int, BaseException] = field(default_factory=dict)
    messages: dict[int, str] = field(default_factory=dict)
    tracebacks: dict[int, str] = field(default_factory=dict)
    history: dict[int, list] = field(default_factory=dict)  # runs with retries
    run_counts: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)  # runs named by task_run_name
    inputs: dict[int, dict[str, str]] = field(default_factory=dict)  # failed runs' arguments, short reprs
    started: float = 0.0
    ends: array = field(default_factory=lambda: array("d"))
    first: float = 0.0  # when the run loop began, after the chunk's setup: run 0's own start
    starts: array | None = None  # each run's start, when runs did not run back to back (retries parked)
    worker: str | None = None
    n_failed: int = 0
    cache_records: list | None = None  # signed records staged in a transaction() block
    cache_storage: Any = None  # the result storage (a StorageSpec) those records also go to, if any
    cache_returned: Any = None  # a managed.ReturnedCache: fresh results for the client to write
    logs: list | None = None  # run log records not shipped while the chunk ran
    kept: dict[int, st.State] | None = None  # states hooks received: return_state hands back the same
    nbytes: int = 0  # the size of the values, pickled (out-of-band buffers counted, not copied)
    elsewhere: bool = False  # the values stayed on the worker: this envelope is their summary
    recomputed: bool = False  # an attempt after the values of a completed attempt were lost
    fetch: Any = None  # on the client: how to bring values that stayed on the worker (not pickled)
    resources: dict | None = None  # CPU and memory the runs took (engine/worker/resources.py)
    released: str = ""  # on the client: who consumed the values and let them go (``released``)
    cache_refs: Any = None  # where it ran: the runs whose value its cache holds (``CacheRefs``; not pickled)
    behind: bool = False  # its storage writes were still under way on ``worker`` when it ended (``write_behind``)

    def __reduce__(self):
        # Only the fields that hold something: a dataclass pickles every field by name.
        extra = {name: value for name in _SPARSE if (value := getattr(self, name))}
        values = None if self.blob is not None else self.values  # unpickled values travel as their blob
        # end times packed (~1 byte a run, whole microseconds, as the run store keeps them): a chunk of
        # 10^5 runs is ~0.1 MB on the wire and in Dask's event logs instead of 0.8; the codes of
        # runs that all ended alike as the one code
        ends = self.ends if type(self.ends) is PackedEnds and self.ends.packed else PackedEnds.packing(self.ends)
        codes: Any = self.codes
        if type(codes) is UniformCodes:
            codes = codes.code
        elif self.n >= PACK_ENDS_FROM and codes.count(codes[0]) == self.n:
            codes = codes[0]
        return result_from_wire, (self.task_name, self.base, self.start, self.n, codes, values, self.blob,
                                  self.started, ends, extra)

    def keep(self, i: int, state: st.State | None) -> None:
        if state is not None:
            if self.kept is None:
                self.kept = {}
            self.kept[i] = state

    # -- reading, on the client or in a downstream chunk --------------------------------
    def get_values(self) -> list:
        """The runs' values, unpickled from ``blob`` on first read (the blob is kept, see
        ``release_values``), or brought from the worker they stayed on (``fetch``)."""
        values = self.values
        if values is None:
            if self.blob is not None:
                values = cloudpickle.loads(self.blob)
            elif self.elsewhere and self.fetch is not None:
                values = self.fetch()
            elif self.released:
                raise MissingResult(
                    f"task {self.task_name!r}: the values of runs {self.run_name(0)!r}..{self.run_name(self.n - 1)!r} "
                    f"were consumed by {self.released}, which lets each chunk's values go once it yielded them; "
                    "read them in that loop, or use futs.result() instead"
                )
            else:
                values = [None] * self.n
            self.values = values
        return values

    def summary(self) -> ChunkResult:
        """This envelope without its values (they stay where they are): states, times, errors,
        history and logs, for the client to record."""
        out = copy.copy(self)
        out.values, out.blob, out.kept, out.elsewhere = None, None, None, True
        return out

    def to_summary_bytes(self) -> bytes:
        return cloudpickle.dumps(self.summary(), protocol=5)

    def release_values(self) -> None:
        """Drop the unpickled values while the pickled ``blob`` still holds them.

        Streaming readers (``as_completed``, iterating a ``.map()``'s futures) call it once
        they moved past a chunk, so the client holds ~5 bytes per small value instead of an
        object and a list slot. A later read unpickles the chunk again: equal values, but
        new objects for mutable ones (as a Dask future's ``result()`` gives with process workers).
        """
        if self.blob is not None or (self.elsewhere and self.fetch is not None):
            self.values = None

    def released_by(self, reader: str) -> ChunkResult:
        """This envelope once a stream (``reader``) consumed its values: what is left is O(1)
        for a chunk whose runs all ended alike, plus what its failed or retried runs need.

        States stay answerable (a completed run's value is then a ``MissingResult``); per-run
        end times give way to the chunk's last one. The original keeps its states (the run
        store's writer may still hold it, queued) but lets its values go too: a writer a few
        batches behind held the values of every chunk read meanwhile (10^5 values, ~4 MB
        each), which made the client's peak RSS a matter of luck.
        """
        self.values = self.blob = None
        codes = self.codes
        if self.n and codes.count(codes[0]) == self.n:
            codes = UniformCodes(codes[0], self.n)  # type: ignore[assignment]
        return ChunkResult(self.task_name, self.base, self.start, self.n, codes, None, errors=self.errors,
                           messages=self.messages, tracebacks=self.tracebacks, history=self.history,
                           run_counts=self.run_counts, names=self.names, started=self.started,
                           ends=array("d", self.ends[-1:]), worker=self.worker, n_failed=self.n_failed,
                           released=reader)

    def ok(self, i: int) -> bool:
        return self.codes[i] in OK_CODES

    def element(self, i: int) -> tuple[bool, Any]:
        """``(True, value)`` for a completed run, else ``(False, exception)``."""
        if self.codes[i] in OK_CODES:
            return True, self.get_values()[i]
        return False, self.exception(i)

    def exception(self, i: int) -> BaseException:
        exc = self.errors.get(i)
        if exc is not None:
            return exc
        return self.state(i).exception()

    def run_id(self, i: int) -> str:
        return run_id(self.base, self.start + i)

    def run_name(self, i: int) -> str:
        return self.names.get(i) or f"{self.task_name}-{self.start + i}"

    def describe(self, i: int) -> str:
        code = self.codes[i]
        return f"{CODE_STATES[code].name}: {self.messages.get(i) or describe_error(self.errors.get(i))}"

    def state(self, i: int) -> st.State:
        if self.kept is not None and i in self.kept:
            return self.kept[i]
        code = self.codes[i]
        type_, name = STATE_OF_CODE[code]
        ends = self.ends
        ts = ends[i] if i < len(ends) else ends[-1] if ends else time.time()
        run = (self.base, self.start + i)
        if code in OK_CODES:
            if self.values is None and self.blob is None and (self.elsewhere or self.released):  # read when asked
                return LazyState(type_, name, lambda: self.get_values()[i], timestamp=ts, task_run_id=run)
            return st.State(type_, name, data=self.get_values()[i], timestamp=ts, task_run_id=run)
        exc = self.errors.get(i)
        message = self.messages.get(i) or describe_error(exc)
        if exc is None and code == NOT_READY:
            exc = UpstreamFailed(f"task run {self.run_name(i)!r} did not run: {message}")
        return st.State(type_, name, message=message, data=exc, timestamp=ts, task_run_id=run)

    def started_at(self, i: int) -> float:
        """When run i started: runs of a chunk execute one after the other."""
        return self.ends[i - 1] if 0 < i <= len(self.ends) else self.started

    def states(self, i: int, submitted: float | None = None) -> list[st.State]:
        """Run i's state history, oldest first: Pending, Running, [AwaitingRetry, Retrying]..., final."""
        out = [] if submitted is None else [st.State(st.StateType.PENDING, timestamp=submitted)]
        final = self.state(i)
        extra = self.history.get(i)
        if extra:
            out.extend(st.State(st.StateType[t], name, message=msg, timestamp=ts) for t, name, ts, msg in extra)
        elif self.run_count(i):
            out.append(st.State(st.StateType.RUNNING, timestamp=self.started_at(i)))
        out.append(final)
        return out

    def is_plain(self) -> bool:
        """One run that did not fail and left the store nothing but its state code and end
        time: no history, retries, name, logs or staged cache records."""
        return self.n == 1 and not (self.n_failed or self.history or self.run_counts or self.names or self.logs
                                    or self.cache_records)

    def run_count(self, i: int) -> int:
        return run_count_of(self.codes[i], self.run_counts.get(i))

    # -- writing, on the worker ---------------------------------------------------------
    def record(self, i: int, outcome: tuple[int, Any, list | None], run_count: int, name: str = "") -> None:
        """Store run i's outcome ``(code, value or exception or message, history)``."""
        code, value, history = outcome
        if name:
            self.names[i] = name
        if code in OK_CODES:
            self.values[i] = value  # type: ignore[index]
            self.codes[i] = code
        elif isinstance(value, BaseException):
            self.fail(i, code, value)
        else:
            self.fail(i, code, None, value)
        if history:
            self.history[i] = history
        if run_count > 1:
            self.run_counts[i] = run_count

    def fail(self, i: int, code: int, exc: BaseException | None, message: str = "") -> None:
        if type(self.codes) is UniformCodes:  # one run of a uniform chunk fails after all (a lost run)
            self.codes = bytearray(bytes(self.codes))
        self.codes[i] = code
        self.n_failed += 1
        if exc is not None:
            self.errors[i] = hide_internal(exc)
            self.tracebacks[i] = "".join(traceback.format_exception(exc))
        if message:
            self.messages[i] = message

    @classmethod
    def all_failed(cls, task_name: str, base: int, start: int, n: int, code: int,
                   exc: BaseException | None, message: str) -> ChunkResult:
        res = cls(task_name, base, start, n, bytearray([code]) * n, [None] * n)
        res.n_failed = n
        now = time.time()
        res.started = now
        res.ends = array("d", [now]) * n
        for i in range(n):
            if exc is not None:
                res.errors[i] = exc
            res.messages[i] = message
        return res

    def seal(self, inline_bytes: int | None = None) -> ChunkResult:
        """Make the envelope safe to pickle: values as one blob, exceptions picklable.

        With ``inline_bytes``, values larger than that (pickled, out-of-band buffers counted,
        not copied) stay a list: they stay where they are (``elsewhere``) and Dask moves them
        worker to worker; the client gets the ``summary``.
        """
        for i, exc in list(self.errors.items()):
            try:
                cloudpickle.dumps(exc)
            except Exception:
                self.errors[i] = RuntimeError(f"{type(exc).__name__}: {exc} (exception not picklable)")
        if self.n >= PACK_ENDS_FROM and type(self.ends) is array and len(self.ends) == self.n:
            self.ends = PackedEnds.packing(self.ends)  # once: its end event, envelope and keep reuse them
        values = self.values
        if values is None:
            return self
        if self.n == 1 and ATOMS.issuperset(map(type, values)):
            return self  # one small value: nothing to measure or pack
        buffers: list = []
        try:
            blob = cloudpickle.dumps(values, protocol=5, buffer_callback=buffers.append)
        except Exception:
            values = self.values = self._drop_unpicklable(values)  # only the bad runs fail
            buffers = []
            blob = cloudpickle.dumps(values, protocol=5, buffer_callback=buffers.append)
        self.nbytes = len(blob) + sum(buf.raw().nbytes for buf in buffers)
        if inline_bytes is not None and self.nbytes > inline_bytes:
            self.elsewhere = True  # Dask pickles the list (out of band) when it moves it
            return self
        if self.n > 1:  # many small values travel as one blob
            self.blob = blob if not buffers else cloudpickle.dumps(values, protocol=5)
            self.values = None
        return self

    def _drop_unpicklable(self, values: list) -> list:
        values = list(values)
        for i, value in enumerate(values):
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                values[i] = None
                err = TypeError(f"task {self.task_name!r}: the result of task run {self.run_name(i)!r} (a "
                                f"{type(value).__name__}) cannot be serialized: {exc}")
                self.fail(i, FAILED, err)
        return values


_SPARSE = ("errors", "messages", "tracebacks", "history", "run_counts", "names", "inputs", "first", "starts", "worker",
           "n_failed", "cache_records", "cache_storage", "cache_returned", "logs", "kept", "nbytes", "elsewhere",
           "recomputed", "resources", "behind")


def result_from_wire(task_name: str, base: int, start: int, n: int, codes: bytearray | int, values: list | None,
                     blob: bytes | None, started: float, ends: array, extra: dict[str, Any]) -> ChunkResult:
    """A ``ChunkResult`` unpickled (see ``ChunkResult.__reduce__``)."""
    if type(codes) is int:  # every run ended with this code: kept as one (a chunk of 10^5 runs
        # waiting to be read or recorded held 100 KB of codes, ~3 MB for a map's unread chunks)
        codes = UniformCodes(codes, n)
    if type(ends) is bytes:  # packed by an older sender, without its first and last
        ends = PackedEnds(ends, n)
    res = ChunkResult(task_name, base, start, n, codes, values, blob, started=started, ends=ends)
    for name, value in extra.items():
        setattr(res, name, value)
    return res


def inline_bytes() -> int:
    """``daskflow.results.inline-bytes``: values of a chunk up to this size go to the client
    with its states; larger ones stay on the worker until they are asked for."""
    return parse_bytes(str(config.get("results.inline-bytes", "64KiB")))


class PlainRun(NamedTuple):
    """A direct call ``t(x)`` that completed plainly: its value and times, and no envelope.

    What ``engine.worker.run.run_direct`` returns for the common direct call (a plain task,
    a completed run, no logs, no State returned): the caller reads the value, the tracker
    the times; an envelope (``envelope``) is made only for who asks for one (``return_state``).
    """

    base: int
    start: int
    value: Any
    started: float
    end: float

    def envelope(self, task_name: str) -> ChunkResult:
        """The ``ChunkResult`` the run would have had: one completed run."""
        return ChunkResult(task_name, self.base, self.start, 1, bytearray((COMPLETED,)), [self.value],
                           started=self.started, ends=array("d", (self.end,)), first=self.started)


def measure(values: list) -> int:
    """The size of ``values`` pickled, out-of-band buffers counted, not copied."""
    buffers: list = []
    blob = cloudpickle.dumps(values, protocol=5, buffer_callback=buffers.append)
    return len(blob) + sum(buf.raw().nbytes for buf in buffers)


class LazyState(st.State):
    """A completed state whose value stayed on a worker: ``data`` brings it when first read."""

    __slots__ = ("_load",)

    def __init__(self, type: st.StateType, name: str, load: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(type, name, data=_NOT_LOADED, **kwargs)
        self._load = load

    @property  # type: ignore[override]
    def data(self) -> Any:
        value = _state_data.__get__(self)
        if value is _NOT_LOADED:
            value = self._load()
            _state_data.__set__(self, value)
        return value

    @data.setter
    def data(self, value: Any) -> None:
        _state_data.__set__(self, value)

    def __reduce__(self) -> tuple:
        # Pickled (passed to another run, say) as the plain State it stands for, value included.
        return _plain_state, (self.type, self.name, self.message, self.data, self.timestamp, self.task_run_id)


def _plain_state(type_: st.StateType, name: str, message: str, data: Any, timestamp: float,
                 task_run_id: str | None) -> st.State:
    return st.State(type_, name, message=message, data=data, timestamp=timestamp, task_run_id=task_run_id)


_NOT_LOADED = object()
_state_data = st.State.__dict__["data"]  # the slot of State.data, which LazyState's property wraps
