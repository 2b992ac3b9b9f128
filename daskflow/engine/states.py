"""Run states: a type from a small enum, a display name, a timestamp, a message, a payload.

A state's *type* drives behaviour (``is_completed()``...); its *name* is what users
read: ``Cached`` is a COMPLETED state, ``Retrying`` a RUNNING one, ``TimedOut`` and
``NotReady`` are FAILED ones. Final states carry the value (completed) or the exception.
"""

from __future__ import annotations

import enum
import time
from typing import Any, Generic, TypeVar

from daskflow.exceptions import CancelledRun, CrashedRun, UnfinishedRun

R = TypeVar("R")


class StateType(enum.Enum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"


FINAL_TYPES = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


class State(Generic[R]):
    """The state of a task run or flow run at one moment.

    Example:
        >>> s = Completed(42)
        >>> s.is_completed(), s.name, s.result()
        (True, 'Completed', 42)
    """

    __slots__ = ("type", "name", "timestamp", "message", "data")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        *,
        message: str = "",
        data: Any = None,
        timestamp: float | None = None,
    ) -> None:
        self.type = type
        self.name = name or type.value.capitalize()
        self.message = message
        self.data = data
        self.timestamp = time.time() if timestamp is None else timestamp

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

    def is_final(self) -> bool:
        return self.type in FINAL_TYPES

    def result(self, raise_on_failure: bool = True) -> R:
        """The run's value; for a failed run its exception, raised or returned.

        Args:
            raise_on_failure: raise the run's exception (default) or return it.
        """
        if self.type is StateType.COMPLETED:
            return self.data
        exc = self.exception()
        if raise_on_failure:
            raise exc
        return exc  # type: ignore[return-value]

    def exception(self) -> BaseException:
        """The exception that ended the run (built from the message if none was kept)."""
        if isinstance(self.data, BaseException):
            return self.data
        if self.type is StateType.CRASHED:
            return CrashedRun(self.message or "the run crashed")
        if self.type is StateType.CANCELLED:
            return CancelledRun(self.message or "the run was cancelled")
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
        if not isinstance(other, State):
            return NotImplemented
        return (self.type, self.name, self.message, self.timestamp) == (
            other.type, other.name, other.message, other.timestamp,
        )

    __hash__ = object.__hash__


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


def Cancelled(data: BaseException | None = None, message: str = "") -> State:
    return State(StateType.CANCELLED, "Cancelled", message=message or describe_error(data), data=data)


def describe_error(exc: BaseException | None) -> str:
    return "" if exc is None else f"{type(exc).__name__}: {exc}"
