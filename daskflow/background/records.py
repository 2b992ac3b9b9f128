"""The records of background runs: what clients, the server and task workers tell each other.

Every message of the background path is a named record, as the engine's tracker
messages are (``engine/tracking/events.py``):

- ``Call``: a delayed call, from a client to the server (``t.delay()``).
- ``StateChange``: a run's live state (Pending, Scheduled again, Running), from the
  server's scheduler hooks or a task worker.
- ``FinalState``: a run's final state, with its error, attempts (``run_count``), the
  states between its first Running and the final one (``history``: retries), and the
  result or exception blob; from a task worker, or from the server (Crashed, Cancelled).
- ``Enqueue`` and ``STOP``: the other operations of the server's queue writer.
- ``Outcome``: a final run record and its result blob, as readers get them.

On the wire (Dask's batched stream, msgpack) a record travels as a list of its field
values after a kind tag; ``to_wire`` / ``from_wire`` (and ``calls_to_wire`` /
``calls_from_wire`` for a message of calls) are the one place that reads those lists
back into records, by field name. Nothing else indexes a message.

This module imports neither distributed nor the engine: clients, the server, task
workers and the store all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import msgpack

from daskflow.codes import StateEvent

__all__ = ["STOP", "Call", "Enqueue", "FinalState", "Outcome", "RunChange", "StateChange", "calls_from_wire",
           "calls_to_wire", "from_wire", "outcome_from_wire", "outcome_to_wire", "to_wire"]


class Call(NamedTuple):
    """A delayed call, as a client buffers it: its run id, task and pickled arguments (a row).

    ``task`` is the pickled task; on the wire, its index in the message's ``tasks`` list
    (each pickled task travels once per message).
    """

    run_id: str
    task_key: str
    task_name: str
    task: bytes | int
    args: bytes
    flow_run_id: str | None
    submitted: float


@dataclass(slots=True)
class StateChange:
    """Run ``run_id`` entered a live state (Pending, Scheduled, Running)."""

    run_id: str
    type: str
    name: str
    timestamp: float
    message: str = ""
    worker: str | None = None


@dataclass(slots=True)
class FinalState:
    """Run ``run_id`` ended in a final state.

    ``history``: the states after its first Running, before this one (retries);
    ``run_count``: how many times its body was attempted (None: what the server has);
    ``result``: the pickled value (``persisted``) or exception; ``logs``: run log
    records the worker had not shipped yet (the server records them, then drops them);
    ``resources``: what the run took on its task worker, as a chunk's ``res`` record.
    """

    run_id: str
    type: str
    name: str
    timestamp: float
    message: str = ""
    error: str | None = None
    run_count: int | None = None
    worker: str | None = None
    result: bytes | None = None
    persisted: bool = False
    history: list[StateEvent] = field(default_factory=list)
    logs: list[list] | None = None
    resources: dict | None = None  # CPU time and peak RSS increase (engine/worker/resources.py)


@dataclass(slots=True)
class Enqueue:
    """Make a call durable: its queue entry (the dict the store keeps) and a Scheduled record."""

    entry: dict[str, Any]


class _Stop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STOP"


#: The queue writer's last operation.
STOP = _Stop()

Message = Union[StateChange, FinalState]
WriterOp = Union[Enqueue, StateChange, FinalState, _Stop]


class Outcome(NamedTuple):
    """A final run record (the ``daskflow runs show -o json`` shape) and its result blob."""

    record: dict[str, Any]
    result: bytes | None


class RunChange(NamedTuple):
    """A run record as committed, and the history entries this commit added to it."""

    record: dict[str, Any]
    new_history: list[dict[str, Any]]


# -- the wire ---------------------------------------------------------------------------------

_KINDS: dict[str, type] = {"state": StateChange, "final": FinalState}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def to_wire(msg: Message) -> list:
    """``msg`` as msgpack-able values: ``[kind, field values...]`` (history as lists)."""
    values: list[Any] = [_KIND_OF[type(msg)]]
    for name in msg.__slots__:  # type: ignore[union-attr]
        value = getattr(msg, name)
        values.append([list(h) for h in value] if name == "history" else value)
    return values


def from_wire(item: list | tuple) -> Message:
    """The record ``to_wire`` made (``KeyError``/``TypeError`` if it is not one)."""
    cls = _KINDS[item[0]]
    msg = cls(*item[1:])
    if cls is FinalState:
        msg.history = [StateEvent(*h) for h in msg.history]
    return msg


def calls_to_wire(calls: list[Call]) -> tuple[list[list], list[bytes]]:
    """The ``enqueue`` and ``tasks`` fields of a message carrying ``calls``: each pickled task once."""
    tasks: list[bytes] = []
    index: dict[int, int] = {}  # by id(): the blob of one task object is one bytes object
    wire = []
    for call in calls:
        at = index.get(id(call.task))
        if at is None:
            at = index[id(call.task)] = len(tasks)
            tasks.append(call.task)  # type: ignore[arg-type]
        wire.append([call.run_id, call.task_key, call.task_name, at, call.args, call.flow_run_id,
                     call.submitted])
    return wire, tasks


def calls_from_wire(enqueue: list, tasks: list[bytes]) -> list[Call]:
    """The calls of a message, each with its pickled task."""
    out = []
    for item in enqueue:
        call = Call(*item)
        if type(call.task) is int:
            call = call._replace(task=tasks[call.task])
        out.append(call)
    return out


def outcome_to_wire(outcome: Outcome) -> list:
    """An outcome as a reply to a reader: ``[msgpack record, result blob]``."""
    return [msgpack.packb(outcome.record, use_bin_type=True), outcome.result]


def outcome_from_wire(item: list | tuple) -> Outcome:
    """The outcome ``outcome_to_wire`` made."""
    packed, blob = item
    return Outcome(msgpack.unpackb(packed, raw=False, strict_map_key=False), blob)
