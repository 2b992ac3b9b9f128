"""Run states: a type from a small enum, a display name, a timestamp, a message, a payload.

A state's *type* drives behaviour (``is_completed()``...); its *name* is what users
read: ``Cached`` is a COMPLETED state, ``Retrying`` a RUNNING one, ``TimedOut`` and
``NotReady`` are FAILED ones. Final states carry the value (completed) or the exception.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from typing import Any, Generic, TypeVar

from daskflow.engine.core.context import flow_run_ctx, task_run_ctx
from daskflow.engine.core.tracebacks import hide_internal
from daskflow.exceptions import CancelledRun, CrashedRun, FailedRun, UnfinishedRun
from daskflow.ids import run_id

R = TypeVar("R")


class StateType(enum.Enum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    CANCELLING = "CANCELLING"  # as in Prefect: asked to cancel, not final yet


FINAL_TYPES = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})
_UNHAPPY = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


class State(Generic[R]):
    """The state of a task run or flow run at one moment.

    Example:
        >>> s = Completed(42)
        >>> s.is_completed(), s.name, s.result()
        (True, 'Completed', 42)
    """

    __slots__ = ("type", "name", "timestamp", "message", "data", "_run")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        *,
        message: str = "",
        data: Any = None,
        timestamp: float | None = None,
        task_run_id: str | tuple[int, int] | None = None,
    ) -> None:
        self.type = type
        self.name = name or type.value.capitalize()
        self.message = message
        self.data = data
        self.timestamp = time.time() if timestamp is None else timestamp
        # the run's id, or (id base, index) until asked for; None: made by hand (a flow returning
        # such a state takes it as its own final state, as in Prefect)
        self._run = task_run_id

    @property
    def task_run_id(self) -> str | None:
        """The id of the task run this state belongs to; None for a state made by hand."""
        run = self._run
        if type(run) is tuple:
            run = self._run = run_id(*run)
        return run  # type: ignore[return-value]

    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_final(self) -> bool:
        return self.type in FINAL_TYPES

    def result(self, raise_on_failure: bool = True, _sync: bool | None = None) -> Any:
        """The run's value; for a run that did not complete, its exception, raised or returned.

        As Prefect's, it dispatches on where it is called: in async code (inside an
        ``async def`` task or flow, or a running event loop outside any run) it returns an
        awaitable, so ``await state.result()`` works there; ``_sync=True`` asks for the
        value in any case (``aresult`` always returns the awaitable).

        Example:
            >>> Completed(1).result()
            1
        """
        if _sync is None:
            _sync = not in_async_context()
        if _sync:
            return self.value(raise_on_failure)
        return self.aresult(raise_on_failure)

    async def aresult(self, raise_on_failure: bool = True) -> R:
        """``result()`` to be awaited."""
        return self.value(raise_on_failure)

    def value(self, raise_on_failure: bool = True) -> R:
        """The run's value (what ``result()`` gives in sync code); the engine reads states with it.

        As in Prefect, ``raise_on_failure=False`` returns a failed state's data as it is
        (``Failed(data="why").result(raise_on_failure=False) == "why"``), or the exception
        built from its message when it has none.

        Args:
            raise_on_failure: raise the run's exception (default) or return it.
        """
        if self.type is StateType.COMPLETED:
            return self.data
        if not self.is_final() or raise_on_failure:
            raise hide_internal(self.exception())
        if self.data is not None:
            return self.data
        return self.exception()  # type: ignore[return-value]

    def exception(self) -> BaseException:
        """The exception that ended the run, as Prefect finds it.

        The data itself if it is an exception; a state's (or the first failed one of a
        list of states) exception; a ``FailedRun``/``CrashedRun``/``CancelledRun`` holding
        the data if it is a string, else the message.
        """
        data = self.data
        if isinstance(data, BaseException):
            return data
        if isinstance(data, State):
            return data.exception()
        if is_state_iterable(data):
            for inner in data:
                if inner.type in _UNHAPPY:
                    return inner.exception()
        text = data if isinstance(data, str) else self.message
        if self.type is StateType.CRASHED:
            return CrashedRun(text or "the run crashed")
        if self.type is StateType.CANCELLED:
            return CancelledRun(text or "the run was cancelled")
        if self.type is StateType.FAILED and self.name != "NotReady":
            return FailedRun(text or "the run failed")
        return UnfinishedRun(
            f"the run is in state {self.name!r} and has no result" + (f": {self.message}" if self.message else "")
        )

    def __repr__(self) -> str:
        extra = f", message={self.message!r}" if self.message else ""
        if self.type is StateType.COMPLETED:
            extra += f", result={self.data!r}"[:200]
        elif isinstance(self.data, BaseException):
            extra += f", exception={self.data!r}"[:200]
        return f"{self.name}(type={self.type.value}{extra})"

    def __eq__(self, other: object) -> bool:
        """Prefect's rule: equal type, name, timestamp, message, data and run; not identity."""
        if not isinstance(other, State):
            return NotImplemented
        if (self.type, self.name, self.message, self.timestamp, self.task_run_id) != (
            other.type, other.name, other.message, other.timestamp, other.task_run_id,
        ):
            return False
        return _same_data(self.data, other.data)

    __hash__ = object.__hash__


def in_async_context() -> bool:
    """Prefect's rule: inside a run, whether its task (or flow) is async; else, a running loop."""
    run = task_run_ctx.get()
    owner = run.task if run is not None else None
    if owner is None:
        flow = flow_run_ctx.get()
        owner = flow.flow if flow is not None else None
    if owner is not None:
        return bool(getattr(owner, "is_async", False))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def Scheduled(name: str = "Scheduled", message: str = "") -> State:
    return State(StateType.SCHEDULED, name, message=message)


def Pending(name: str = "Pending", message: str = "") -> State:
    return State(StateType.PENDING, name, message=message)


def Running(name: str = "Running", message: str = "") -> State:
    return State(StateType.RUNNING, name, message=message)


def Retrying(message: str = "") -> State:
    return State(StateType.RUNNING, "Retrying", message=message)


def Completed(data: Any = None, name: str = "Completed", message: str = "") -> State:
    return State(StateType.COMPLETED, name, message=message, data=data)


def Cached(data: Any = None, message: str = "") -> State:
    return State(StateType.COMPLETED, "Cached", message=message, data=data)


def Failed(data: BaseException | None = None, name: str = "Failed", message: str = "") -> State:
    return State(StateType.FAILED, name, message=message or describe_error(data), data=data)


def TimedOut(data: BaseException | None = None, message: str = "") -> State:
    return Failed(data, "TimedOut", message)


def NotReady(message: str = "") -> State:
    return State(StateType.FAILED, "NotReady", message=message)


def Crashed(data: BaseException | None = None, message: str = "") -> State:
    return State(StateType.CRASHED, "Crashed", message=message or describe_error(data), data=data)


def Cancelling(name: str = "Cancelling", message: str = "") -> State:
    return State(StateType.CANCELLING, name, message=message)


def Cancelled(data: BaseException | None = None, message: str = "") -> State:
    return State(StateType.CANCELLED, "Cancelled", message=message or describe_error(data), data=data)


def is_state_iterable(value: Any) -> bool:
    """A non-empty list, tuple or set made only of States (Prefect's aggregate rule applies)."""
    return isinstance(value, (list, tuple, set)) and bool(value) and all(isinstance(v, State) for v in value)


def _same_data(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # arrays and other values without a plain truth value
        return False


def describe_error(exc: BaseException | None) -> str:
    return "" if exc is None else f"{type(exc).__name__}: {exc}"


_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+")


def error_kind(text: str) -> str:
    """What makes two failures "the same error": the text with run ids and numbers blanked.

    ``ValueError: bad row 3`` and ``ValueError: bad row 7`` are one error seen twice; the
    console and the flow's end report print each kind once, with a count.
    """
    return _VARYING.sub("#", text)
