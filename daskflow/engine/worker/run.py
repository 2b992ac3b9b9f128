"""The task-run function: executes one run, or a chunk of runs, wherever it lands.

Where data crosses processes (a Dask runner; the threads runner skips the pickling)::

    client                                  worker (any process the runner chose)
    ------                                  --------------------------------------
    ChunkSpec (task as bytes, columns,  ->  run_chunk(spec, deps)        deps: upstream
      Refs for futures, cache spec,           host = spec.host               envelopes,
      the runner's Host)                      recall checkpoints (ledger)    sent worker
                                              ChunkStarted  --events-->      to worker
                                              run_rows(spec, deps)
                                                 one loop over the runs
                                              ChunkEnded    --events-->
    Chunk.result <- settle  <-------------  ChunkResult (codes, ends, values blob,
                                              errors, history, logs) -- never raises

What happens, in order, for every run of a chunk (``run_rows``, the one entry for runs:
chunks of ``.map()`` and ``.submit()`` on any runner, direct calls, background runs; a
direct call of a plain task skips the chunk's machinery, ``run_direct``):

1. *Inputs.* The chunk's arguments arrive in its spec as columns (one per parameter:
   a list of per-run values, a value broadcast to every run, or the values of an
   aligned upstream chunk), or as the one ``row`` of a single run. ``Ref`` placeholders
   left where futures stood are replaced by upstream values; if an upstream run did not
   complete (and the argument is not ``allow_failure``), the run ends ``NotReady``.
2. *Cache.* A managed task (a cache or commit hooks) looks its runs up first, in one
   read for the chunk (``managed.CacheWork``); hits end ``Cached`` without running.
3. *Execute.* One of two loops, each written once. Runs with nothing to manage (no
   retries, timeout, hooks, async body, upstream refs; a cache is fine) take the tight
   loop: call the function, record a state code and an end time, no per-run objects.
   Every other run goes through the lifecycle (``lifecycle.attempts``: Running, retries,
   hooks, timeouts) one run at a time. ``run_chunk`` measures the chunk's CPU time and its
   worker's peak RSS increase, and both loops measure a run of 5 ms or more on its own
   when it ends (``resources.Meter``: one float comparison per run otherwise).
4. *Envelope.* The chunk returns a ``ChunkResult`` and never raises. Whether a failure
   fails a downstream run is decided by daskflow from the envelope, not by Dask's error
   propagation; a Dask-level error (a lost worker) means the engine crashed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from array import array
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, Callable, Iterable

import cloudpickle

from daskflow.codes import CACHED, FAILED, NOT_READY, OK_CODES, StateEvent
from daskflow.engine.core import states as st
from daskflow.engine.core.context import TaskRunContext, task_run_ctx
from daskflow.engine.core.envelope import STATE_OF_CODE, ChunkResult, ChunkSpec, PlainRun, inline_bytes
from daskflow.engine.core.inputs import ALIGNED, BROADCAST, MAPPED, Column, Ref, UpstreamNotCompleted, resolve
from daskflow.engine.core.returned_states import settle_returned_states
from daskflow.engine.worker import logging as run_logging
from daskflow.engine.worker import reports
from daskflow.engine.worker.checkpoints import Checkpoint, Notes
from daskflow.engine.worker.current_run import note_failed_inputs
from daskflow.engine.worker.hosts import current_host, host_var
from daskflow.engine.worker.keep import keep_chunk, reuse_kept
from daskflow.engine.worker.limits import limited_task
from daskflow.engine.worker.lifecycle import (
    EndsEarly,
    Outcome,
    attempts,
    drive_async,
    drive_sync,
    run_inputs,
    step_sync,
)
from daskflow.engine.worker.managed import NO_CACHE, CacheWork, cache_work
from daskflow.engine.worker import resources
from daskflow.engine.worker.resources import HEAVY_SECONDS, Meter
from daskflow.engine.worker.retries import Parked, park, run_ended, settle_parked
from daskflow.engine.worker.write_behind import Write, leave, wait_now

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.runners.base import Host


# ---------------------------------------------------------------------------------------
# Entry points


def run_chunk(spec: ChunkSpec, deps: list[ChunkResult] = ()) -> ChunkResult:  # type: ignore[assignment]
    """Run a chunk where its runner put it: every run, then the sealed envelope.

    The runner handed the chunk its host (``spec.host``). When Dask runs the chunk again
    after losing a worker, the host may hold its envelope already (the client kept it:
    return it, run nothing) or checkpoints of the runs an earlier attempt finished (run
    only the rest).
    """
    host = spec.host or current_host()
    token = host_var.set(host)
    try:
        done: Checkpoint | None = None
        before: ChunkResult | None = None  # the summary of an attempt whose values were lost
        if spec.checkpoints:
            kept, notes = host.recall()
            if kept is not None:
                before = cloudpickle.loads(kept)
                if not before.elsewhere:
                    return before  # the client holds this envelope: nothing runs again
                if spec.cache is not None:  # values that were cached are read back, not computed again
                    spec.cache.lookup = True
            done = Checkpoint.joined(notes, spec.n) if notes and before is None else None
        reports.chunk_starting(spec.base, spec.start, host)
        meter = Meter() if resources.enabled() else None
        writes: list[Write] | None = [] if spec.behind and spec.flow_run_id is not None else None
        try:
            result = run_rows(spec, list(deps), done=done, host=host, meter=meter, keep=False, writes=writes)
        finally:
            used = meter.finish() if meter is not None else None
        result.resources = used
        result.worker = host.address()
        if before is not None:
            recomputed(result, before, host.address())
        result.seal(inline_bytes() if host.remote() else None)
        keep_chunk(spec, result, writes)  # after the seal: a chunk's kept values reuse its pickled blob
        if writes:  # the storage's records of the cache and kept values: left to the flow run's end
            if leave(spec.flow_run_id, writes, host.others_queued()):  # type: ignore[arg-type]
                result.behind = True
            else:
                wait_now(writes)
        reports.chunk_ended(result, host)
        return result
    finally:
        host_var.reset(token)


def recomputed(res: ChunkResult, before: ChunkResult, worker: str | None) -> None:
    """Record this attempt as what it is: a new attempt of runs whose values were lost with
    their worker (run_count + 1, history says why); runs the cache gave back were not run."""
    res.recomputed = True
    where = f" (now on {worker})" if worker else ""
    now = time.time()
    for i in range(res.n):
        if before.codes[i] not in OK_CODES:
            continue
        ran = res.codes[i] != CACHED
        history = [*before.history.get(i, [StateEvent("RUNNING", "Running", before.started_at(i))]),
                   StateEvent(STATE_OF_CODE[before.codes[i]][0].name, STATE_OF_CODE[before.codes[i]][1],
                              before.ends[i] if i < len(before.ends) else now, ""),
                   StateEvent("RUNNING", "Running" if ran else "Cached", now,
                              ("its value was lost with its worker; computed again" if ran else
                               "its value was lost with its worker; read back from the result cache") + where)]
        res.history[i] = history + res.history.get(i, [])[1:]
        if ran:
            res.run_counts[i] = before.run_count(i) + res.run_count(i)
        else:
            res.codes[i], res.run_counts[i] = before.codes[i], before.run_count(i)


def run_pickled_chunk(spec: bytes, deps: list[ChunkResult] = ()) -> ChunkResult:  # type: ignore[assignment]
    """``run_chunk`` for a spec the client pickled itself.

    Dask pickles a graph with ``pickle`` first and again with ``cloudpickle`` when the
    result names ``__main__``; a spec holding a task defined in a script would be pickled
    twice per submission. Bytes are cheap to pickle twice.
    """
    return run_chunk(cloudpickle.loads(spec), deps)


def run_rows(spec: ChunkSpec, deps: list, done: Checkpoint | None = None, host: Host | None = None,
             meter: Meter | None = None, keep: bool = True, writes: list[Write] | None = None) -> ChunkResult:
    """Run the runs of ``spec`` (its columns, or its one ``row``); the envelope, unsealed.

    ``deps``: the upstream envelopes its ``Ref``s point into. ``done``: runs an earlier
    attempt finished; they are restored, not run. ``host``: given by ``run_chunk``, whose
    runner keeps checkpoints when ``spec.checkpoints``. ``meter``: measures heavy runs one
    by one (``run_chunk``'s; a direct call has none). ``keep``: keep the completed values for a
    retry here (``run_chunk`` keeps them itself, once sealed). ``writes``: the records for a
    result storage go there, for the caller to write (``run_chunk``, ``write_behind``).
    """
    task, n = spec.task, spec.n
    if task.tags:  # once per chunk: a task whose tags name limits holds their slots while bodies run
        task = limited_task(task)
    res = ChunkResult(task.name, spec.base, spec.start, n, bytearray(n), [None] * n)
    res.started = time.time()
    refs = spec.refs
    try:
        for ref in spec.wait_refs:
            resolve(ref, deps)
        if spec.row is None:
            iterables, refs = _iterables(spec.columns, deps, n, refs)
    except UpstreamNotCompleted as exc:
        return ChunkResult.all_failed(task.name, spec.base, spec.start, n, NOT_READY, None, exc.message)
    ctx = TaskRunContext(task, spec.base, spec.start, flow_run_id=spec.flow_run_id, spec=spec, deps=deps,
                         default_name=spec.name)
    if spec.name:
        res.names[0] = spec.name
    token = task_run_ctx.set(ctx)
    sink = run_logging.open_sink()
    prints = run_logging.log_prints(True) if task.options.log_prints else None
    notes = Notes(res, host, 0, res.started, inline_bytes()) if spec.checkpoints and host is not None else None
    ends = array("d", bytes(8 * n))
    try:
        if spec.row is not None:
            rows: Any = (spec.row,)
        else:
            rows = zip(*iterables) if iterables else repeat((), n)
        first = 0
        if done is not None:
            done.restore(res)
            ends, first = res.ends, done.hi
            rows = islice(rows, first, None)
            if notes is not None:
                notes.lo = first
        items: Iterable = enumerate(rows, first)
        if spec.kept is not None and spec.kept.reuse:
            items = reuse_kept(spec.kept.reuse, items, res, ends)
        cache = cache_work(task, res, ctx, deps if refs else None, spec.cache) if task.managed else NO_CACHE
        if writes is not None:
            cache.leave_to(writes)
        res.first = time.time()  # runs are timed from here: the chunk's setup is not run 0's time
        with cache.scope():
            items = cache.prepare(items, ends)
            if (task.fast_path or (task.plain and cache.resolved)) and not refs:
                items = cache.fill_hits(items, ends)
                _run_tight(task.fn, items, res, ctx, notes, ends, meter)
                cache.stage_fresh(items)
            else:
                _run_each(task, items, res, ctx, None if cache.resolved or not refs else deps, cache, notes, ends,
                          meter)
        if notes is not None:
            notes.finish(ends)
        res.ends = ends
        cache.finish(first)
        if keep:
            keep_chunk(spec, res)  # its PUT goes out while the cache write's may still run
        cache.settle()
        if res.n_failed:
            note_failed_inputs(res, ctx)
    finally:
        if prints is not None:
            run_logging.capturing_prints.reset(prints)
        res.logs = run_logging.close_sink(sink)
        task_run_ctx.reset(token)
    return res


def run_direct(spec: ChunkSpec, deps: list) -> ChunkResult | PlainRun:
    """``run_rows`` for a direct call ``t(x)`` (``spec.row``): a run of a plain task (no cache,
    tags, upstream refs, printed logs) without the chunk's machinery, whose cost is the whole
    engine's share of a trivial call. A run that completed plainly (no logs, no State
    returned) gives a ``PlainRun``, not an envelope: making a ``ChunkResult`` cost as much as
    the rest of the run."""
    task = spec.task
    if (not task.fast_path or spec.refs or spec.wait_refs or task.tags or task.options.log_prints):
        return run_rows(spec, deps)
    started = time.time()
    ctx = TaskRunContext(task, spec.base, spec.start, flow_run_id=spec.flow_run_id, spec=spec, deps=(),
                         default_name=spec.name)
    token = task_run_ctx.set(ctx)
    sink = run_logging.open_sink()
    res = None
    try:
        error = None
        try:
            value = task.fn(*spec.row)  # type: ignore[misc]
        except Exception as exc:
            value, error = None, exc
        end = time.time()
        if error is not None or type(value) is st.State or spec.name:
            res = _one_envelope(spec, value, error, started, end, ctx)
    finally:
        logs = run_logging.close_sink(sink)
        task_run_ctx.reset(token)
    if res is None:
        if logs is None:
            return _new_plain(PlainRun, (spec.base, spec.start, value, started, end))
        res = _one_envelope(spec, value, None, started, end, ctx)
    res.logs = logs
    return res


_new_plain = tuple.__new__  # a NamedTuple from all its fields, without its Python-level __new__


def _one_envelope(spec: ChunkSpec, value: Any, error: Exception | None, started: float, end: float,
                  ctx: TaskRunContext) -> ChunkResult:
    """The envelope of a direct call's one run that did not end plainly (or has logs)."""
    res = ChunkResult(spec.task.name, spec.base, spec.start, 1, bytearray(1), [value], started=started,
                      ends=array("d", (end,)), first=started)
    if spec.name:
        res.names[0] = spec.name
    if error is not None:
        res.fail(0, FAILED, error)
    if type(value) is st.State:
        settle_returned_states(res)
    if res.n_failed:
        note_failed_inputs(res, ctx)
    return res


def _iterables(columns: list[Column], deps: list, n: int, refs: bool) -> tuple[list, bool]:
    out = []
    for kind, payload in columns:
        if kind is MAPPED:
            out.append(payload)
        elif kind is BROADCAST:
            out.append(repeat(resolve(payload, deps), n))
        else:  # ALIGNED: the values of an aligned upstream chunk
            assert kind is ALIGNED
            up: ChunkResult = deps[payload]
            if up.n_failed:
                refs = True
                out.append([Ref(payload, i) if not up.ok(i) else v for i, v in enumerate(up.get_values())])
            else:
                out.append(up.get_values())
    return out, refs


# ---------------------------------------------------------------------------------------
# The two loops


def _run_tight(fn: Callable, items: Iterable[tuple[int, tuple]], res: ChunkResult, ctx: TaskRunContext,
               notes: Notes | None, ends: array, meter: Meter | None = None) -> None:
    """The hot loop: no per-run objects, one state code and one end time per run; a run that
    took ``HEAVY_SECONDS`` or more is measured on its own (``resources``)."""
    values, clock = res.values, time.time
    due = notes.due if notes is not None else float("inf")
    heavy, last = (HEAVY_SECONDS, res.started) if meter is not None else (float("inf"), 0.0)
    for i, args in items:
        ctx.index = i
        try:
            values[i] = fn(*args)  # type: ignore[index]
        except Exception as exc:
            res.fail(i, FAILED, exc)
        now = ends[i] = clock()
        if now - last >= heavy:
            meter.heavy(i, now - last)  # type: ignore[union-attr]
        last = now
        if now >= due:
            notes.reached(i, now, ends)  # type: ignore[union-attr]
            due = notes.due  # type: ignore[union-attr]
    if st.State in {*map(type, values)}:  # type: ignore[arg-type]  # C-speed scan (a set: faster than `in map`)
        settle_returned_states(res)


def _run_each(task: Task, items: Iterable[tuple[int, tuple]], res: ChunkResult, ctx: TaskRunContext,
              deps: list | None, cache: CacheWork, notes: Notes | None, ends: array, meter: Meter | None = None) -> None:
    """Every run through its whole lifecycle (retries, timeouts, hooks), one at a time.

    A run that must wait before its retry is parked and the loop goes on with the chunk's
    other runs; parked runs resume once their delay has passed, earliest first, and the
    chunk waits only when nothing else is left (on a Dask worker, off the worker's thread
    pool: the worker runs other chunks meanwhile). A chunk of runs that fail once with a
    1 s delay so takes its runs' time plus about one delay, not one delay per failure.
    Checkpoints stop at the first parked run: a run noted finished is final.
    """
    parked: list[Parked] = []
    starts = res.starts = array("d", bytes(8 * res.n))  # a parked run ends after later ones started
    for i, row in items:
        starts[i] = time.time()
        ctx.index, ctx.run_count, ctx.name, ctx.final_state = i, 1, "", None
        outcome = run_one(task, ctx, row, deps, cache, parked)
        if outcome is None:
            continue
        now = run_ended(i, outcome, res, ctx, cache, ends, meter)
        if notes is not None and not parked and now >= notes.due:
            notes.reached(i, now, ends)
    if parked:  # retried through the runner, on any worker, as their delays pass
        settle_parked(parked, ctx.spec, res, ctx, cache, ends, meter)


def run_one(task: Task, ctx: TaskRunContext, row: tuple, deps: list | None, cache: CacheWork = NO_CACHE,
            parked: list[Parked] | None = None) -> Outcome | None:
    """Run one run through its whole lifecycle; returns (code, value or exception, history).

    With ``parked`` (the run loop's), a sync run that must wait before a retry is parked
    there instead (returns None).
    """
    try:
        args, kwargs = run_inputs(task, ctx, row, deps)
    except EndsEarly as early:
        return early.outcome
    hit = cache.hit(ctx, args, kwargs)
    if hit is not None:
        return hit
    history: list = []
    engine = attempts(task, ctx, args, kwargs, history)
    if task.is_async:
        return asyncio.run(drive_async(engine, task, args, kwargs))
    if parked is None:
        return drive_sync(engine, task, args, kwargs)
    wait, outcome = step_sync(engine, task, args, kwargs)
    if outcome is None:
        park(parked, ctx.index, wait, engine, args, kwargs, ctx, history)
    return outcome


async def arun_single(spec: ChunkSpec, deps: list) -> ChunkResult:
    """``run_rows`` for the one run of an async task, awaited in the caller's event loop."""
    task = limited_task(spec.task) if spec.task.tags else spec.task
    res = ChunkResult(task.name, spec.base, 0, 1, bytearray(1), [None])
    res.started = time.time()
    ctx = TaskRunContext(task, spec.base, 0, flow_run_id=spec.flow_run_id, spec=spec, deps=deps,
                         default_name=spec.name)
    if spec.name:
        res.names[0] = spec.name
    token = task_run_ctx.set(ctx)
    ends = array("d", [0.0])
    try:
        for ref in spec.wait_refs:
            resolve(ref, deps)
        deps_or_none = deps if spec.refs else None
        cache = cache_work(task, res, ctx, deps_or_none, None) if task.managed else NO_CACHE
        for i, row in cache.prepare([(0, spec.row)], ends):
            try:
                args, kwargs = run_inputs(task, ctx, row, None if cache.resolved else deps_or_none)
                outcome = cache.hit(ctx, args, kwargs) or await drive_async(attempts(task, ctx, args, kwargs),
                                                                            task, args, kwargs)
            except EndsEarly as early:
                outcome = early.outcome
            res.record(i, outcome, ctx.run_count, ctx.name)
            res.keep(i, ctx.final_state)
            cache.done(i, outcome)
            ends[i] = time.time()
        res.ends = ends
        cache.finish(0)
        keep_chunk(spec, res)
        cache.settle()
        if res.n_failed:
            note_failed_inputs(res, ctx)
    except UpstreamNotCompleted as exc:
        res.record(0, (NOT_READY, exc.message, None), 1)
        res.ends = array("d", [time.time()])
    finally:
        task_run_ctx.reset(token)
    return res


def fold_values(fn: Callable[[Any, Any], Any], res: ChunkResult) -> Any:
    """A chunk's values folded with ``fn``, on the worker they stayed on (``MapFutures.reduce``):
    only the one value leaves it."""
    return functools.reduce(fn, res.get_values())
