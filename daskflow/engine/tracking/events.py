"""Tracker messages: what the task-run function reports while runs execute.

A chunk reports ``ChunkStarted`` when it begins, ``RunRetrying`` for each retry of a
run, and ``ChunkEnded`` (the codes of the runs that did not simply complete) when it
finishes; the run logging sink reports ``LogsShipped``. In the client's process these
records go straight to the tracker. From a Dask worker they travel as Dask structured
events, which carry msgpack-able values only: a worker sends ~100 ms of messages as one
``batch_to_wire`` payload, with per kind one list per field (a dict per message would cost
a Python call each when Dask decodes it), and a chunk that started and ended within the
batch travels as its ``ChunkEnded`` alone, with the start time.
"""

from __future__ import annotations

from array import array
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
class ChunkAside:
    """A chunk has only runs awaiting their retry left: it waits off its worker's pool, and
    the runner's window need not count it (``TaskRunner.step_aside``)."""

    base: int
    start: int


@dataclass(slots=True)
class ChunkEnded:
    base: int
    start: int
    timestamp: float
    worker: str | None
    odd_codes: list[list[int]]  # [index, code] of runs that did not simply complete
    started: float | None = None  # when the chunk's runs began (the envelope's); else the folded ChunkStarted's
    codes: bytes = b""  # every run's code instead, when that is smaller than the pairs
    summary: bytes = b""  # the pickled envelope without values, when the values stayed on the worker
    resources: dict | None = None  # CPU and memory the runs took (engine/worker/resources.py)
    first: float = 0.0  # when the chunk's run loop began
    ends: bytes = b""  # each run's end, float32 seconds after ``first`` (4 bytes a run), when not ``zends``
    starts: bytes = b""  # each run's start likewise (NaN: not timed), when runs did not run back to back
    zends: bytes = b""  # each run's end packed as the run store keeps them (store/packing.py ``pack_ends``)

    def run_times(self) -> tuple[bytes, bytes]:
        """``(ends, starts)`` as float64 epoch seconds, packed (empty when not sent)."""
        return _absolute(self.ends, self.first), _absolute(self.starts, self.first)

    def run_codes(self, n: int) -> bytearray:
        """The final code of each of the chunk's ``n`` runs."""
        if self.codes:
            return bytearray(self.codes)
        out = bytearray(n)
        for i, code in self.odd_codes:
            out[i] = code
        return out


@dataclass(slots=True)
class LogsShipped:
    records: list[list]  # [owner (24 bytes), index, timestamp, level, message, logger name]


Message = Union[ChunkStarted, RunRetrying, ChunkAside, ChunkEnded, LogsShipped]
def relative_times(times: array, first: float) -> bytes:
    """Epoch times as float32 offsets from ``first`` (a zero, "not timed", as NaN): half the bytes."""
    import numpy as np

    values = np.frombuffer(times, dtype=np.float64)
    return np.where(values == 0, np.nan, values - first).astype(np.float32).tobytes()


def _absolute(raw: bytes, first: float) -> bytes:
    if not raw:
        return b""
    import numpy as np

    values = np.frombuffer(raw, dtype=np.float32).astype(np.float64) + first
    return np.nan_to_num(values, nan=0.0).tobytes()


_KINDS: dict[str, type] = {"started": ChunkStarted, "retrying": RunRetrying, "aside": ChunkAside,
                           "ended": ChunkEnded, "logs": LogsShipped}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
BATCH = "batch"


def _encode(name: str, value: Any) -> Any:
    if name == "base":
        return value.to_bytes(16, "big")
    if name == "event":
        return list(value)
    return value


def _decode(name: str, value: Any) -> Any:
    if name == "base":
        return int.from_bytes(value, "big")
    if name == "event":
        return StateEvent(*value)
    return value


def batch_to_wire(messages: list[Message]) -> dict[str, Any]:
    """Messages as one Dask event payload: ``{"kind": "batch", "columns": {kind: {field: [values]}}}``."""
    unfolded = {(m.base, m.start): m for m in messages if type(m) is ChunkStarted}
    for msg in messages:
        if type(msg) is ChunkEnded:
            began = unfolded.pop((msg.base, msg.start), None)
            if began is not None and msg.started is None:
                msg.started = began.timestamp
    columns: dict[str, dict[str, list]] = {}
    for msg in messages:
        if type(msg) is ChunkStarted and unfolded.get((msg.base, msg.start)) is not msg:
            continue  # folded into its ChunkEnded
        kind = _KIND_OF[type(msg)]
        cols = columns.get(kind)
        if cols is None:
            cols = columns[kind] = {name: [] for name in msg.__slots__}
        for name, values in cols.items():
            values.append(_encode(name, getattr(msg, name)))
    return {"kind": BATCH, "columns": columns}


def batch_from_wire(payload: dict[str, Any], only: type | None = None) -> list[Message]:
    """The messages of one ``batch_to_wire`` payload (of type ``only``, if given), in the
    order of a chunk's life: starts, retries, ends, then logs (``KeyError``/``TypeError``
    if malformed)."""
    if payload.get("kind") != BATCH:
        raise KeyError("kind")
    columns = payload["columns"]
    out: list[Message] = []
    for kind, cls in _KINDS.items():
        cols = columns.get(kind)
        if cols is None or (only is not None and cls is not only):
            continue
        names = list(cols)
        for values in zip(*cols.values()):
            out.append(cls(**{name: _decode(name, v) for name, v in zip(names, values)}))
    return out
