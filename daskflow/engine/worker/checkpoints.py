"""Checkpoints: the runs of a chunk that finished, noted while it runs, so a chunk computed again runs only the rest.

Dask runs a task again when the worker holding it dies. A chunk running where its runner
keeps checkpoints (``Host.note``: on Dask, the scheduler's ledger) notes its finished
runs as it goes (``Notes``); a new attempt of the same chunk restores them
(``Checkpoint.joined``, ``Checkpoint.restore``) and runs only the rest. When a flow is
interrupted, the runs an unfinished chunk noted are recorded as they ended
(``keep_finished_runs``), the rest Cancelled.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cloudpickle

from daskflow.codes import OK_CODES

if TYPE_CHECKING:
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.runners.base import Host


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
    """Checkpoints of a chunk running on a host that keeps them (a Dask worker: the scheduler's ledger), sent as runs finish.

    The loop pays one float comparison per run (``now >= notes.due``). Runs of ``AT_ONCE``
    (25 ms) or more are noted as soon as they finish, so a lost worker costs at most the
    runs in flight; other runs about once a second (``EVERY``), and heavy ones (``HEAVY``,
    5 ms or more each) also when their chunk ends (``finish``), so every heavy run of a
    finished chunk is noted; tiny runs of short chunks never. A lost worker thread so
    runs again at most about a second of light runs.

    A note is a message to the scheduler (a pickle, a wake of the event loop from the
    chunk's thread, of the worker's batched stream, a handler there). A note per 10 ms run
    made 32-64 one-thread workers send 3,200-6,400 a second, which kept the scheduler and,
    in one process, the GIL busy (the runs themselves took 20 ms instead of 10). A note
    every quarter second still made 64 in-process workers send 256 a second, the most
    frequent message of the map (2,470 of a 3×10^4-run map's ~6,000, four times Dask's own
    task-finished): with the one event loop woken that often, a 10 ms run took ~0.5-1 ms
    longer (its thread waits for the GIL after its sleep); once a second it is within noise.
    """

    __slots__ = ("res", "host", "limit", "lo", "since", "due")
    AT_ONCE = 0.025
    HEAVY = 0.005
    EVERY = 1.0

    def __init__(self, res: ChunkResult, host: Host, lo: int, now: float, limit: int) -> None:
        self.res, self.host, self.lo, self.since, self.due = res, host, lo, now, now + self.AT_ONCE
        self.limit = limit  # checkpoints larger than this (the inline-bytes limit) are not sent

    def reached(self, i: int, now: float, ends: array) -> None:
        """Run ``i`` ended at ``now`` (past ``due``): note runs ``lo .. i`` if they were long, or
        if ``EVERY`` passed since the last note."""
        runs = i + 1 - self.lo
        if now - self.since < self.EVERY and now - self.since < self.AT_ONCE * runs:
            self.due = self.since + self.EVERY  # lighter runs: check again later
            return
        self.send(i + 1, ends)
        self.since, self.due = now, now + self.AT_ONCE

    def finish(self, ends: array) -> None:
        """The chunk's runs ended: note those since the last note if they were heavy (one
        message for the chunk), so a chunk whose values stay on its worker loses none of them."""
        hi = self.res.n
        if hi > self.lo and ends[hi - 1] - self.since >= self.HEAVY * (hi - self.lo):
            self.send(hi, ends)

    def send(self, hi: int, ends: array) -> None:
        """Note runs ``lo .. hi`` (not when their values are too large for the scheduler)."""
        res, lo = self.res, self.lo
        errors = {j: (res.errors.get(j), res.messages.get(j, "")) for j in range(lo, hi) if res.codes[j] not in OK_CODES}
        part = Checkpoint(lo, hi, bytes(res.codes[lo:hi]), res.values[lo:hi], list(ends[lo:hi]), errors)  # type: ignore[index]
        buffers: list = []
        try:
            blob = cloudpickle.dumps(part, protocol=5, buffer_callback=buffers.append)
        except Exception:  # an unpicklable value: these runs are not checkpointed
            blob = None
        if blob is not None and len(blob) + sum(b.raw().nbytes for b in buffers) <= self.limit:
            self.host.note(cloudpickle.dumps(part, protocol=5) if buffers else blob)
        # else values too large to send to the scheduler: those runs are computed again if lost
        self.lo = hi
