"""The task-run function: executes one run, or a chunk of runs, wherever it lands.

What happens, in order, for every run of a chunk:

1. *Inputs.* The chunk's arguments arrive in its spec as columns (one per
   parameter: a list of per-run values, a value broadcast to every run, or the values
   of an aligned upstream chunk). ``Ref`` placeholders left where futures stood are
   replaced by upstream values; if an upstream run did not complete (and the argument
   is not ``allow_failure``), the run ends ``NotReady`` without executing.
2. *Execute.* Runs of a task with nothing to manage (no retries, timeout, hooks,
   cache, async body) take the fast path: a tight loop that calls the function and
   records a state code and an end time per run, with no per-run objects. Every other
   run goes through ``attempts``, a generator that owns the lifecycle (Running,
   Retrying, hooks, retry delays) and asks its driver to call the body; the sync driver
   here and the async driver for awaited direct calls share it, so sync and async
   tasks have one engine.
3. *Envelope.* The chunk returns a ``ChunkResult`` (``engine/core/envelope.py``) and never raises: per-run state
   codes, values (pickled together as one blob when the chunk holds many runs),
   exceptions and extra state history for the runs that had some. Whether a failure
   fails a downstream run is decided by daskflow from the envelope, not by Dask's
   error propagation; a Dask-level error (a lost worker) means the engine crashed.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from array import array
from dataclasses import dataclass
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, Callable, Generator

import cloudpickle

from daskflow.codes import CANCELLED, COMPLETED, CRASHED, FAILED, NOT_READY, OK_CODES, TIMED_OUT, StateEvent
from daskflow.engine.core import states as st
from daskflow.engine.core.context import TaskRunContext, task_run_ctx
from daskflow.engine.core.envelope import STATE_OF_CODE, ChunkResult, ChunkSpec, Unpicklable
from daskflow.engine.core.inputs import ALIGNED, BROADCAST, MAPPED, Column, Ref, UpstreamNotCompleted, resolve
from daskflow.engine.core.returned_states import returned_state_outcome, settle_returned_states
from daskflow.engine.core.states import describe_error
from daskflow.engine.worker import logging as run_logging
from daskflow.engine.worker import reports
from daskflow.exceptions import ParameterSerializationError, TaskRunTimeoutError
from daskflow.runners.dask import in_dask_task, worker_address

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task



# ---------------------------------------------------------------------------------------
# Entry points


def run_chunk(spec: ChunkSpec, deps: list[ChunkResult] = ()) -> ChunkResult:  # type: ignore[assignment]
    """Run a chunk on a worker: deserialize its columns, run every run, seal the envelope.

    When Dask runs the chunk again after losing a worker, the ledger may already hold
    its envelope (the client kept it: return it, run nothing) or checkpoints of the runs
    an earlier attempt finished (run only the rest).
    """
    worker = worker_address()
    done: Checkpoint | None = None
    checkpoints = spec.checkpoints and worker is not None
    if checkpoints:
        from daskflow.runners import ledger

        kept, notes = ledger.recall()
        if kept is not None:
            return cloudpickle.loads(kept)
        done = Checkpoint.joined(notes, spec.n) if notes else None
    reports.chunk_starting(spec.base, spec.start, worker)
    result = run_rows(spec.task, spec.base, spec.start, spec.n, spec.columns, list(deps),
                      spec.refs, spec.wait_refs, spec.flow_run_id, spec.cache, done=done,
                      checkpoints=checkpoints)
    result.worker = worker
    reports.chunk_ended(result)
    return result.seal()


def run_pickled_chunk(spec: bytes, deps: list[ChunkResult] = ()) -> ChunkResult:  # type: ignore[assignment]
    """``run_chunk`` for a spec the client pickled itself.

    Dask pickles a graph with ``pickle`` first and again with ``cloudpickle`` when the
    result names ``__main__``; a spec holding a task defined in a script would be pickled
    twice per submission. Bytes are cheap to pickle twice.
    """
    return run_chunk(cloudpickle.loads(spec), deps)


@dataclass(slots=True)
class Checkpoint:
    """Runs ``lo .. hi`` of a chunk that finished on a worker (noted to the ledger while it ran)."""

    lo: int
    hi: int
    codes: bytes
    values: list
    ends: list
    errors: dict

    @classmethod
    def joined(cls, blobs: list[bytes], n: int) -> Checkpoint | None:
        """The longest run of checkpoints from run 0 (None if there is none, or they do not load)."""
        try:
            parts = sorted((cloudpickle.loads(b) for b in blobs), key=lambda c: c.lo)
        except Exception:
            return None
        out = cls(0, 0, b"", [], [], {})
        for part in parts:
            if part.lo != out.hi or part.hi > n:
                continue
            out.hi, out.codes = part.hi, out.codes + part.codes
            out.values.extend(part.values)
            out.ends.extend(part.ends)
            out.errors.update(part.errors)
        return out if out.hi else None

    def restore(self, res: ChunkResult) -> None:
        """Put these finished runs into a new attempt's envelope."""
        res.codes[: self.hi] = self.codes
        res.values[: self.hi] = self.values  # type: ignore[index]
        res.ends = array("d", self.ends) + array("d", bytes(8 * (res.n - self.hi)))
        for i, (exc, message) in self.errors.items():
            res.fail(i, self.codes[i], exc, message)


def keep_finished_runs(cancelled: ChunkResult, finished: Checkpoint) -> None:
    """Turn the first runs of an all-Cancelled envelope back into what they ended as.

    For an interruption: the runs a chunk noted finished before it was cancelled are
    recorded as they ended (Completed, Failed...); the rest stay Cancelled.
    """
    hi, now = finished.hi, cancelled.ends[finished.hi] if finished.hi < cancelled.n else 0.0
    for i in range(hi):
        cancelled.errors.pop(i, None)
        cancelled.messages.pop(i, None)
    cancelled.n_failed -= hi
    finished.restore(cancelled)
    for i in range(hi, cancelled.n):
        cancelled.ends[i] = now


class Notes:
    """Checkpoints of a chunk running on a Dask worker, sent to the ledger as runs finish.

    The loop pays one float comparison per run (``now >= notes.due``). Heavy runs (5 ms
    or more each) are noted as soon as they finish, so a lost worker costs at most the
    runs in flight; lighter ones about every quarter second; tiny runs of short chunks never.
    """

    __slots__ = ("res", "lo", "since", "due")
    HEAVY = 0.005
    EVERY = 0.25

    def __init__(self, res: ChunkResult, lo: int, now: float) -> None:
        self.res, self.lo, self.since, self.due = res, lo, now, now + self.HEAVY

    def reached(self, i: int, now: float, ends: array) -> None:
        """Run ``i`` ended at ``now`` (past ``due``): note runs ``lo .. i`` if they were heavy or long."""
        runs = i + 1 - self.lo
        if now - self.since < self.EVERY and now - self.since < self.HEAVY * runs:
            self.due = self.since + self.EVERY  # light runs: check again later
            return
        res, lo, hi = self.res, self.lo, i + 1
        errors = {j: (res.errors.get(j), res.messages.get(j, "")) for j in range(lo, hi) if res.codes[j] not in OK_CODES}
        part = Checkpoint(lo, hi, bytes(res.codes[lo:hi]), res.values[lo:hi], list(ends[lo:hi]), errors)  # type: ignore[index]
        try:
            blob = cloudpickle.dumps(part, protocol=5)
        except Exception:  # an unpicklable value: these runs are not checkpointed
            blob = None
        if blob is not None:
            from daskflow.runners import ledger

            ledger.note(blob)
        self.lo, self.since, self.due = hi, now, now + self.HEAVY


def run_rows(task: Task, base: int, start: int, n: int, columns: list[Column] | None, deps: list,
             refs: bool, wait_refs: tuple, flow_run_id: str | None, cache: Any = None,
             row: tuple | None = None, done: Checkpoint | None = None,
             checkpoints: bool = False) -> ChunkResult:
    """Run ``n`` runs of ``task`` whose arguments are the rows of ``columns``.

    A direct call passes its one ``row`` instead of columns (``n`` is 1). ``done``: runs an
    earlier attempt finished; they are restored, not run. ``checkpoints``: note finished
    runs to the scheduler's ledger (only where the runner installed one).
    """
    res = ChunkResult(task.name, base, start, n, bytearray(n), [None] * n)
    res.started = time.time()
    try:
        for ref in wait_refs:
            resolve(ref, deps)
        if row is None:
            iterables, refs = _iterables(columns, deps, n, refs)  # type: ignore[arg-type]
    except UpstreamNotCompleted as exc:
        return ChunkResult.all_failed(task.name, base, start, n, NOT_READY, None, exc.message)
    ctx = TaskRunContext(task, base, start, flow_run_id=flow_run_id)
    token = task_run_ctx.set(ctx)
    sink = run_logging.open_sink()
    prints = run_logging.log_prints(True) if task.options.log_prints else None
    notes = Notes(res, 0, res.started) if checkpoints else None
    try:
        if row is not None:
            rows: Any = (row,)
        else:
            rows = zip(*iterables) if iterables else repeat((), n)
        if done is not None:
            done.restore(res)
            rows = islice(rows, done.hi, None)
            if notes is not None:
                notes.lo = done.hi
        first, ends = (done.hi, res.ends) if done else (0, None)
        if task.fast_path and not refs:
            _run_fast(task.fn, rows, res, ctx, notes, first, ends)
        elif task.managed:  # a cache or commit hooks: lookups, batched writes, transactions
            from daskflow.engine.worker.managed import run_managed

            run_managed(task, rows, res, ctx, deps if refs else None, cache, notes, first)
        else:
            _run_slow(task, rows, res, ctx, deps if refs else None, notes, first, ends)
    finally:
        if prints is not None:
            run_logging.capturing_prints.reset(prints)
        res.logs = run_logging.close_sink(sink)
        task_run_ctx.reset(token)
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


def _run_fast(fn: Callable, rows: Any, res: ChunkResult, ctx: TaskRunContext, notes: Notes | None = None,
              first: int = 0, ends: array | None = None) -> None:
    """The hot loop: no per-run objects, one state code and one end time per run."""
    values, clock = res.values, time.time
    ends = ends if ends is not None else array("d", bytes(8 * res.n))
    due = notes.due if notes is not None else float("inf")
    for i, args in enumerate(rows, first):
        ctx.index = i
        try:
            values[i] = fn(*args)  # type: ignore[index]
        except Exception as exc:
            res.fail(i, FAILED, exc)
        now = ends[i] = clock()
        if now >= due:
            notes.reached(i, now, ends)  # type: ignore[union-attr]
            due = notes.due  # type: ignore[union-attr]
    res.ends = ends
    if st.State in {*map(type, values)}:  # type: ignore[arg-type]  # C-speed scan (a set: faster than `in map`)
        settle_returned_states(res)


def _run_slow(task: Task, rows: Any, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
              notes: Notes | None = None, first: int = 0, ends: array | None = None) -> None:
    ends = ends if ends is not None else array("d", bytes(8 * res.n))
    for i, row in enumerate(rows, first):
        ctx.index, ctx.run_count, ctx.name, ctx.final_state = i, 1, "", None
        res.record(i, run_one(task, ctx, row, deps), ctx.run_count, ctx.name)
        res.keep(i, ctx.final_state)
        now = ends[i] = time.time()
        if notes is not None and now >= notes.due:
            notes.reached(i, now, ends)
    res.ends = ends


class EndsEarly(Exception):
    """A run that ends before its body is called (NotReady, unserializable input)."""

    def __init__(self, code: int, value: Any) -> None:
        self.outcome = (code, value, None)


def run_inputs(task: Task, ctx: TaskRunContext, row: tuple, deps: list | None) -> tuple[tuple, dict]:
    """Resolve a run's upstream values; its positional and keyword arguments."""
    if deps is not None:
        try:
            row = resolve(row, deps)
        except UpstreamNotCompleted as exc:
            raise EndsEarly(NOT_READY, exc.message) from None
    for value in row:
        if type(value) is Unpicklable:
            raise EndsEarly(FAILED, ParameterSerializationError(value.message))
    args, kwargs = task.split_row(row)
    try:
        ctx.name = task.run_name_for(args, kwargs)
    except Exception as exc:  # a bad task_run_name fails the run, not the chunk
        raise EndsEarly(FAILED, exc) from None
    return args, kwargs


def run_one(task: Task, ctx: TaskRunContext, row: tuple, deps: list | None) -> tuple[int, Any, list | None]:
    """Run one run through its whole lifecycle; returns (code, value or exception, history)."""
    try:
        args, kwargs = run_inputs(task, ctx, row, deps)
    except EndsEarly as early:
        return early.outcome
    engine = attempts(task, ctx, args, kwargs)
    if task.is_async:
        return asyncio.run(drive_async(engine, task, args, kwargs))
    return drive_sync(engine, task, args, kwargs)


async def arun_single(task: Task, base: int, row: tuple, deps: list, refs: bool, wait_refs: tuple,
                      flow_run_id: str | None) -> ChunkResult:
    """``run_rows`` for one run of an async task, awaited in the caller's event loop."""
    res = ChunkResult(task.name, base, 0, 1, bytearray(1), [None])
    res.started = time.time()
    ctx = TaskRunContext(task, base, 0, flow_run_id=flow_run_id)
    token = task_run_ctx.set(ctx)
    try:
        for ref in wait_refs:
            resolve(ref, deps)
        if task.managed:  # a cache or commit hooks
            from daskflow.engine.worker.managed import arun_managed

            await arun_managed(task, res, ctx, row, deps if refs else None)
            return res
        args, kwargs = run_inputs(task, ctx, row, deps if refs else None)
        outcome = await drive_async(attempts(task, ctx, args, kwargs), task, args, kwargs)
    except UpstreamNotCompleted as exc:
        outcome = (NOT_READY, exc.message, None)
    except EndsEarly as early:
        outcome = early.outcome
    finally:
        task_run_ctx.reset(token)
    res.record(0, outcome, ctx.run_count, ctx.name)
    res.keep(0, ctx.final_state)
    res.ends = array("d", [time.time()])
    return res


# ---------------------------------------------------------------------------------------
# The lifecycle, shared by the sync and async drivers

CALL = "call"
SLEEP = "sleep"
Engine = Generator[tuple[str, float], tuple[bool, Any], tuple[int, Any, list | None]]


def attempts(task: Task, ctx: TaskRunContext, args: tuple, kwargs: dict) -> Engine:
    """Own one run's lifecycle; yield ``(CALL, timeout)`` or ``(SLEEP, seconds)`` to the driver.

    A body that returns a ``State`` sets the run's state: a completed one its value, a
    failed one is retried like a raised exception, a cancelled or crashed one is final.
    """
    history: list | None = None
    opts = task.options
    first_start = time.time()
    run = (ctx.base, ctx.start + ctx.index)
    while True:
        if ctx.run_count > 1:
            history = history or [StateEvent("RUNNING", "Running", first_start)]
            history.append(StateEvent("RUNNING", "Retrying", time.time(), f"attempt {ctx.run_count}"))
            reports.run_retrying(ctx, history[-1])
        task.fire_hook("on_running", ctx, args, kwargs, st.State(st.StateType.RUNNING, task_run_id=run))
        ok, value = yield CALL, opts.timeout_seconds or 0.0
        code = COMPLETED
        if ok and type(value) is st.State:
            code, value = returned_state_outcome(value)
            ok = code == COMPLETED
        if ok:
            if opts.on_completion:
                ctx.final_state = st.State(st.StateType.COMPLETED, data=value, task_run_id=run)
                task.fire_hook("on_completion", ctx, args, kwargs, ctx.final_state)
            return COMPLETED, value, history
        exc = value
        if code == COMPLETED:
            code = TIMED_OUT if isinstance(exc, TaskRunTimeoutError) else FAILED
        type_, name = STATE_OF_CODE[code]
        failed = st.State(type_, name, message=describe_error(exc), data=exc, task_run_id=run)
        if code != CANCELLED and code != CRASHED and ctx.run_count <= opts.retries and task.should_retry(ctx, args, kwargs, failed):
            delay = task.retry_delay_for(ctx.run_count)
            history = history or [StateEvent("RUNNING", "Running", first_start)]
            history.append(StateEvent("SCHEDULED", "AwaitingRetry", time.time(),
                                       f"{describe_error(exc)}; retry in {delay:g}s"))
            reports.run_retrying(ctx, history[-1])
            ctx.run_count += 1
            if delay > 0:
                yield SLEEP, delay
            continue
        if opts.on_failure:
            ctx.final_state = failed
            task.fire_hook("on_failure", ctx, args, kwargs, failed)
        return code, exc, history


def drive_sync(engine: Engine, task: Task, args: tuple, kwargs: dict) -> tuple[int, Any, list | None]:
    try:
        op, arg = next(engine)
        while True:
            if op == SLEEP:
                _sleep_off_slot(arg)
                op, arg = next(engine)
                continue
            try:
                outcome = (True, _call_sync(task.fn, args, kwargs, arg, task.name))
            except Exception as exc:
                outcome = (False, exc)
            op, arg = engine.send(outcome)
    except StopIteration as stop:
        return stop.value


async def drive_async(engine: Engine, task: Task, args: tuple, kwargs: dict) -> tuple[int, Any, list | None]:
    try:
        op, arg = next(engine)
        while True:
            if op == SLEEP:
                await asyncio.sleep(arg)
                op, arg = next(engine)
                continue
            try:
                outcome = (True, await _call_async(task.fn, args, kwargs, arg, task.name))
            except Exception as exc:
                outcome = (False, exc)
            op, arg = engine.send(outcome)
    except StopIteration as stop:
        return stop.value


def _sleep_off_slot(seconds: float) -> None:
    """Sleep before a retry; on a Dask worker, longer waits give the worker slot away.

    The thread secedes from the worker's pool (the worker starts other tasks at once)
    and rejoins it after the delay, waiting for a free slot like a new task would.
    """
    if seconds < 1.0 or not in_dask_task():
        time.sleep(seconds)
        return
    from distributed import rejoin, secede

    secede()
    try:
        time.sleep(seconds)
    finally:
        rejoin()



def _call_sync(fn: Callable, args: tuple, kwargs: dict, timeout: float, name: str) -> Any:
    if not timeout:
        return fn(*args, **kwargs)
    return call_with_timeout(
        fn, args, kwargs, timeout, lambda: TaskRunTimeoutError(f"task {name!r} timed out after {timeout:g}s"))


def call_with_timeout(fn: Callable, args: tuple, kwargs: dict, timeout: float,
                      timed_out: Callable[[], BaseException]) -> Any:
    """``fn(*args, **kwargs)``, raising ``timed_out()`` if it takes longer than ``timeout`` (0: no limit)."""
    if not timeout:
        return fn(*args, **kwargs)
    # A sync body cannot be interrupted: it runs in a helper thread that the run stops
    # waiting for at the deadline (the thread finishes in the background).
    box: list = []

    def target() -> None:
        try:
            box.append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box.append((False, exc))

    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(target,), name=f"daskflow-{getattr(fn, '__name__', 'run')}",
                              daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise timed_out()
    ok, value = box[0]
    if ok:
        return value
    raise value


async def _call_async(fn: Callable, args: tuple, kwargs: dict, timeout: float, name: str) -> Any:
    if not timeout:
        return await fn(*args, **kwargs)
    try:
        return await asyncio.wait_for(fn(*args, **kwargs), timeout)
    except asyncio.TimeoutError:
        raise TaskRunTimeoutError(f"task {name!r} timed out after {timeout:g}s") from None


def jittered(delay: float, factor: float | None) -> float:
    if not factor:
        return delay
    return max(0.0, delay + random.uniform(-factor * delay, factor * delay))

