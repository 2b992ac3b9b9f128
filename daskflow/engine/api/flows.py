"""``Flow``: a function whose call is a flow run that owns a task runner.

A flow run picks its runner (its own ``task_runner``, else its parent flow's, else
the Dask cluster it runs inside, else the process's shared default runner, whose embedded
LocalCluster sequential flows reuse: ``runners.flow_runner``), runs the
body in the calling thread, then waits for every run submitted in it: nothing
submitted is dropped. Its final state follows its return value by Prefect's rule
(``engine.api.returns``): futures in it become States, a returned State or a collection of
States decides. It ends by logging one warning that lists failed runs nobody looked at.

Options are Prefect's: ``retries``/``retry_delay_seconds`` re-run a body that raised,
``timeout_seconds`` fails a run that takes longer (``TimedOut``), ``flow_run_name`` names
each run, and hooks (``on_running``, ``on_completion``, ``on_failure``,
``on_cancellation``, ``on_crashed``; sync or async) receive ``(flow, flow_run, state)``.
Calling an ``async def`` flow returns a coroutine, from sync code too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import numbers
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Literal, ParamSpec, TypeVar, overload

from daskflow.codes import CANCELLED, OK_CODES
from daskflow.engine.api.returns import resolve_futures_to_states, state_of_return
from daskflow.engine.api.self_waits import check_wait_lists
from daskflow.engine.api.tasks import RESERVED, reserved_message, takes_parameters
from daskflow.engine.client import resume as keeping
from daskflow.engine.client.cancels import WATCHER
from daskflow.engine.client.chunks import Chunk, cancel_unfinished, fetch_all, to_fetch_at_end
from daskflow.engine.client.writes_behind import await_writes
from daskflow.engine.core import states as st
from daskflow.engine.core.states import error_kind
from daskflow.engine.core.context import FlowRunContext, flow_run_ctx, task_run_ctx
from daskflow.engine.core.hooks import call_hooks, validate_hooks
from daskflow.engine.core.tracebacks import hide_internal
from daskflow.engine.tracking import tracker
from daskflow.engine.worker import logging as run_logging
from daskflow.engine.worker.lifecycle import call_with_timeout
from daskflow.exceptions import CancelledRun, FlowRunCancelRequested, FlowRunTimeoutError, ReservedArgumentError
from daskflow.runners.base import TaskRunner

if TYPE_CHECKING:
    from daskflow.engine.core.states import State

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("daskflow")


FLOW_HOOKS = ("on_completion", "on_failure", "on_cancellation", "on_crashed", "on_running")
#: the hook a final state type fires
_FINAL_HOOK = {st.StateType.COMPLETED: "on_completion", st.StateType.FAILED: "on_failure",
               st.StateType.CANCELLED: "on_cancellation", st.StateType.CANCELLING: "on_cancellation",
               st.StateType.CRASHED: "on_crashed"}


#: options that are also plain attributes users may set after decoration (Prefect reads them live)
_ATTRIBUTE_OPTIONS = ("task_runner", "version", "log_prints", "retries", "retry_delay_seconds", "timeout_seconds",
                      "flow_run_name")


def default_flow_name(fn: Callable) -> str:
    """Prefect's default: the function's name with dashes (``my_fn`` -> ``my-fn``), ``unknown-lambda``."""
    return getattr(fn, "__name__", type(fn).__name__).replace("_", "-").replace("<lambda>", "unknown-lambda")


_RAISED = object()  # the body raised: the caller gets the error from the final state
SHARED = "shared"  # a flow run's runner is the process's shared one (runners.flow_runner)


@dataclass(frozen=True)
class FlowOptions:
    """Every option of a flow, validated once, at decoration time."""

    name: str
    task_runner: TaskRunner | None = None
    description: str | None = None
    version: str | None = None
    log_prints: bool = False
    retries: int = 0
    retry_delay_seconds: float = 0
    timeout_seconds: float | None = None
    flow_run_name: str | Callable[[], str] | None = None
    result_storage: str | None = None  # the default result storage of its tasks (cache.storage)
    on_completion: tuple[Callable, ...] = ()
    on_failure: tuple[Callable, ...] = ()
    on_cancellation: tuple[Callable, ...] = ()
    on_crashed: tuple[Callable, ...] = ()
    on_running: tuple[Callable, ...] = ()

    def __post_init__(self) -> None:
        owner = f"flow {self.name!r}"
        if not isinstance(self.name, str):
            raise TypeError(f"@flow(name=...) must be a string, got {self.name!r}")
        if self.task_runner is not None and not isinstance(self.task_runner, TaskRunner):
            raise TypeError(f"{owner}: task_runner must be a TaskRunner, got {self.task_runner!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"{owner}: retries must be an int >= 0, got {self.retries!r}")
        delay = self.retry_delay_seconds
        if isinstance(delay, bool) or not isinstance(delay, numbers.Real) or delay < 0:
            raise ValueError(f"{owner}: retry_delay_seconds must be a number >= 0, got {delay!r}")
        if self.timeout_seconds is not None and not self.timeout_seconds > 0:
            raise ValueError(f"{owner}: timeout_seconds must be > 0, got {self.timeout_seconds!r}")
        if self.flow_run_name is not None and not isinstance(self.flow_run_name, str) \
                and not callable(self.flow_run_name):
            raise TypeError(f"{owner}: Expected string or callable for 'flow_run_name'; got "
                            f"{type(self.flow_run_name).__name__} instead.")
        for kind in FLOW_HOOKS:
            object.__setattr__(self, kind, validate_hooks(owner, kind, getattr(self, kind)))


@dataclass(slots=True)
class FlowRun:
    """The record of one flow run that flow hooks receive."""

    id: str
    name: str
    flow_name: str
    parameters: dict[str, Any]
    run_count: int = 0
    parent_flow_run_id: str | None = None


class Flow(Generic[P, R]):
    """A function whose every call is a flow run.

    Example:
        >>> @flow
        ... def pipeline(n: int) -> int:
        ...     return sum(double.map(range(n)).result())  # doctest: +SKIP
    """

    def __init__(self, fn: Callable[P, R], name: str | None = None, options: FlowOptions | None = None,
                 **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"@flow needs a callable, got {type(fn).__name__}: {fn!r}")
        if options is None:
            options = FlowOptions(name=name or default_flow_name(fn), **kwargs)
        self.fn = fn
        self.options = options
        self.name = options.name
        self.task_runner = options.task_runner
        self.description = options.description or inspect.getdoc(fn)
        self.version = options.version
        self.log_prints = options.log_prints
        self.retries = options.retries
        self.retry_delay_seconds = options.retry_delay_seconds
        self.timeout_seconds = options.timeout_seconds
        self.flow_run_name = options.flow_run_name
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        clash = RESERVED.intersection(self._signature.parameters)
        if clash:
            raise ReservedArgumentError(f"flow {self.name!r}: {reserved_message(clash)}")

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"

    def with_options(self, **changes: Any) -> Flow[P, R]:
        """A copy of this flow with some options changed (hooks given here replace the old ones).

        As in Prefect, ``timeout_seconds=0`` removes the timeout.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(FlowOptions)}
        if unknown:
            raise TypeError(f"flow {self.name!r}: unknown option(s) {sorted(unknown)}")
        if changes.get("timeout_seconds") == 0:
            changes["timeout_seconds"] = None
        return Flow(self.fn, options=dataclasses.replace(self.current_options(), **changes))

    def current_options(self) -> FlowOptions:
        """The options with the attributes users set after decoration (``flow.flow_run_name = ...``)."""
        now = {name: getattr(self, name) for name in _ATTRIBUTE_OPTIONS}
        if all(now[name] == getattr(self.options, name) for name in now):
            return self.options
        return dataclasses.replace(self.options, **now)

    # -- hook decorators ------------------------------------------------------------
    def _add_hook(self, kind: str, fn: Callable) -> Callable:
        self.__init__(self.fn, options=dataclasses.replace(  # type: ignore[misc]
            self.current_options(), **{kind: (*getattr(self.options, kind), fn)}))
        return fn

    def on_completion(self, fn: Callable) -> Callable:
        return self._add_hook("on_completion", fn)

    def on_failure(self, fn: Callable) -> Callable:
        return self._add_hook("on_failure", fn)

    def on_cancellation(self, fn: Callable) -> Callable:
        return self._add_hook("on_cancellation", fn)

    def on_crashed(self, fn: Callable) -> Callable:
        return self._add_hook("on_crashed", fn)

    def on_running(self, fn: Callable) -> Callable:
        return self._add_hook("on_running", fn)

    # -- calling ----------------------------------------------------------------------
    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: P.args, return_state: Literal[True],  # type: ignore[valid-type]
                 **kwargs: P.kwargs) -> State: ...

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"flow {self.name!r}: {exc}") from None
        bound.apply_defaults()
        if self.is_async:  # as in Prefect: a coroutine, awaited by the caller
            return self._run_async(bound, return_state)
        try:
            return self._run(bound, return_state)
        except Exception as exc:  # the user's frames, not the engine's (daskflow.tracebacks: full for all)
            raise hide_internal(exc)  # noqa: B904 - the same exception, its traceback shortened

    def retry(self, flow_run_id: str, return_state: bool = False) -> Any:
        """Run flow run ``flow_run_id`` of this flow again, with its recorded parameters.

        Runs that completed in it come back from their kept values without executing
        (state ``Cached``); the others run, with whatever depends on them. Raises
        ``CannotRetry`` (nothing runs) for an unknown or still running flow run.

        Example:
            >>> pipeline.retry("1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed")  # doctest: +SKIP
        """
        from daskflow.engine.api.retry import retry_flow_run

        return retry_flow_run(self, flow_run_id, return_state)

    # -- one flow run -------------------------------------------------------------------
    def _enter(self, parameters: dict[str, Any]) -> tuple[FlowRunContext, bool | str]:
        parent = flow_run_ctx.get()
        if self.task_runner is not None:
            runner, owned = self.task_runner.duplicate(), True
        elif parent is not None:
            runner, owned = parent.runner, False
        else:
            from daskflow.engine.client.submit import current_runner
            from daskflow.runners import current_host, flow_runner

            if current_host().remote() or task_run_ctx.get() is not None:
                runner, owned = current_runner(), False
            else:  # the process's embedded cluster, shared by sequential flows: not shut down here
                runner, owned = flow_runner(), SHARED
        again = keeping.resuming.get() if parent is None else None
        if again is not None and again.used:
            again = None
        flow_run_id = str(uuid.uuid4()) if again is None else again.flow_run_id
        ctx = FlowRunContext(self, flow_run_id, runner, dict(parameters), parent=parent)
        if again is not None:
            again.used = True
        ctx.keep = keeping.open_scope(self, ctx, again)
        if again is not None:
            _retry_started(ctx, again)
        return ctx, owned

    def _new_run(self, ctx: FlowRunContext) -> FlowRun:
        template = self.flow_run_name
        if template is None:
            name = f"{self.name}-{ctx.flow_run_id[:8]}"
        elif callable(template):
            name = template(parameters=dict(ctx.parameters)) if takes_parameters(template) else template()
            if not isinstance(name, str):
                raise TypeError(f"flow {self.name!r}: Callable {template} for 'flow_run_name' returned type "
                                f"{type(name).__name__} but a string is required.")
        else:
            name = template.format(**ctx.parameters)
        return FlowRun(ctx.flow_run_id, name, self.name, ctx.parameters,
                       parent_flow_run_id=ctx.parent.flow_run_id if ctx.parent else None)

    @contextlib.contextmanager
    def _flow_run(self, parameters: dict[str, Any]) -> Iterator[tuple[FlowRunContext, list[st.State]]]:
        """One flow run around the body: context, final state on error, runner shutdown, hooks."""
        ctx, owned = self._enter(parameters)
        token = flow_run_ctx.set(ctx)
        tracker.flow_started(ctx.flow_run_id, self.name, parameters, ctx.parent.flow_run_id if ctx.parent else None)
        prints = run_logging.log_prints(True) if self.log_prints else None
        final: list[st.State] = []
        interrupted = False
        ctx.watched = WATCHER.watch(ctx)
        try:
            ctx.flow_run = self._new_run(ctx)
            yield ctx, final
        except BaseException as exc:
            WATCHER.body_ends(ctx.watched)  # the engine's own code is never interrupted
            if ctx.cancel_reason is not None and isinstance(exc, (Exception, FlowRunCancelRequested)):
                final.append(self._cancelled(ctx))  # cancelled from another process: the call raises CancelledRun
            else:
                final.append(self._crash(ctx, exc))
                interrupted = not isinstance(exc, Exception)
                if interrupted:
                    raise
        finally:
            WATCHER.unwatch(ctx.watched)
            if prints is not None:
                run_logging.capturing_prints.reset(prints)
            keeping.close_scope(ctx.keep)
            if final:
                _retry_finished(ctx, final[0])
                tracker.flow_finished(ctx.flow_run_id, final[0])
                self._fire(_FINAL_HOOK.get(final[0].type), ctx, final[0])
            flow_run_ctx.reset(token)
            if owned is True or (owned is SHARED and interrupted):  # Ctrl-C: the process is going
                ctx.runner.shutdown(wait=not interrupted)

    def _fire(self, kind: str | None, ctx: FlowRunContext, state: st.State) -> None:
        hooks = getattr(self.options, kind) if kind else ()
        if hooks and ctx.flow_run is not None:
            call_hooks(hooks, (self, ctx.flow_run, state), kind, f"flow {self.name!r}")  # type: ignore[arg-type]

    def _attempt_failed(self, ctx: FlowRunContext, exc: Exception) -> float | None:
        """The delay before the next attempt, or None when the run is out of retries (or cancelled)."""
        if ctx.flow_run.run_count > self.retries or ctx.cancel_reason is not None:  # type: ignore[union-attr]
            return None
        logger.info("flow %r: attempt %d failed (%s: %s); retrying", self.name,
                    ctx.flow_run.run_count, type(exc).__name__, exc)  # type: ignore[union-attr]
        return float(self.retry_delay_seconds)

    def _run(self, bound: inspect.BoundArguments, return_state: bool) -> Any:
        timeout = self.timeout_seconds or 0.0
        value: Any = _RAISED
        with self._flow_run(bound.arguments) as (ctx, final):
            while True:
                ctx.flow_run.run_count += 1  # type: ignore[union-attr]
                self._fire("on_running", ctx, st.Running())
                try:
                    WATCHER.body_starts(ctx.watched)
                    value = call_with_timeout(self.fn, bound.args, bound.kwargs, timeout, self._timed_out)
                    WATCHER.body_ends(ctx.watched)  # inside the try: a cancel delivered meanwhile lands here
                except Exception as exc:
                    WATCHER.body_ends(ctx.watched)
                    delay = self._attempt_failed(ctx, exc)
                    if delay is None:
                        raise
                    time.sleep(delay)
                    continue
                break
            returned, value = resolve_futures_to_states(value), _RAISED  # the end may fail (a storage write refused)
            final.append(self._finish(ctx, returned))
            value = returned
            if ctx.cancel_reason is not None:  # cancelled as the body returned: the call raises CancelledRun
                value = _RAISED
        return self._outcome(final[0], value, return_state)

    async def _run_async(self, bound: inspect.BoundArguments, return_state: bool) -> Any:
        timeout = self.timeout_seconds
        value: Any = _RAISED
        with self._flow_run(bound.arguments) as (ctx, final):
            while True:
                ctx.flow_run.run_count += 1  # type: ignore[union-attr]
                self._fire("on_running", ctx, st.Running())
                try:
                    coro = self.fn(*bound.args, **bound.kwargs)
                    value = await (asyncio.wait_for(coro, timeout) if timeout else coro)
                except asyncio.TimeoutError:
                    raise self._timed_out() from None
                except Exception as exc:
                    delay = self._attempt_failed(ctx, exc)
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
                    continue
                break
            returned, value = resolve_futures_to_states(value), _RAISED  # the end may fail (a storage write refused)
            final.append(self._finish(ctx, returned))
            value = returned
            if ctx.cancel_reason is not None:  # cancelled as the body returned: the call raises CancelledRun
                value = _RAISED
        return self._outcome(final[0], value, return_state)

    def _timed_out(self) -> FlowRunTimeoutError:
        return FlowRunTimeoutError(f"Flow run exceeded timeout of {self.timeout_seconds:g} second(s) (flow {self.name!r})")

    @staticmethod
    def _outcome(state: st.State, value: Any, return_state: bool) -> Any:
        """What the caller gets, as in Prefect: the state, or the (resolved) returned value."""
        if return_state:
            return state
        if value is _RAISED or isinstance(value, st.State):
            return state.value()
        return value

    def _finish(self, ctx: FlowRunContext, value: Any) -> st.State:
        """Wait for every submitted run, then derive the flow's state from its value."""
        if ctx.cancel_reason is not None:  # the body ended on its own after a cancel request
            return self._cancelled(ctx)
        for stream in ctx.streams:
            stream.drain()
        fetch_all(to_fetch_at_end(ctx.submitted), None)
        await_writes(ctx)  # a flow run that returned has its results in their storage
        check_wait_lists(ctx)
        state = state_of_return(value)
        self._warn_unresolved(ctx, state)
        return state

    def _cancelled(self, ctx: FlowRunContext) -> st.State:
        """A flow run cancelled from another process: its runs not final end Cancelled."""
        reason = ctx.cancel_reason or "cancelled"
        for stream in ctx.streams:  # a .map() over an iterator submits no more of it
            stream.stop()
        try:
            cancel_unfinished(ctx.submitted, reason)
        except Exception:  # noqa: BLE001 - the state says Cancelled whatever the runner did
            logger.debug("could not cancel the runs of flow %r", self.name, exc_info=True)
        return st.Cancelled(CancelledRun(reason), message=reason)

    def _crash(self, ctx: FlowRunContext, exc: BaseException) -> st.State:
        for stream in ctx.streams:
            stream.stop()
        if not isinstance(exc, Exception):  # Ctrl-C, SystemExit, a test runner's timeout: do not wait
            cancel_unfinished(ctx.submitted, f"flow {self.name!r} was interrupted")
            if isinstance(exc, KeyboardInterrupt) and ctx.parent is None:
                done, cancelled = _outcome_counts(ctx.submitted)
                report_interrupt(exc, f"daskflow: flow {self.name!r} interrupted; {done} runs completed, "
                                      f"{cancelled} cancelled")
            return st.Cancelled(exc, message=f"flow {self.name!r} was interrupted")
        try:
            fetch_all(ctx.submitted, None)
            await_writes(ctx)
        except Exception:  # the flow's own error is the one to report
            logger.debug("could not wait for runs of failed flow %r", self.name, exc_info=True)
        self._warn_unresolved(ctx, None)
        if isinstance(exc, FlowRunTimeoutError):
            return st.TimedOut(exc)
        return st.Failed(exc)

    def _warn_unresolved(self, ctx: FlowRunContext, state: st.State | None) -> None:
        """One warning for the failed runs nobody read: each distinct error once, with a count and an example run."""
        kinds: dict[str, list] = {}  # error kind -> [count, example line]
        for chunk in ctx.submitted:
            for i in chunk.unobserved_failures():
                res = chunk.result
                why = res.describe(i)  # type: ignore[union-attr]
                short = ": ".join(why.split(": ")[:2])  # state and exception type: the console has the text
                seen = kinds.setdefault(error_kind(f"{res.task_name} {why}"),  # type: ignore[union-attr]
                                        [0, f"{res.run_name(i)} ({res.run_id(i)}): {short}"])  # type: ignore[union-attr]
                seen[0] += 1
        if kinds:
            total = sum(n for n, _ in kinds.values())
            shown = [f"  {n} x {example}" if n > 1 else f"  {example}" for n, example in list(kinds.values())[:5]]
            if len(kinds) > 5:
                shown.append(f"  ... and {len(kinds) - 5} other errors")
            tracker.flush(5.0)  # the console's root-cause lines first
            logger.warning("flow %r: %d failed task run(s) were never resolved (e.g. by .result()):\n%s", self.name,
                           total, "\n".join(shown))


def _retry_started(ctx: FlowRunContext, again: keeping.Resume) -> None:
    """The flow run's history gains this retry (after the record of its start, which it updates)."""
    again.history.append({"attempt": again.attempt, "at": time.time(), "by": "flow-runs retry",
                          "previous_state": again.previous_state})
    ctx.retry = again
    tracker.flow_changed(ctx.flow_run_id, {"attempt": again.attempt, "retries": again.history})


def _retry_finished(ctx: FlowRunContext, state: st.State) -> None:
    again = ctx.retry
    if again is None:
        return
    again.history[-1].update(state=state.name, reused=ctx.keep.tally.reused if ctx.keep is not None else 0)
    tracker.flow_changed(ctx.flow_run_id, {"attempt": again.attempt, "retries": again.history})


def _outcome_counts(chunks: list[Chunk]) -> tuple[int, int]:
    """(completed, cancelled) runs among fetched chunks."""
    done = cancelled = 0
    for chunk in chunks:
        if chunk.result is not None:
            codes = chunk.result.codes
            done += sum(codes.count(c) for c in OK_CODES)
            cancelled += codes.count(CANCELLED)
    return done, cancelled


_interrupts: dict[int, str] = {}  # id(KeyboardInterrupt) -> the line that replaces its traceback


def report_interrupt(exc: KeyboardInterrupt, line: str) -> None:
    """Have an uncaught ``exc`` print ``line`` instead of a traceback through the engine.

    The interrupt still propagates (callers may catch it; the process still exits as
    interrupted); only Python's last-resort report of it is replaced, by one line.
    """
    _interrupts[id(exc)] = line
    if getattr(sys.excepthook, "daskflow", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type, value: BaseException, tb: Any) -> None:
        line = _interrupts.get(id(value)) if exc_type is KeyboardInterrupt else None
        if line is None:
            previous(exc_type, value, tb)
        else:
            print(line, file=sys.stderr)

    hook.daskflow = True  # type: ignore[attr-defined]
    sys.excepthook = hook


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(**options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Callable | None = None, **options: Any) -> Any:
    """Turn a function into a ``Flow``; usable bare (``@flow``) or with options.

    Options: ``name, description, version, task_runner, retries, retry_delay_seconds,
    timeout_seconds, flow_run_name, log_prints`` and the hooks ``on_running,
    on_completion, on_failure, on_cancellation, on_crashed`` (lists of callables).

    Example:
        >>> @flow(task_runner=ThreadPoolTaskRunner(), retries=2)  # doctest: +SKIP
        ... def pipeline(): ...
    """
    if __fn is not None:
        return Flow(__fn, **options)
    FlowOptions(name=options.get("name") or "flow", **{k: v for k, v in options.items() if k != "name"})
    return lambda fn: Flow(fn, **options)
