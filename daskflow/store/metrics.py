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

import struct
from typing import Any, Callable, Iterable, NamedTuple

from daskflow.codes import CACHED, CODE_STATES, NEVER_RAN

__all__ = ["BUCKETS", "COUNTED", "Counters", "Delta", "add", "count_all", "read_counters", "tally"]

#: Upper bounds (seconds) of the run-duration histogram buckets; the last is +Inf.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))
COUNTED = b"\x00counted"  # set once the store's existing records have been counted
_SEP = b"\x1f"
_F = struct.Struct("<d")

Delta = dict[tuple[str, str, str], float]


def _key(kind: str, task: str, label: str) -> bytes:
    return _SEP.join((kind.encode(), task.encode(), label.encode()))


def tally(rec: dict | None, into: Delta, sign: int = 1) -> None:
    """Add (``sign`` 1) or take away (-1) what chunk record ``rec`` contributes to the counters.

    Works from the record's packed arrays with numpy: a chunk of 10^4 runs costs tens of
    microseconds, on the writer thread, never on a run's path.
    """
    if rec is None:
        return
    task = rec.get("task") or "?"
    n = rec.get("n", 1)
    codes = rec.get("codes")
    if codes is None:
        _bump(into, ("flight", task, ""), sign * n)
        return
    import numpy as np

    code_arr = np.frombuffer(bytes(codes), dtype=np.uint8)
    per_code = np.bincount(code_arr, minlength=len(CODE_STATES))
    for code, count in enumerate(per_code.tolist()):
        if count:
            _bump(into, ("runs", task, CODE_STATES[code].name), sign * count)
    retries = sum(c - 1 for c in (rec.get("run_counts") or {}).values() if c and c > 1)
    if retries:
        _bump(into, ("retries", task, ""), sign * retries)
    if rec.get("caches"):
        hits = int(per_code[CACHED])
        misses = len(code_arr) - sum(int(per_code[c]) for c in NEVER_RAN)
        _bump(into, ("hits", task, ""), sign * hits)
        _bump(into, ("misses", task, ""), sign * misses)
    spent = _durations(rec, code_arr)
    if spent is not None and len(spent):
        buckets = np.bincount(np.searchsorted(BUCKETS, spent), minlength=len(BUCKETS))
        for i, count in enumerate(buckets.tolist()):
            if count:
                _bump(into, ("dur", task, str(i)), sign * count)
        _bump(into, ("dur_sum", task, ""), sign * float(spent.sum()))
    cpu = (rec.get("res") or {}).get("cpu")
    if cpu:
        _bump(into, ("cpu_sum", task, ""), sign * float(cpu))


def _bump(into: Delta, key: tuple[str, str, str], value: float) -> None:
    into[key] = into.get(key, 0.0) + value


def _durations(rec: dict, code_arr: Any) -> Any:
    """Seconds each run that ran took (Cached, NotReady and Cancelled runs did not run)."""
    import numpy as np

    raw = rec.get("ends")
    if not raw:
        return None
    ends = np.frombuffer(bytes(raw), dtype=np.float64)
    starts = rec.get("starts")
    if starts is not None:
        prev = np.frombuffer(bytes(starts), dtype=np.float64)[: len(ends)]
    else:
        first = rec.get("started") or ends[0]
        prev = np.concatenate(([first], ends[:-1]))
    spent = np.maximum(ends - prev, 0.0)
    ran = ~np.isin(code_arr[: len(spent)], NEVER_RAN)
    return spent[ran]


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
        kind, task, label = bytes(key).decode().split("\x1f")
        out[(kind, task, label)] = _F.unpack(raw)[0]
    return Counters(out)
