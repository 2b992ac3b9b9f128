"""From a call to runs: direct calls run inline; ``.submit()``/``.map()`` build chunks.

A submission binds the arguments to the task's signature, swaps futures for ``Ref``
placeholders (their chunks become the Dask dependencies), splits a ``.map()`` into
chunks (sized by ``chunking``), and hands all chunks to the runner in one call
(``chunks.submit_chunks``, which pickles each chunk for runners in other processes).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable

from daskflow import config
from daskflow.engine.client import chunking, direct_keep, resume
from daskflow.engine.client.chunks import Chunk, bring_values, eager, fetch_all, submit_chunks
from daskflow.engine.client.futures import MapFutures, TaskRunFuture
from daskflow.engine.client.refs import collect_refs
from daskflow.engine.client.streams import MapStream, is_stream_input
from daskflow.engine.client.writes_behind import may_leave_writes
from daskflow.engine.core.context import current_flow_run_id, flow_run_ctx, task_run_ctx
from daskflow.engine.core.envelope import ChunkResult, ChunkSpec, PlainRun
from daskflow.engine.core.inputs import ALIGNED, ATOMS, BROADCAST, MAPPED, Column, allow_failure, quote, unmapped
from daskflow.engine.core.states import State
from daskflow.engine.tracking import tracker
from daskflow.engine.worker import resources
from daskflow.engine.worker.run import arun_single, run_direct
from daskflow.engine.worker.transactions import current_transaction
from daskflow.exceptions import MappingLengthMismatch, MappingMissingIterable
from daskflow.codes import OK_CODES
from daskflow.ids import MASK, STRIDE, new_run_base, run_id

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.runners.base import TaskRunner


def current_runner() -> TaskRunner:
    """The runner of the current flow run; inside a Dask task, that cluster; else the default."""
    ctx = flow_run_ctx.get()
    if ctx is not None:
        return ctx.runner
    from daskflow.runners import current_host, default_runner, worker_runner

    return worker_runner() if current_host().remote() else default_runner()


def _register(chunks: list[Chunk]) -> None:
    ctx = flow_run_ctx.get()
    if ctx is not None:
        ctx.submitted.extend(chunks)
    txn = current_transaction()
    if txn is not None:
        txn.track(chunks, lambda pending: fetch_all(pending, None))
    tracker.chunks_submitted(chunks, current_flow_run_id())
    eager.watch(chunks)


# -- direct calls -------------------------------------------------------------------------


def _prepare_inline(task: Task, args: tuple, kwargs: dict, wait_for: Iterable | None):
    row = task.row_of(args, kwargs)
    if not wait_for:
        for v in row:
            if type(v) not in ATOMS:
                break
        else:  # plain values only (the common call): nothing to look for futures in
            return row, (), [], False
    deps: dict[int, int] = {}
    ups: list[Chunk] = []
    row = tuple([v if type(v) in ATOMS else collect_refs(v, deps, ups) for v in row])
    waits = tuple(collect_refs(f, deps, ups) for f in wait_for) if wait_for else ()
    envelopes = [c.outcome() for c in ups]
    return row, waits, envelopes, bool(ups)


class _DirectSlots:
    """One random run base per process and a counter of its direct calls (reset in a forked child)."""

    def __init__(self) -> None:
        self.base: int | None = None
        self.counter: Any = None
        self.lock = threading.Lock()

    def reset(self) -> None:
        self.base = None

    def next(self) -> tuple[int, int]:
        if self.base is None:
            with self.lock:
                if self.base is None:
                    self.counter = itertools.count()
                    self.base = new_run_base()
        return self.base, next(self.counter)


_direct = _DirectSlots()
os.register_at_fork(after_in_child=_direct.reset)  # not os.getpid() on every call: a syscall here


def direct_slot() -> tuple[int, int]:
    """``(base, index)`` of a direct call: one random base per process, consecutive indexes.

    Run ``index`` of that base has its own id like any run; the tracker writes a burst of
    direct calls of one task as one record (runs ``index .. index+n``) instead of one each.
    """
    return _direct.next()


def submit_index() -> int:
    """The index of a ``.submit()`` run (its name is ``{task}-{index}``): from the counter of
    direct calls, so the runs a process submits or calls have distinct names."""
    return direct_slot()[1]


def call_inline(task: Task, args: tuple, kwargs: dict, wait_for: Iterable | None, return_state: bool) -> Any:
    """Run one run in the calling thread; return its value (or its final State)."""
    row, waits, envelopes, refs = _prepare_inline(task, args, kwargs, wait_for)
    submitted = time.time()
    # the contexts read once (the path of every direct call): the flow run's id as
    # ``current_flow_run_id`` gives it, the scope that keeps the call's value for a retry as
    # ``resume.calling_scope`` does (none for a call inside a task run: its parent run's value is kept)
    flow, run = flow_run_ctx.get(), task_run_ctx.get()
    flow_run_id = run.flow_run_id if run is not None else flow.flow_run_id if flow is not None else None
    scope = flow.keep if flow is not None and run is None else None
    base, start = _direct.next()
    res: ChunkResult | PlainRun | None = None
    if scope is not None:
        number = direct_keep.take(scope, task)
        if scope.kept is not None:  # a retry: an earlier attempt may have kept this call
            res = resume.reused_direct(scope, number, task, base, start)
    watch = None
    if res is None:
        watch = resources.call_started(submitted)
        try:
            spec = ChunkSpec.single(task, base, row, refs, waits, flow_run_id, start,
                                    flow_run=flow.info() if flow is not None else None)
            res = run_direct(spec, envelopes)
        finally:
            if watch is not None:
                ended = time.time()
                resources.call_ended(watch, ended, ended - submitted, task)
        if scope is not None:
            direct_keep.keep(scope, task, number, res, submitted)
    tracker.inline_finished(task, res, flow_run_id, submitted, watch, flow.home_env if flow is not None else None)
    if type(res) is PlainRun:  # completed plainly: no envelope was made
        if not return_state:
            return res.value
        res = res.envelope(task.name)
    if not return_state and res.kept is None and res.codes[0] in OK_CODES:
        return res.get_values()[0]  # what ``res.state(0).value()`` gives, without the State
    state = res.state(0)
    return state if return_state else state.value()


async def call_inline_async(task: Task, args: tuple, kwargs: dict, wait_for: Iterable | None,
                            return_state: bool) -> Any:
    """The awaitable form of ``call_inline`` for async tasks inside a running event loop."""
    row, waits, envelopes, refs = _prepare_inline(task, args, kwargs, wait_for)
    submitted, flow_run_id = time.time(), current_flow_run_id()
    res = await arun_single(ChunkSpec.single(task, new_run_base(), row, refs, waits, flow_run_id), envelopes)
    tracker.inline_finished(task, res, flow_run_id, submitted)
    state = res.state(0)
    return state if return_state else state.value()


# -- submit -------------------------------------------------------------------------------


def submit_run(task: Task, args: tuple, kwargs: dict, wait_for: Iterable | None) -> TaskRunFuture:
    """Submit one run; its future is returned before it starts."""
    runner = current_runner()
    deps: dict[int, int] = {}
    ups: list[Chunk] = []
    row = tuple([v if type(v) in ATOMS else collect_refs(v, deps, ups) for v in task.row_of(args, kwargs)])
    refs = bool(ups)
    waits = tuple(collect_refs(f, deps, ups) for f in (wait_for or ()))
    columns = [Column(MAPPED, [v]) for v in row]
    base, start = new_run_base(), submit_index()
    keep, reused = resume.for_call(task, single=True)
    known = resume.reused_single(task, base, start, reused)
    if known is not None:  # kept by an earlier attempt of this flow run (a retry): nothing is submitted
        chunk = Chunk.known(task, known, runner)
        _register([chunk])
        return TaskRunFuture(chunk, 0)
    cache = None
    if task.managed:  # the cache may already hold this run: then nothing is submitted
        from daskflow.engine.client.cache_lookup import for_single

        # the run's id is run_id(base, start): run 0 of the base shifted by start
        cache, known = for_single(task, row, (base + start * STRIDE) & MASK, refs or bool(waits))
        if known is not None:
            known.base, known.start = base, start
            chunk = Chunk.known(task, known, runner)
            _register([chunk])
            return TaskRunFuture(chunk, 0)
    spec = ChunkSpec(task, base, start, 1, columns, refs, waits, current_flow_run_id(), cache, kept=keep,
                     behind=may_leave_writes(cache, keep))
    key = _key(task, base, start)
    handle = submit_chunks(runner, [spec], [_dep_inputs(ups, runner)], [key])[0]
    chunk = Chunk.submitted_as(spec, handle, runner, ups, key)
    _register([chunk])
    future = TaskRunFuture(chunk, 0)
    chunk.read_by(future)
    return future


def _key(task: Task, base: int, start: int) -> str:
    """The Dask key of a chunk: its task's name and its first run's id (unique, random, cheap).

    Not ``uuid4``: ``os.urandom`` costs up to ~80 µs a call on these machines, and the
    run base is already 128 random bits.
    """
    return f"{task.name}-{run_id(base, start).replace('-', '')}"


def _dep_inputs(ups: list[Chunk], runner: TaskRunner) -> list[Any]:
    """Upstream handles for the runner; envelopes for chunks of another runner, or already fetched."""
    for c in ups:  # counted before reading ``result``: see chunks.settle
        c.needed_by_one_more(runner)
    return [_dep_input(c, runner) for c in ups]


def _dep_input(up: Chunk, runner: TaskRunner) -> Any:
    if up.values_handle is not None:  # its values stayed on a worker: Dask moves them worker to worker
        if up.runner is runner:
            return up.values_handle
        bring_values([up])  # another runner: the values go through this process
    if up.result is not None:
        return up.result
    return up.handle if up.runner is runner else up.outcome()


# -- map ----------------------------------------------------------------------------------


def submit_map(task: Task, args: tuple, kwargs: dict, wait_for: Iterable | None,
               chunksize: int | None, base: int | None = None, offset: int = 0) -> MapFutures | MapStream:
    """Submit one run per element, in chunks, as one graph submission.

    A map over an iterator (a generator, say) is a ``MapStream`` instead: it submits its runs
    as the iterator is consumed, a window at a time, each window through here (``base`` the
    stream's run base, ``offset`` the map index of the window's first element).

    Longer than most: planning columns, chunk bounds, the cache's answers and the
    per-chunk specs share many locals (deps, upstream chunks, refs) that a split would
    pass around as tuples; the loop body is the one place a chunk's arguments are built.
    """
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError(f"task {task.name!r}: chunksize must be an int >= 1, got {chunksize!r}")
    runner = current_runner()
    params = task.bind_params(args, kwargs)
    given = task.given_params(args, kwargs)
    if base is None and any(is_stream_input(params[name]) for name in given if name in params):
        return MapStream(task, params, given, wait_for, chunksize, lambda block, base, offset, size: submit_map(
            task, (), block, wait_for, size, base, offset))  # type: ignore[return-value]
    names = list(params)
    kinds, n, aligned = plan_columns(task, params, given)
    if task.managed and not wait_for:
        aligned = _known_upstreams(kinds, aligned)
    if aligned is not None and aligned.chunks and aligned.chunks[0].runner is not runner:
        aligned = None
    if aligned is not None:
        bounds = [(c.start, c.start + c.n) for c in aligned.chunks]
    else:
        bounds = chunking.plan(task, n, runner, chunksize)
    plain_broadcasts = {name for name, (kind, value) in kinds.items()
                        if kind is BROADCAST and not _holds_futures(value)}
    keep, reused = None, None
    window = 0 if base is not None else map_window(runner)  # a MapStream has its own window
    if base is None:  # a window of a MapStream is not kept for a retry: see engine/client/streams.py
        base = new_run_base()
        keep, reused = resume.for_call(task, single=False)
    kept = resume.plan_map(task, base, bounds, reused, aligned is not None) if reused else None
    if kept is not None:
        bounds = kept.bounds
    cache = None
    if task.managed:  # cached runs are answered here and not submitted
        from daskflow.engine.client.cache_lookup import for_map

        cache = for_map(task, names, kinds, n, bounds, base, bool(wait_for), aligned, offset)
        bounds = cache.bounds  # type: ignore[union-attr]
    specs, dep_lists, keys, up_lists = [], [], [], []
    flow_run_id = current_flow_run_id()
    behind = may_leave_writes(cache.spec if cache is not None else None, keep) if bounds else False
    wait_items = list(wait_for or ())
    for ci, (lo, hi) in enumerate(bounds):
        deps: dict[int, int] = {}
        ups: list[Chunk] = []
        waits = tuple(collect_refs(f, deps, ups) for f in wait_items)
        columns, refs = [], False
        for name in names:
            kind, value = kinds[name]
            if kind is BROADCAST:
                plain = isinstance(value, quote) or name in plain_broadcasts
                payload = value.value if isinstance(value, quote) else value
                columns.append(Column(BROADCAST, payload if plain else collect_refs(value, deps, ups)))
            elif isinstance(value, MapFutures):
                if value is aligned:
                    up = aligned.chunks[ci]
                    up.observe()
                    pos = deps.setdefault(id(up), len(ups))
                    if pos == len(ups):
                        ups.append(up)
                    columns.append(Column(ALIGNED, pos))
                else:
                    columns.append(Column(MAPPED, [collect_refs(f, deps, ups) for f in value[lo:hi]]))
                    refs = True
            else:
                part = value[lo:hi]
                # C-speed check for plain values; a range holds ints only (its slice stays a range,
                # sent as its bounds: checking its 10^7 ints made each one here)
                if type(part) is not range and not ATOMS.issuperset(map(type, part)):
                    before = len(ups)
                    part = [collect_refs(v, deps, ups) for v in part]
                    refs = refs or len(ups) > before
                columns.append(Column(MAPPED, part))
        specs.append(ChunkSpec(task, base, offset + lo, hi - lo, columns, refs, waits, flow_run_id,
                               cache.spec_for(lo, hi) if cache is not None else None,
                               kept=keep.part(kept.reuse(lo, hi)) if kept is not None else keep, behind=behind))
        dep_lists.append(_dep_inputs(ups, runner))
        up_lists.append(ups)
        keys.append(_key(task, base, offset + lo))
    handles = submit_chunks(runner, specs, dep_lists, keys, window) if specs else []
    chunks = [Chunk.submitted_as(s, h, runner, ups, key) for s, h, ups, key in zip(specs, handles, up_lists, keys)]
    if cache is not None:
        chunks = cache.merge(task, base, chunks, runner)
    if kept is not None and kept.known:
        chunks = sorted(chunks + [Chunk.known(task, res, runner) for res in kept.known], key=lambda c: c.start)
    _register(chunks)
    return MapFutures(chunks)


def map_window(runner: TaskRunner) -> int:
    """How many chunks of a sized ``.map()`` may be on the cluster unfinished at a time
    (``daskflow.map.window``; default two per worker thread, 0: no window)."""
    window = config.get("map.window")
    return 2 * runner.total_threads() if window in (None, "") else int(window)


def _known_upstreams(kinds: dict[str, Column], aligned: MapFutures | None) -> MapFutures | None:
    """Put the values of upstream maps that completed and are here in place of their futures.

    For a task that uses the cache: its keys are then computed on the client, so a rerun
    whose upstream map came from the cache (every chunk known, nothing submitted) is answered
    here too, and schedules nothing. A map still running, failed somewhere, or whose values
    stayed on the workers is left as it is (resolved on the worker). Returns ``aligned``, or
    None when it was replaced.
    """
    for name, (kind, value) in list(kinds.items()):
        if kind is not MAPPED or type(value) is not MapFutures:
            continue
        chunks = value.chunks
        if not all(c.handle is None and c.result is not None and not c.result.n_failed and not c.result.elsewhere
                   for c in chunks):
            continue
        values: list = []
        for c in chunks:
            c.observe()
            values.extend(c.result.get_values())  # type: ignore[union-attr]
        kinds[name] = Column(MAPPED, values)
        if value is aligned:
            aligned = None
    return aligned


def plan_columns(task: Task, params: dict[str, Any], given: set[str] | None = None,
                 ) -> tuple[dict[str, Column], int, MapFutures | None]:
    """Decide which parameters of a ``.map()`` are mapped (split) and which are broadcast.

    As in Prefect: defaults (parameters not in ``given``) are broadcast, values in
    ``**kwargs`` are planned one by one, ``allow_failure``/``quote`` around an iterable
    are iterated with each element keeping the wrapper, and a ``State`` maps over its
    result. Returns a column per parameter (a ``quote``d broadcast keeps its wrapper: its
    futures stay futures), the number of runs, and the one upstream ``MapFutures`` the
    map is aligned with chunk by chunk, if any.
    """
    kinds: dict[str, Column] = {}
    lengths: dict[str, int] = {}
    maps: list[MapFutures] = []
    for name, value in params.items():
        if given is not None and name not in given:
            kinds[name] = Column(BROADCAST, value)
        elif name == task.var_keyword and type(value) is dict and value:
            kinds[name] = _plan_kwargs(value, name, lengths)
        else:
            kinds[name] = _plan_value(value, name, lengths, maps)
    if not lengths:
        raise MappingMissingIterable(
            f"task {task.name!r}: .map() needs at least one iterable argument; got only "
            f"broadcast values for {list(params)}. Use .submit() for a single run."
        )
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise MappingLengthMismatch(
            f"task {task.name!r}: .map() iterables have different lengths ({detail}); "
            "wrap arguments to pass whole to every run in unmapped(...)"
        )
    n = next(iter(lengths.values()))
    aligned = maps[0] if len(maps) == 1 else None
    return kinds, n, aligned


def _plan_value(value: Any, name: str, lengths: dict[str, int], maps: list[MapFutures]) -> Column:
    """One argument's column; a mapped one's length goes to ``lengths`` under ``name``."""
    if isinstance(value, State):
        value = value.value()
    if isinstance(value, unmapped):
        return Column(BROADCAST, value.value)
    if isinstance(value, (quote, allow_failure)):
        inner = value.value
        if isinstance(inner, State):
            inner = inner.value()
        if not _is_iterable(inner):
            return Column(BROADCAST, value)
        seq = [type(value)(v) for v in inner]  # each element keeps the wrapper
        lengths[name] = len(seq)
        return Column(MAPPED, seq)
    if isinstance(value, (str, bytes, bytearray, dict)):
        return Column(BROADCAST, value)
    if isinstance(value, MapFutures):
        lengths[name] = len(value)
        maps.append(value)
        return Column(MAPPED, value)
    if isinstance(value, TaskRunFuture):
        resolved = value.result()
        if _is_iterable(resolved):
            seq = list(resolved)
            lengths[name] = len(seq)
            return Column(MAPPED, seq)
        return Column(BROADCAST, value)
    if _is_iterable(value):
        seq = value if isinstance(value, (list, tuple, range)) else list(value)
        lengths[name] = len(seq)
        return Column(MAPPED, seq)
    return Column(BROADCAST, value)


def _plan_kwargs(values: dict[str, Any], name: str, lengths: dict[str, int]) -> Column:
    """The ``**kwargs`` of a map: iterables inside are mapped, one dict of kwargs per run."""
    inner: dict[str, Column] = {}
    inner_lengths: dict[str, int] = {}
    for key, value in values.items():
        inner[key] = _plan_value(value, key, inner_lengths, [])
    if not inner_lengths:
        return Column(BROADCAST, values)
    lengths.update({f"{name}[{k!r}]": v for k, v in inner_lengths.items()})
    n = min(inner_lengths.values())  # unequal lengths are refused with the others'
    mapped = {k: list(c.payload) for k, c in inner.items() if c.kind is MAPPED}
    rows = [{k: mapped[k][i] if k in mapped else c.payload for k, c in inner.items()} for i in range(n)]
    return Column(MAPPED, rows)


def _holds_futures(value: Any) -> bool:
    ups: list[Chunk] = []
    collect_refs(value, {}, ups)
    return bool(ups)


def _is_iterable(value: Any) -> bool:
    if isinstance(value, (str, bytes, bytearray, dict)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    return True

