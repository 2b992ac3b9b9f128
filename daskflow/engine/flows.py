"""``Flow``: a function whose call is a flow run that owns a task runner.

A flow run picks its runner (its own ``task_runner``, else its parent flow's, else
the Dask cluster it runs inside, else a new default ``DaskTaskRunner``), runs the
body in the calling thread, then waits for every run submitted in it: nothing
submitted is dropped. Its final state follows its return value: a returned failed
state or future fails it, and futures in the return value are resolved to values.
It ends by logging one warning that lists failed runs nobody looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import uuid
from typing import Any, Callable, Generic, Iterator, ParamSpec, TypeVar, overload

from daskflow.engine import logging as run_logging
from daskflow.engine import states as st
from daskflow.engine import tracker
from daskflow.engine.context import FlowRunContext, flow_run_ctx, task_run_ctx
from daskflow.engine.chunks import Chunk, fetch_all, fetch_finished
from daskflow.engine.futures import MapFutures, TaskRunFuture
from daskflow.engine.tasks import RESERVED, loop_running
from daskflow.codes import CANCELLED, OK_CODES
from daskflow.engine.run import ChunkResult
from daskflow.exceptions import CancelledRun, ReservedArgumentError
from daskflow.runners.base import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("daskflow")


class Flow(Generic[P, R]):
    """A function whose every call is a flow run.

    Example:
        >>> @flow
        ... def pipeline(n: int) -> int:
        ...     return sum(double.map(range(n)).result())  # doctest: +SKIP
    """

    def __init__(self, fn: Callable[P, R], name: str | None = None, task_runner: TaskRunner | None = None,
                 description: str | None = None, version: str | None = None, log_prints: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"@flow needs a callable, got {type(fn).__name__}: {fn!r}")
        if task_runner is not None and not isinstance(task_runner, TaskRunner):
            raise TypeError(f"flow {name or fn.__name__!r}: task_runner must be a TaskRunner, got {task_runner!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "flow")
        self.task_runner = task_runner
        self.description = description or inspect.getdoc(fn)
        self.version = version
        self.log_prints = log_prints
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        clash = RESERVED.intersection(self._signature.parameters)
        if clash:
            raise ReservedArgumentError(f"flow {self.name!r}: parameter name(s) {sorted(clash)} are reserved")

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"

    def with_options(self, **changes: Any) -> Flow[P, R]:
        kwargs = {"name": self.name, "task_runner": self.task_runner, "description": self.description,
                  "version": self.version, "log_prints": self.log_prints}
        kwargs.update(changes)
        return Flow(self.fn, **kwargs)

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        try:
            params = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"flow {self.name!r}: {exc}") from None
        params.apply_defaults()
        if self.is_async and loop_running():
            return self._run_async(params.arguments, return_state)
        return self._run(params.arguments, return_state)

    # -- one flow run -------------------------------------------------------------------
    def _enter(self, parameters: dict[str, Any]) -> tuple[FlowRunContext, bool]:
        parent = flow_run_ctx.get()
        if self.task_runner is not None:
            runner, owned = self.task_runner.duplicate(), True
        elif parent is not None:
            runner, owned = parent.runner, False
        else:
            from daskflow.engine.submit import current_runner
            from daskflow.runners import new_default_runner
            from daskflow.runners.dask import in_dask_task

            if in_dask_task() or task_run_ctx.get() is not None:
                runner, owned = current_runner(), False
            else:
                runner, owned = new_default_runner(), True
        ctx = FlowRunContext(self, str(uuid.uuid4()), runner, dict(parameters), parent=parent)
        return ctx, owned

    @contextlib.contextmanager
    def _flow_run(self, parameters: dict[str, Any]) -> Iterator[tuple[FlowRunContext, list[st.State]]]:
        """One flow run around the body: context, final state on error, runner shutdown."""
        ctx, owned = self._enter(parameters)
        token = flow_run_ctx.set(ctx)
        tracker.flow_started(ctx.flow_run_id, self.name, parameters, ctx.parent.flow_run_id if ctx.parent else None)
        prints = run_logging.log_prints(True) if self.log_prints else None
        final: list[st.State] = []
        interrupted = False
        try:
            yield ctx, final
        except BaseException as exc:
            final.append(self._crash(ctx, exc))
            interrupted = not isinstance(exc, Exception)
            if interrupted:
                raise
        finally:
            if prints is not None:
                run_logging.capturing_prints.reset(prints)
            flow_run_ctx.reset(token)
            if final:
                tracker.flow_finished(ctx.flow_run_id, final[0])
            if owned:
                ctx.runner.shutdown(wait=not interrupted)

    def _run(self, parameters: dict[str, Any], return_state: bool) -> Any:
        with self._flow_run(parameters) as (ctx, final):
            value = asyncio.run(self.fn(**parameters)) if self.is_async else self.fn(**parameters)
            final.append(self._finish(ctx, value))
        return final[0] if return_state else final[0].result()

    async def _run_async(self, parameters: dict[str, Any], return_state: bool) -> Any:
        with self._flow_run(parameters) as (ctx, final):
            final.append(self._finish(ctx, await self.fn(**parameters)))
        return final[0] if return_state else final[0].result()

    def _finish(self, ctx: FlowRunContext, value: Any) -> st.State:
        """Wait for every submitted run, then derive the flow's state from its value."""
        fetch_all(ctx.submitted, None)
        state = _state_of(value)
        self._warn_unresolved(ctx, state)
        return state

    def _crash(self, ctx: FlowRunContext, exc: BaseException) -> st.State:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            cancel_unfinished(ctx.submitted, f"flow {self.name!r} was interrupted")
            if isinstance(exc, KeyboardInterrupt) and ctx.parent is None:
                done, cancelled = _outcome_counts(ctx.submitted)
                report_interrupt(exc, f"daskflow: flow {self.name!r} interrupted; {done} runs completed, "
                                      f"{cancelled} cancelled")
            return st.Cancelled(exc, message=f"flow {self.name!r} was interrupted")
        try:
            fetch_all(ctx.submitted, None)
        except Exception:  # the flow's own error is the one to report
            logger.debug("could not wait for runs of failed flow %r", self.name, exc_info=True)
        self._warn_unresolved(ctx, None)
        return st.Failed(exc)

    def _warn_unresolved(self, ctx: FlowRunContext, state: st.State | None) -> None:
        lines = []
        for chunk in ctx.submitted:
            for i in chunk.unobserved_failures():
                res = chunk.result
                lines.append(f"  {res.run_name(i)} ({res.run_id(i)}): {res.describe(i)}")  # type: ignore[union-attr]
        if lines:
            shown = "\n".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
            logger.warning("flow %r: %d failed task run(s) were never resolved:\n%s", self.name, len(lines), shown)


def cancel_unfinished(chunks: list[Chunk], reason: str) -> None:
    """Cancel every run not final yet; their futures read Cancelled from now on.

    Runs that finished are fetched first, so they are recorded as they ended (Completed,
    Failed...), not Cancelled; the others are cancelled with one call per runner.
    """
    fetch_finished(chunks)
    unfinished = [c for c in chunks if c.result is None]
    by_runner: dict[int, tuple[TaskRunner, list[Any]]] = {}
    for chunk in unfinished:
        if chunk.runner is not None and chunk.handle is not None:
            by_runner.setdefault(id(chunk.runner), (chunk.runner, []))[1].append(chunk.handle)
    for runner, handles in by_runner.values():
        try:
            runner.cancel_many(handles)
        except Exception:  # noqa: BLE001 - the runner may be gone; the runs are recorded Cancelled anyway
            logger.debug("could not cancel runs of %r", runner, exc_info=True)
    for chunk in unfinished:
        if chunk.result is None:
            err = CancelledRun(f"task {chunk.task.name!r}: {reason}")
            chunk.result = ChunkResult.all_failed(chunk.task.name, chunk.base, chunk.start, chunk.n, CANCELLED,
                                                  err, str(err))
            chunk.observed = True
            tracker.chunk_finished(chunk)
            chunk.handle = None  # recorded: nothing fetches it again


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


def _state_of(value: Any) -> st.State:
    """The final state of a flow run that returned ``value``."""
    if isinstance(value, st.State):
        return value
    if isinstance(value, TaskRunFuture):
        value.chunk.observe(value.index)
        state = value.state
        return state if not state.is_completed() else st.Completed(state.data)
    if isinstance(value, MapFutures):
        states = value.states
        for s in states:
            if not s.is_completed():
                return st.Failed(s.exception(), message=f"a returned run ended {s.name}: {s.message}")
        for c in value.chunks:
            c.observed = True
        return st.Completed([s.data for s in states])
    if isinstance(value, (list, tuple)) and any(isinstance(v, (TaskRunFuture, MapFutures, st.State)) for v in value):
        inner = [_state_of(v) for v in value]
        for s in inner:
            if not s.is_completed():
                return s
        return st.Completed(type(value)(s.data for s in inner))
    if isinstance(value, dict) and any(isinstance(v, (TaskRunFuture, MapFutures, st.State)) for v in value.values()):
        inner_d = {k: _state_of(v) for k, v in value.items()}
        for s in inner_d.values():
            if not s.is_completed():
                return s
        return st.Completed({k: s.data for k, s in inner_d.items()})
    return st.Completed(value)


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(**options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Callable | None = None, **options: Any) -> Any:
    """Turn a function into a ``Flow``; usable bare (``@flow``) or with options.

    Example:
        >>> @flow(task_runner=ThreadPoolTaskRunner())  # doctest: +SKIP
        ... def pipeline(): ...
    """
    if __fn is not None:
        return Flow(__fn, **options)
    return lambda fn: Flow(fn, **options)
