"""Tracker messages: what the task-run function reports while runs execute.

A chunk reports ``ChunkStarted`` when it begins, ``RunRetrying`` for each retry of a
run, and ``ChunkEnded`` (the codes of the runs that did not simply complete) when it
finishes; the run logging sink reports ``LogsShipped``. In the client's process these
records go straight to the tracker. From a Dask worker they travel as Dask structured
events, which carry msgpack-able dicts only: ``to_wire`` / ``from_wire`` convert, with
the field names spelled out, and a worker sends many messages as one ``batch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from daskflow.codes import StateEvent


@dataclass(slots=True)
class ChunkStarted:
    base: int
    start: int
    timestamp: float
    worker: str | None


@dataclass(slots=True)
class RunRetrying:
    base: int
    start: int
    index: int  # the run's position in its chunk
    event: StateEvent  # AwaitingRetry, or Retrying when the next attempt starts


@dataclass(slots=True)
class ChunkEnded:
    base: int
    start: int
    timestamp: float
    worker: str | None
    odd_codes: list[list[int]]  # [index, code] of runs that did not simply complete


@dataclass(slots=True)
class LogsShipped:
    records: list[list]  # [owner (24 bytes), index, timestamp, level, message, logger name]


Message = Union[ChunkStarted, RunRetrying, ChunkEnded, LogsShipped]
_KINDS: dict[str, type] = {"started": ChunkStarted, "retrying": RunRetrying, "ended": ChunkEnded,
                           "logs": LogsShipped}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
BATCH = "batch"


def to_wire(msg: Message) -> dict[str, Any]:
    """The message as a Dask event payload (str keys, msgpack-able values)."""
    out: dict[str, Any] = {"kind": _KIND_OF[type(msg)]}
    for name in msg.__slots__:  # type: ignore[union-attr]
        value = getattr(msg, name)
        if name == "base":
            value = value.to_bytes(16, "big")
        elif name == "event":
            value = list(value)
        out[name] = value
    return out


def from_wire(payload: dict[str, Any]) -> Message:
    """The message a ``to_wire`` payload stands for (``KeyError``/``TypeError`` if malformed)."""
    fields = dict(payload)
    cls = _KINDS[fields.pop("kind")]
    if "base" in fields:
        fields["base"] = int.from_bytes(fields["base"], "big")
    if "event" in fields:
        fields["event"] = StateEvent(*fields["event"])
    return cls(**fields)


def batch_to_wire(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": BATCH, "messages": messages}


def batch_from_wire(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The wire messages of one Dask event (a batch, or a single message)."""
    return payload["messages"] if payload.get("kind") == BATCH else [payload]
