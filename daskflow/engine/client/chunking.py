"""How many runs of a ``.map()`` one Dask task executes.

A chunk should take at least ``map.chunk-seconds`` (0.2 s): long enough that Dask's
1–3 ms per task is noise; on many worker threads, longer (``chunk_seconds``). The
per-run time of each task is measured from the envelopes the client reads (the median
over its recent chunks, ``observe``). Before any measurement the chunks of a map grow geometrically
from 1, and never exceed a quarter of an even share per thread, so an unknown, heavy
function still keeps every thread busy.

Once the time per run is known, chunks are cut as in guided self-scheduling: each takes
a quarter of an even share per thread *of what is left* (``ceil(left / (4 x threads))``),
never less than the time target, never more than ``map.max-chunksize`` runs or
``map.max-chunk-seconds`` (10 s: the first values of a map come back within that). So a map of heavy
runs starts with a few big chunks and ends with chunks of the target time, which even the
end out over the threads: the number of chunks grows with the log of the map's length,
not with the length, and an estimate of the time per run that is off (a warm-up stretched
by a busy machine measures 10 ms runs at 20-60 ms) changes only the size of the last
chunks. A map of light runs, where the time target is above the cap, keeps chunks of the
cap throughout, as before.

The last round (less left than one chunk per thread) is cut finer: each chunk a
``threads``-th of what is left, down to a quarter of the time target (``TAIL``) but never
below ``map.chunk-seconds``. On many threads the time target is long (1.6 s at 64), and a
thread that took the last full chunk kept the map going for up to that long while the
others had nothing left (64 workers: 0.4-1.4 s of tail on a 15.6 s map); the finer last
round costs a few more chunks (about 64 x ln 4 at 64 threads) in the map's last second or
two. On up to 8 threads the time target is ``map.chunk-seconds`` itself: nothing changes.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import TYPE_CHECKING, Iterable

from daskflow import config

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.runners.base import TaskRunner

MAX_CHUNKSIZE = 100_000  # ``map.max-chunksize`` unset
_seconds_per_run: dict[str, float] = {}
_samples: dict[str, collections.deque[tuple[float, int]]] = {}  # (seconds per run, runs) of recent chunks
_lock = threading.Lock()

#: How many recent chunks of a task its time per run is taken from.
SAMPLES = 32
#: Guided self-scheduling: a chunk of measured runs takes 1 / (SHARES x threads) of what is left.
SHARES = 4
#: The last round's chunks go down to 1 / TAIL of the time target on many threads (not below ``map.chunk-seconds``).
TAIL = 4


def observe(task: Task, result: ChunkResult) -> None:
    """Feed the measured time per run of a finished chunk into the task's estimate: the
    median over the runs of its last ``SAMPLES`` chunks (each chunk's time per run counted
    once per run it had).

    A median, not a moving average: the chunks of a warm-up that end last are the ones a
    busy process delayed most (64 one-run chunks of a 10 ms sleep on 32 in-process workers
    measured 10-68 ms, median 15.5 ms; a moving average read 30-97 ms, whichever ended
    last), and weighting by runs lets a chunk of 800 runs outvote a one-run one.
    """
    if not result.n or not len(result.ends):
        return
    # from the first run's start (``first``), not the chunk's: the setup before it (the spec
    # unpickled, checkpoints recalled, the meter started) is no run's time, and on 64 busy
    # in-process workers it made the one-run chunks of a warm-up measure 10 ms runs at ~20 ms,
    # which halved the planned chunks (twice as many, each a few ms of client and scheduler)
    elapsed = max(0.0, result.ends[-1] - (result.first or result.started))
    if result.n < 8 and elapsed < 0.01:
        return  # a few fast runs measure the chunk's own start more than the runs (a 1-run warm-up:
        # ~1.5 ms, which made the next 10^6 map 7,752 chunks of 129 runs instead of 100 of 10^4)
    with _lock:
        recent = _samples.get(task.task_key)
        if recent is None:
            recent = _samples[task.task_key] = collections.deque(maxlen=SAMPLES)
        recent.append((elapsed / result.n, result.n))
        _seconds_per_run[task.task_key] = weighted_median(recent)


def weighted_median(samples: Iterable[tuple[float, int]]) -> float:
    """The value below and above which half of the weight lies (``(value, weight)`` pairs)."""
    ordered = sorted(samples)
    half, seen = sum(w for _, w in ordered) / 2, 0
    for value, weight in ordered:
        seen += weight
        if seen >= half:
            return value
    return ordered[-1][0]


def plan(task: Task, n: int, runner: TaskRunner, chunksize: int | None = None) -> list[tuple[int, int]]:
    """Chunk bounds ``[(lo, hi), ...]`` covering ``range(n)``."""
    if n == 0:
        return []
    if chunksize:
        return [(lo, min(lo + chunksize, n)) for lo in range(0, n, chunksize)]
    threads = runner.total_threads()
    cap = max(1, min(int(config.get("map.max-chunksize") or MAX_CHUNKSIZE), math.ceil(n / (4 * threads))))
    per_run = _seconds_per_run.get(task.task_key)
    if per_run is not None:
        per_run = max(per_run, 1e-9)
        floor = max(1, min(cap, int(chunk_seconds(threads) / per_run)))
        longest = float(config.get("map.max-chunk-seconds") or 0)
        if longest > 0:
            cap = max(floor, min(cap, int(longest / per_run)))
        target = max(1, int(float(config.get("map.chunk-seconds") or 0.2) / per_run))
        return guided(n, SHARES * threads, floor, cap, threads, min(floor, max(target, floor // TAIL)))
    bounds, lo, size = [], 0, 1
    while lo < n:
        hi = min(lo + size, n)
        bounds.append((lo, hi))
        lo, size = hi, min(cap, size * 2)
    return bounds


def guided(n: int, shares: int, floor: int, cap: int, threads: int = 1, least: int | None = None,
           ) -> list[tuple[int, int]]:
    """Guided self-scheduling: chunk bounds over ``range(n)``, each ``1 / shares`` of what is
    left, between ``floor`` and ``cap`` runs; in the last round (less left than a chunk per
    thread) one ``threads``-th of what is left, down to ``least`` runs (the module's text says why)."""
    least = floor if least is None else least
    if floor >= cap and least >= cap:  # light runs: every chunk at the cap
        return [(lo, min(lo + cap, n)) for lo in range(0, n, cap)]
    bounds, lo = [], 0
    while lo < n:
        left = n - lo
        size = min(cap, max(floor, -(-left // shares)))
        if left < threads * size:  # the last round: smaller chunks even out the end
            size = max(least, -(-left // threads))
        bounds.append((lo, min(lo + size, n)))
        lo += size
    return bounds


def chunk_seconds(threads: int) -> float:
    """How long a chunk should take on ``threads`` worker threads: ``map.chunk-seconds``, and
    longer on many threads, so that the cluster ends at most ``map.max-chunks-per-second``
    chunks a second. Every chunk costs the client and the scheduler the same few ms however
    many workers run it: at 32 one-thread workers, 0.2 s chunks of 10 ms runs were 160
    chunks a second, which the client and scheduler could not keep up with."""
    target = float(config.get("map.chunk-seconds") or 0.2)
    rate = float(config.get("map.max-chunks-per-second") or 0)
    return max(target, threads / rate) if rate > 0 else target


def stream_size(task: Task, previous: int, chunksize: int | None = None) -> int:
    """The size of the next chunk of a ``MapStream``: as ``plan`` would cut it, the geometric
    growth from 1 taking the place of a share of a length the stream does not know."""
    if chunksize:
        return chunksize
    cap = max(1, int(config.get("map.max-chunksize") or MAX_CHUNKSIZE))
    per_run = _seconds_per_run.get(task.task_key)
    if per_run is None:
        return min(cap, max(1, previous * 2))
    return max(1, min(cap, int(float(config.get("map.chunk-seconds") or 0.2) / max(per_run, 1e-9))))
