"""The run store's counters: kept up to date by its one writer, read by ``/metrics`` in O(tasks).

A Prometheus scrape must not scan a store of 10^6 runs, so the writer keeps running
totals in the ``metrics`` database, in the same write transaction as the records they
count. Each chunk update contributes ``tally(new record) - tally(old record)``: a chunk
turning final adds its runs per state, its durations to the task's histogram, its
retries, its cache hits and misses, and takes its runs out of the in-flight gauge; a
record rewritten with the same codes (the end event, then the envelope) adds nothing.

Keys are ``kind \\x1f task \\x1f label`` (UTF-8), values one float64:

==========  =============  ==============================================================
kind        label          meaning
==========  =============  ==============================================================
``runs``    state name     final task runs, by task and state (a counter)
``flight``  ""             task runs recorded and not final yet (a gauge)
``retries`` ""             retries: attempts beyond the first (a counter)
``hits``    ""             runs of a caching task answered by the cache (a counter)
``misses``  ""             runs of a caching task that looked up and ran (a counter)
``dur``     bucket index   runs whose duration fell in bucket ``i`` of ``BUCKETS``
``dur_sum`` ""             total seconds of the runs in ``dur``
``cpu_sum`` ""             CPU seconds the runs recorded (``engine/worker/resources.py``)
==========  =============  ==============================================================

Counters only go up: ``prune`` does not lower them (as Prometheus expects of a
counter); it lowers the in-flight gauge for the non-final runs it deletes. A store
written before the counters existed is counted once, in full, by the first writer
that finds the ``metrics`` database without its ``COUNTED`` mark.
"""

from __future__ import annotations

import bisect
import functools
import struct
from array import array
from typing import Any, Callable, Iterable, NamedTuple

from daskflow.codes import CACHED, CODE_STATES, NEVER_RAN
from daskflow.store.packing import time_planes, times

__all__ = ["BUCKETS", "COUNTED", "Counters", "Delta", "add", "change", "count_all", "read_counters", "tally"]

#: Upper bounds (seconds) of the run-duration histogram buckets; the last is +Inf.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))
COUNTED = b"\x00counted"  # set once the store's existing records have been counted
_SEP = b"\x1f"
_F = struct.Struct("<d")

Delta = dict[tuple[str, str, str], float]


def _key(kind: str, task: str, label: str) -> bytes:
    return _SEP.join((kind.encode(), task.encode(), label.encode()))


def change(old: dict | None, new: dict, into: Delta) -> None:
    """Add what rewriting chunk record ``old`` as ``new`` changes in the counters.

    The common rewrites change no run (a live chunk starting; the envelope of a chunk whose
    end event recorded it final already, its times not packed again: ``packing.known_times``):
    those cost one comparison, and at most the CPU figure the envelope brought is added.
    """
    if old is not None and all(old.get(k) == new.get(k) for k in _RUN_FIELDS):
        cpu = _cpu(new) - _cpu(old)
        if cpu:
            _bump(into, ("cpu_sum", new.get("task") or "?", ""), cpu)
        return
    tally(old, into, -1)
    tally(new, into)


def _cpu(rec: dict) -> float:
    return float((rec.get("res") or {}).get("cpu") or 0.0)


_RUN_FIELDS = ("task", "n", "codes", "ends", "zends", "starts", "zstarts", "started", "run_counts", "caches")
_SMALL = 64  # runs below which plain Python beats numpy's per-call cost


def tally(rec: dict | None, into: Delta, sign: int = 1) -> None:
    """Add (``sign`` 1) or take away (-1) what chunk record ``rec`` contributes to the counters.

    A few microseconds a chunk on the writer thread, never on a run's path: small chunks
    in plain Python, big ones with numpy over the packed arrays.
    """
    if rec is None:
        return
    task = rec.get("task") or "?"
    codes = rec.get("codes")
    if codes is None:
        _bump(into, ("flight", task, ""), sign * rec.get("n", 1))
        return
    codes = bytes(codes)
    per_code = [codes.count(code) for code in CODE_STATES]  # 7 passes in C: a microsecond per 10^3 runs
    for code, count in enumerate(per_code):
        if count:
            _bump(into, ("runs", task, CODE_STATES[code].name), sign * count)
    retries = sum(c - 1 for c in (rec.get("run_counts") or {}).values() if c and c > 1)
    if retries:
        _bump(into, ("retries", task, ""), sign * retries)
    if rec.get("caches"):
        _bump(into, ("hits", task, ""), sign * per_code[CACHED])
        _bump(into, ("misses", task, ""), sign * (len(codes) - sum(per_code[c] for c in NEVER_RAN)))
    buckets, total = _histogram(rec, codes)
    for i, count in enumerate(buckets):
        if count:
            _bump(into, ("dur", task, str(i)), sign * count)
    if total:
        _bump(into, ("dur_sum", task, ""), sign * total)
    cpu = (rec.get("res") or {}).get("cpu")
    if cpu:
        _bump(into, ("cpu_sum", task, ""), sign * float(cpu))


def _bump(into: Delta, key: tuple[str, str, str], value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def _histogram(rec: dict, codes: bytes) -> tuple[list[int], float]:
    """Bucket counts and total seconds of the runs that ran (Cached, NotReady and Cancelled did not)."""
    packed = rec.get("zends")
    if packed and rec.get("ends") is None and rec.get("starts") is None and rec.get("zstarts") is None:
        return _histogram_packed(packed, rec.get("started"), codes)
    raw = times(rec, "ends", keep=False)  # packed on disk (store/packing.py): decoded, the record left packed
    if not raw:
        return [], 0.0
    ends = array("d")
    ends.frombytes(bytes(raw))
    starts = times(rec, "starts", keep=False)
    if starts is not None:
        prev = array("d")
        prev.frombytes(bytes(starts))
    else:
        prev = array("d", [rec.get("started") or ends[0]])
        prev.extend(ends[:-1])
    if len(ends) >= _SMALL:
        return _histogram_np(ends, prev, codes)
    counts = [0] * len(BUCKETS)
    total = 0.0
    for code, end, begin in zip(codes, ends, prev):
        if code in NEVER_RAN:
            continue
        spent = max(end - begin, 0.0)
        counts[bisect.bisect_left(BUCKETS, spent)] += 1
        total += spent
    return counts, total


def _histogram_np(ends: array, prev: array, codes: bytes) -> tuple[list[int], float]:
    import numpy as np

    n = min(len(ends), len(prev), len(codes))
    spent = np.maximum(np.frombuffer(ends, dtype=np.float64)[:n] - np.frombuffer(prev, dtype=np.float64)[:n], 0.0)
    spent = spent[_RAN[np.frombuffer(codes, dtype=np.uint8)[:n]]]
    return np.bincount(np.searchsorted(BUCKETS, spent), minlength=len(BUCKETS)).tolist(), float(spent.sum())


def _histogram_packed(packed: bytes, started: float | None, codes: bytes) -> tuple[list[int], float]:
    """``_histogram`` of runs that ran back to back, from their packed ends (``pack_times``): a
    run's duration is the delta the packing keeps (whole microseconds, compared exactly with
    the bounds), run 0's its end minus the chunk's start.

    The deltas are zigzag-coded and byte-shuffled into 8 planes. Most runs of a busy chunk
    take under 128 us: their delta is in the low plane alone (high planes zero), and an odd
    zigzag value is a negative delta (a run that ended before the one before it), counted
    as 0 s as the times' path does. Only the few runs with a high byte are put together
    from their 8 bytes. Decoding the ends back into times cost the writer ~0.05 us a run.
    """
    import numpy as np

    first, raw = time_planes(packed)  # type: ignore[misc]
    m = len(raw) // 8
    n = min(m, len(codes))
    if not n:
        return [], 0.0
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(8, m)[:, :n]
    ran = _RAN[np.frombuffer(codes, dtype=np.uint8)[:n]]
    low = planes[0]
    us = np.where(low & 1, 0, low >> 1).astype(np.int64)
    big = np.flatnonzero(planes[1:].any(axis=0))  # runs of 128 us or more (or negative)
    if len(big):
        z = np.zeros(len(big), dtype=np.uint64)
        for k in range(8):
            z |= planes[k, big].astype(np.uint64) << np.uint64(8 * k)
        us[big] = np.where(z & np.uint64(1), np.uint64(0), z >> np.uint64(1)).astype(np.int64)
    us[0] = 0  # run 0: from the chunk's start, below
    ran_us = us[ran]
    counts = [0] * len(BUCKETS)
    counts[0] = int(np.count_nonzero(ran)) - int(bool(ran[0]))
    if len(big):  # the bounds' first is 1 ms: only runs of 128 us or more can be past it
        long_runs = us[big[ran[big] & (big > 0)]]
        counts[0] -= len(long_runs)
        for i, c in enumerate(np.bincount(np.searchsorted(_BOUNDS_US(), long_runs), minlength=len(BUCKETS))):
            counts[i] += int(c)
    total = int(ran_us.sum(dtype=np.int64)) / 1e6
    if ran[0]:
        spent = max(first - (started or first), 0.0)
        counts[bisect.bisect_left(BUCKETS, spent)] += 1
        total += spent
    return counts, total


@functools.cache
def _BOUNDS_US() -> Any:
    import numpy as np

    return np.array([round(b * 1e6) if b != float("inf") else np.iinfo(np.int64).max for b in BUCKETS], dtype=np.int64)


def _ran_table() -> Any:
    import numpy as np

    table = np.ones(256, dtype=bool)
    table[list(NEVER_RAN)] = False
    return table


class _LazyTable:
    """``_RAN[codes]``: which codes ran, as a numpy lookup table made on first use (numpy is
    imported by the writer only, never by the CLI's reads)."""

    table: Any = None

    def __getitem__(self, codes: Any) -> Any:
        if self.table is None:
            self.table = _ran_table()
        return self.table[codes]


_RAN = _LazyTable()


def add(txn: Any, db: Any, delta: Delta) -> None:
    """Fold ``delta`` into the counters, in the writer's transaction."""
    for (kind, task, label), value in delta.items():
        if not value:
            continue
        key = _key(kind, task, label)
        raw = txn.get(key, db=db)
        txn.put(key, _F.pack((_F.unpack(raw)[0] if raw else 0.0) + value), db=db)


def count_all(txn: Any, db: Any, chunks: Callable[[], Iterable[tuple[bytes, bytes]]], unpack: Any) -> None:
    """Count every chunk record of a store once (the first time a writer finds no ``COUNTED`` mark)."""
    if txn.get(COUNTED, db=db) is not None:
        return
    delta: Delta = {}
    for _, raw in chunks():
        tally(unpack(raw), delta)
    add(txn, db, delta)
    txn.put(COUNTED, b"1", db=db)


class Counters(NamedTuple):
    """The counters as read back: ``{(kind, task, label): value}``."""

    values: dict[tuple[str, str, str], float]

    def by_kind(self, kind: str) -> dict[tuple[str, str], float]:
        return {(task, label): v for (k, task, label), v in self.values.items() if k == kind}


def read_counters(txn: Any, db: Any) -> Counters:
    """Every counter (a few per task: reading them costs what the tasks are, not the runs)."""
    out: dict[tuple[str, str, str], float] = {}
    for key, raw in txn.cursor(db=db):
        if key == COUNTED:
            continue
        kind, rest = bytes(key).decode().split("\x1f", 1)
        task, label = rest.rsplit("\x1f", 1)  # a task name may hold any character; kinds and labels do not
        out[(kind, task, label)] = _F.unpack(raw)[0]
    return Counters(out)
