"""Runs awaiting a retry: parked by their chunk, retried through the runner on any worker.

A run that fails with retries left and a retry delay does not hold up its chunk: the run
loop parks it (``park``) and goes on with the chunk's other runs (``run._run_each``).
When nothing else is left, the chunk gives its worker slot away and, as each delay
passes, hands the runs that are due to the runner as a *new call* (``run_retries``), which
the runner places where it likes: on a Dask cluster, any worker (the scheduler decides, as
for any task). The chunk then waits for those calls, still off the worker's pool, and
records what they return as its runs' outcomes::

    chunk (worker A)                                   retry call (any worker)
    ----------------                                   -----------------------
    run i fails, delay d -> Parked(i, lifecycle)
    ... the chunk's other runs ...
    slot given away; sleep until the earliest due
    due runs -> RetryRun(index, args, kwargs,   ----->  run_retries(spec, runs)
                run_count, name, history)                 each run's lifecycle from its
                                                          next attempt (history kept);
                                                          failing again with a delay: parked
                                                          here, and retried elsewhere again
    merge: codes, values, errors, tracebacks,   <-----  ChunkResult of the chunk's n runs
           history, logs into the chunk's envelope        (only the retried ones filled)

What stays with the chunk: the cache (a retried run's value is written where its chunk
writes, ``cache.done``), checkpoints, and the chunk's resources (a run retried elsewhere
is not in its chunk's CPU time). What travels: the task (as the chunk's spec, which
pickles it once), the retried runs' resolved arguments, and their state so far. Where
the host cannot place calls (the threads runner; a chunk that holds Dask resources, as a
background run holds its task worker's: a new call needing them could wait for it
forever) the runs are retried in the chunk's thread as their delays pass (``_settle_here``).
A retry call that is lost (its worker died) ends its runs Crashed, naming the cause.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
import uuid
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from daskflow.codes import CRASHED, OK_CODES
from daskflow.engine.core.context import TaskRunContext, task_run_ctx
from daskflow.engine.core.envelope import ChunkResult, ChunkSpec
from daskflow.engine.worker import logging as run_logging
from daskflow.engine.worker.hosts import current_host, host_var
from daskflow.engine.worker.lifecycle import Engine, Outcome, attempts, step_sync
from daskflow.engine.worker.limits import limited_task
from daskflow.engine.worker.managed import NO_CACHE, CacheWork
from daskflow.engine.worker.reports import chunk_aside

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.worker.resources import Meter

__all__ = ["Parked", "RetryRun", "park", "run_ended", "run_retries", "settle_parked"]

#: Runs due within this much of the earliest go in the same retry call (one call, not one per run).
BATCH_SECONDS = 0.05


@dataclass(slots=True)
class Parked:
    """A run of the chunk awaiting its retry: its lifecycle, paused until ``due`` (monotonic)."""

    due: float
    index: int
    engine: Engine
    args: tuple
    kwargs: dict
    run_count: int
    name: str
    history: list  # its states so far (the lifecycle appends to this list)

    def __lt__(self, other: Parked) -> bool:  # heap order: the earliest due first
        return (self.due, self.index) < (other.due, other.index)


class RetryRun(NamedTuple):
    """A parked run as it travels to its retry call: what its next attempt needs."""

    index: int
    args: tuple
    kwargs: dict
    run_count: int  # the number of the next attempt
    name: str
    history: list


def park(parked: list[Parked], i: int, wait: float, engine: Engine, args: tuple, kwargs: dict,
         ctx: TaskRunContext, history: list) -> None:
    """Park run ``i``, due in ``wait`` seconds."""
    heapq.heappush(parked, Parked(time.monotonic() + wait, i, engine, args, kwargs, ctx.run_count, ctx.name, history))


def run_ended(i: int, outcome: Outcome, res: ChunkResult, ctx: TaskRunContext, cache: CacheWork, ends: array,
              meter: Meter | None = None) -> float:
    """Record run ``i``'s outcome in the envelope and the cache; its end time."""
    res.record(i, outcome, ctx.run_count, ctx.name)
    res.keep(i, ctx.final_state)
    cache.done(i, outcome)
    now = ends[i] = time.time()
    if meter is not None:
        meter.ended(i, now)
    return now


def settle_parked(parked: list[Parked], spec: ChunkSpec, res: ChunkResult, ctx: TaskRunContext, cache: CacheWork,
                  ends: array, meter: Meter | None = None) -> None:
    """Retry the parked runs of a chunk through the runner, each batch once its delay passed;
    record their outcomes. Waits off the worker's pool (the worker runs other work meanwhile)."""
    host = current_host()
    if not host.places_calls():
        _settle_here(parked, host, res, ctx, cache, ends, meter)
        return
    calls: list[tuple[list[Parked], Any]] = []
    here: dict[int, ChunkResult] = {}  # retries the runner could not take, run in place (by call)
    chunk_aside(spec.base, spec.start)  # the client's window sends another chunk meanwhile
    with host.idle():
        while parked:
            wait = parked[0].due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the retry delay itself: nothing to wait for but the clock
            due = [heapq.heappop(parked)]
            while parked and parked[0].due <= due[0].due + BATCH_SECONDS:
                due.append(heapq.heappop(parked))
            runs = [RetryRun(p.index, p.args, p.kwargs, p.run_count, p.name, p.history) for p in due]
            key = f"{spec.task.name}-retry-{uuid.uuid4().hex}"
            try:
                calls.append((due, host.submit_call(run_retries, (_retry_spec(spec), runs), key)))
            except Exception:  # noqa: BLE001 - e.g. an argument that does not pickle: retried where it is
                here[len(calls)] = run_retries(_retry_spec(spec), runs)
                calls.append((due, None))
        sent = host.gather_calls([handle for _, handle in calls if handle is not None])
    got = iter(sent)
    for at, (due, handle) in enumerate(calls):
        result = here[at] if handle is None else next(got)
        for p in due:
            ctx.index, ctx.run_count, ctx.name, ctx.final_state = p.index, p.run_count, p.name, None
            _merge_one(p.index, result, res, ctx, cache, ends, meter)


def _settle_here(parked: list[Parked], host: Any, res: ChunkResult, ctx: TaskRunContext, cache: CacheWork,
                 ends: array, meter: Meter | None) -> None:
    """Retry the parked runs in this thread, each once its delay passed (waits off the pool):
    a host that cannot place calls (threads; a chunk holding resources)."""
    while parked:
        p = heapq.heappop(parked)
        wait = p.due - time.monotonic()
        if wait > 0:
            host.sleep(wait, idle=True)
        ctx.index, ctx.run_count, ctx.name, ctx.final_state = p.index, p.run_count, p.name, None
        wait, outcome = step_sync(p.engine, ctx.task, p.args, p.kwargs)
        if outcome is None:
            park(parked, p.index, wait, p.engine, p.args, p.kwargs, ctx, p.history)
        else:
            run_ended(p.index, outcome, res, ctx, cache, ends, meter)


def _retry_spec(spec: ChunkSpec) -> ChunkSpec:
    """The chunk's spec without its inputs and what only the chunk does (cache, checkpoints)."""
    return dataclasses.replace(spec, columns=None, refs=False, wait_refs=(), cache=None, checkpoints=False,
                               kept=None, row=None)


def _merge_one(i: int, result: ChunkResult | BaseException, res: ChunkResult, ctx: TaskRunContext,
               cache: CacheWork, ends: array, meter: Meter | None) -> None:
    if isinstance(result, BaseException):  # the retry call was lost: the engine, not the body, failed
        message = f"its retry was lost on the cluster: {type(result).__name__}: {result}"
        run_ended(i, (CRASHED, message, None), res, ctx, cache, ends, meter)
        return
    code = result.codes[i]
    if code in OK_CODES:
        value: Any = result.get_values()[i]
    else:
        value = result.errors.get(i) or result.messages.get(i, "")
    ctx.run_count = result.run_count(i)
    ctx.name = result.names.get(i, ctx.name)
    if result.kept and i in result.kept:
        ctx.final_state = result.kept[i]
    run_ended(i, (code, value, result.history.get(i)), res, ctx, cache, ends, meter)
    if i in result.tracebacks:  # as formatted where it was raised (a pickled exception has no traceback)
        res.tracebacks[i] = result.tracebacks[i]
    if i in result.messages:
        res.messages[i] = result.messages[i]
    if result.logs:
        run_logging.adopt([r for r in result.logs if r[1] == i])


def run_retries(spec: ChunkSpec, runs: list[RetryRun]) -> ChunkResult:
    """The retry call: the next attempts of ``runs`` (parked runs of the chunk ``spec``), on
    whatever worker the runner chose; an envelope of the chunk's size with these runs filled."""
    host = spec.host or current_host()
    host_token = host_var.set(host)
    task: Task = limited_task(spec.task) if spec.task.tags else spec.task
    n = spec.n
    res = ChunkResult(task.name, spec.base, spec.start, n, bytearray(n), [None] * n)
    res.started = time.time()
    ctx = TaskRunContext(task, spec.base, spec.start, flow_run_id=spec.flow_run_id, spec=spec, default_name=spec.name)
    token = task_run_ctx.set(ctx)
    sink = run_logging.open_sink()
    prints = run_logging.log_prints(True) if task.options.log_prints else None
    ends = array("d", bytes(8 * n))
    parked: list[Parked] = []
    try:
        for run in runs:
            ctx.index, ctx.run_count, ctx.name, ctx.final_state = run.index, run.run_count, run.name, None
            ctx.spec = _with_row(spec, task, run)
            history = list(run.history)
            engine = attempts(task, ctx, run.args, run.kwargs, history)
            wait, outcome = step_sync(engine, task, run.args, run.kwargs)
            if outcome is None:
                park(parked, run.index, wait, engine, run.args, run.kwargs, ctx, history)
            else:
                run_ended(run.index, outcome, res, ctx, NO_CACHE, ends)
        if parked:
            settle_parked(parked, spec, res, ctx, NO_CACHE, ends)
        res.ends = ends
    finally:
        if prints is not None:
            run_logging.capturing_prints.reset(prints)
        res.logs = run_logging.close_sink(sink)
        task_run_ctx.reset(token)
        host_var.reset(host_token)
    return res.seal() if host.remote() else res  # in this process (threads), values need not pickle


def _with_row(spec: ChunkSpec, task: Task, run: RetryRun) -> ChunkSpec:
    """The spec a retried run's ``daskflow.runtime.task_run.parameters`` reads (its own row)."""
    try:
        return dataclasses.replace(spec, row=task.row_of(run.args, run.kwargs), n=1)
    except Exception:  # noqa: BLE001 - parameters are a convenience: the run goes on without them
        return spec
