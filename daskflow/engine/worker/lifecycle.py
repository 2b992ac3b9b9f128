"""A run's lifecycle: inputs, Running, the body with its timeout, retries and their delays, hooks.

``attempts`` is a generator that owns one run's lifecycle and asks its *driver* to call
the body (``CALL``) or to wait before a retry (``SLEEP``); the sync driver (``drive_sync``)
and the async one (``drive_async``, for awaited direct calls of ``async def`` tasks)
share it, so sync and async tasks have one engine. ``step_sync`` drives a run only up to
its next wait, so the run loop can park a run awaiting its retry and go on with the
chunk's other runs (``run._run_each``). A body that returns a ``State`` sets
the run's state (``core.returned_states``). ``run_inputs`` resolves a run's upstream
values and name before anything runs; a run that cannot start ends early (``EndsEarly``:
NotReady, an argument that could not be serialized, a bad ``task_run_name``).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Generator

from daskflow.codes import CANCELLED, COMPLETED, CRASHED, FAILED, NOT_READY, TIMED_OUT, StateEvent
from daskflow.engine.core import states as st
from daskflow.engine.core.context import TaskRunContext
from daskflow.engine.core.envelope import STATE_OF_CODE, Unpicklable
from daskflow.engine.core.inputs import UpstreamNotCompleted, resolve
from daskflow.engine.core.returned_states import adopted, returned_state_outcome
from daskflow.engine.core.states import describe_error
from daskflow.engine.worker import reports
from daskflow.engine.worker.hosts import current_host
from daskflow.exceptions import ParameterSerializationError, TaskRunTimeoutError

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

#: What a run ended as: ``(state code, value or exception or message, extra history)``.
Outcome = tuple[int, Any, "list | None"]


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


CALL = "call"
SLEEP = "sleep"
Engine = Generator[tuple[str, float], tuple[bool, Any], tuple[int, Any, list | None]]


def attempts(task: Task, ctx: TaskRunContext, args: tuple, kwargs: dict, history: list | None = None) -> Engine:
    """Own one run's lifecycle; yield ``(CALL, timeout)`` or ``(SLEEP, seconds)`` to the driver.

    A body that returns a ``State`` sets the run's state: a completed one its value, a
    failed one is retried like a raised exception, a cancelled or crashed one is final.
    ``history``: the list its states after the first Running go to (the caller's, so a run
    parked for its retry can be retried elsewhere with them, ``retries.RetryRun``); a run
    that starts at attempt ``ctx.run_count`` > 1 continues the history it is given.
    """
    history = [] if history is None else history
    opts = task.options
    first_start = time.time()
    run = (ctx.base, ctx.start + ctx.index)
    while True:
        if ctx.run_count > 1:
            if not history:
                history.append(StateEvent("RUNNING", "Running", first_start))
            history.append(StateEvent("RUNNING", "Retrying", time.time(), f"attempt {ctx.run_count}"))
            reports.run_retrying(ctx, history[-1])
        task.fire_hook("on_running", ctx, args, kwargs, st.State(st.StateType.RUNNING, task_run_id=run))
        ok, value = yield CALL, opts.timeout_seconds or 0.0
        code = COMPLETED
        returned = None
        if ok and type(value) is st.State:
            returned = adopted(value, run)  # its message and data are the run's (as in Prefect)
            code, value = returned_state_outcome(value)
            ok = code == COMPLETED
        if ok:
            if opts.on_completion or returned is not None:
                ctx.final_state = returned or st.State(st.StateType.COMPLETED, data=value, task_run_id=run)
            if opts.on_completion:
                task.fire_hook("on_completion", ctx, args, kwargs, ctx.final_state)
            return COMPLETED, value, history or None
        exc = value
        if code == COMPLETED:
            code = TIMED_OUT if isinstance(exc, TaskRunTimeoutError) else FAILED
        type_, name = STATE_OF_CODE[code]
        failed = returned or st.State(type_, name, message=describe_error(exc), data=exc, task_run_id=run)
        if code != CANCELLED and code != CRASHED and ctx.run_count <= opts.retries and task.should_retry(ctx, args, kwargs, failed):
            delay = task.retry_delay_for(ctx.run_count)
            if not history:
                history.append(StateEvent("RUNNING", "Running", first_start))
            history.append(StateEvent("SCHEDULED", "AwaitingRetry", time.time(),
                                       f"{describe_error(exc)}; retry in {delay:g}s"))
            reports.run_retrying(ctx, history[-1])
            ctx.run_count += 1
            if delay > 0:
                yield SLEEP, delay
            continue
        if opts.on_failure or returned is not None:
            ctx.final_state = failed
        if opts.on_failure:
            task.fire_hook("on_failure", ctx, args, kwargs, failed)
        return code, exc, history or None


def drive_sync(engine: Engine, task: Task, args: tuple, kwargs: dict) -> tuple[int, Any, list | None]:
    """Drive a run to its end, waiting out its retry delays here."""
    while True:
        wait, outcome = step_sync(engine, task, args, kwargs)
        if outcome is not None:
            return outcome
        current_host().sleep(wait)  # a worker's host gives its slot away meanwhile


def step_sync(engine: Engine, task: Task, args: tuple, kwargs: dict) -> tuple[float, Outcome | None]:
    """Drive a run (just begun, or back from a wait) until it ends or must wait before a retry.

    ``(0.0, outcome)`` when it ended; ``(seconds, None)`` when it must wait that long before
    its next attempt: the caller decides where it waits (``drive_sync`` here; the run loop
    parks it and goes on with the chunk, ``run._run_each``), then calls again.
    """
    try:
        op, arg = next(engine)
        while True:
            if op == SLEEP:
                return arg, None
            try:
                outcome = (True, _call_sync(task.fn, args, kwargs, arg, task.name))
            except Exception as exc:
                outcome = (False, exc)
            op, arg = engine.send(outcome)
    except StopIteration as stop:
        return 0.0, stop.value


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




def _call_sync(fn: Callable, args: tuple, kwargs: dict, timeout: float, name: str) -> Any:
    if not timeout:
        return fn(*args, **kwargs)
    return call_with_timeout(
        fn, args, kwargs, timeout, lambda: timeout_error(name, timeout))


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
        raise timeout_error(name, timeout) from None


def timeout_error(name: str, timeout: float) -> TaskRunTimeoutError:
    """Prefect's words for a task run past its ``timeout_seconds``, naming the task."""
    return TaskRunTimeoutError(f"Task run exceeded timeout of {timeout:g} second(s) (task {name!r})")


def jittered(delay: float, factor: float | None) -> float:
    if not factor:
        return delay
    return max(0.0, delay + random.uniform(-factor * delay, factor * delay))
