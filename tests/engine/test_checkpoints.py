"""Checkpoint notes: how often a running chunk tells the scheduler's ledger which runs finished."""

from __future__ import annotations

from array import array

import cloudpickle

from daskflow.engine.core.envelope import ChunkResult
from daskflow.engine.worker.checkpoints import Notes


class Noted:
    """The host side of notes: what a chunk sent to its ledger, loaded back."""

    def __init__(self) -> None:
        self.parts: list = []

    def note(self, blob: bytes) -> None:
        self.parts.append(cloudpickle.loads(blob))


def _run(seconds_per_run: list[float]) -> list:
    """Drive ``Notes`` as the tight loop does (a comparison per run, ``reached`` past ``due``),
    over runs that took these wall times; the checkpoints sent."""
    n, host, t0 = len(seconds_per_run), Noted(), 1000.0
    res = ChunkResult("t", 0, 0, n, bytearray(n), list(range(n)))
    notes = Notes(res, host, 0, t0, 1 << 20)
    ends, now = array("d", bytes(8 * n)), t0
    for i, took in enumerate(seconds_per_run):
        now = ends[i] = now + took
        if now >= notes.due:
            notes.reached(i, now, ends)
    notes.finish(ends)
    return host.parts


def test_light_runs_are_noted_about_once_a_second_and_at_their_chunks_end():
    """300 runs of 10 ms (3 s): one note a second and one at the end, not one every quarter
    second (64 workers sent 256 a second through the one event loop of an in-process cluster)."""
    parts = _run([0.01] * 300)
    assert 3 <= len(parts) <= 4
    assert [(p.lo, p.hi) for p in parts] == list(zip([0] + [p.hi for p in parts[:-1]], [p.hi for p in parts]))
    assert parts[-1].hi == 300 and all(p.hi - p.lo <= 101 for p in parts)
    assert [v for p in parts for v in p.values] == list(range(300))


def test_runs_of_25_ms_or_more_are_noted_as_each_ends():
    parts = _run([0.03] * 10)
    assert [(p.lo, p.hi) for p in parts] == [(i, i + 1) for i in range(10)]
