"""What a failed run failed on: a short repr of each of its arguments.

Only runs that end Failed, TimedOut or Crashed get one, after their chunk's loop, so
the hot path pays nothing. Each argument is at most ``MAX_REPR`` characters
(``reprlib`` bounds containers and long strings before they are built in full), and a
task's ``redact_inputs`` (``True``, or argument names) replaces values by ``REDACTED``:
the names stay, the values never leave the worker.
"""

from __future__ import annotations

import reprlib
from typing import Any, Iterable

__all__ = ["MAX_REPR", "REDACTED", "short_repr", "input_reprs", "redacted_names"]

MAX_REPR = 200
REDACTED = "<redacted>"

_repr = reprlib.Repr()
_repr.maxstring = 60  # strings inside containers: room for their neighbours
_repr.maxother = MAX_REPR
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 10
_repr.maxarray = 10
_repr.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` in at most ``MAX_REPR`` characters; a repr that raises is named by the type."""
    try:
        text = repr(value[:MAX_REPR]) if type(value) is str else _repr.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not hide the run's own error
        text = f"<{type(value).__name__} object; repr() raised {type(exc).__name__}>"
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def redacted_names(option: bool | Iterable[str], task_name: str, params: tuple[str, ...]) -> frozenset[str] | bool:
    """The ``redact_inputs`` option checked against the task's parameters: ``True``/``False`` or the names."""
    if isinstance(option, bool):
        return option
    names = frozenset([option] if isinstance(option, str) else option)
    unknown = sorted(names - set(params))
    if unknown:
        raise ValueError(f"task {task_name!r}: redact_inputs names {unknown}, which are not parameters of the "
                         f"task (its parameters: {list(params)})")
    return names


def input_reprs(parameters: dict[str, Any], redact: frozenset[str] | bool) -> dict[str, str]:
    """``{name: short repr}`` of a run's parameters, the redacted ones as ``REDACTED``."""
    if redact is True:
        return {name: REDACTED for name in parameters}
    return {name: REDACTED if redact and name in redact else short_repr(value)  # type: ignore[operator]
            for name, value in parameters.items()}
