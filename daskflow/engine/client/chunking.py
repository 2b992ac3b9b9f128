"""How many runs of a ``.map()`` one Dask task executes.

A chunk should take about ``map.chunk-seconds`` (0.2 s): long enough that Dask's
1–3 ms per task is noise, short enough that heavy elements still spread over every
worker; on many worker threads, longer (``chunk_seconds``). The per-run time of each task is measured from the envelopes the client
reads (a moving average per task key). Before any measurement the chunks of a map
grow geometrically from 1, and never exceed a quarter of an even share per thread, so
an unknown, heavy function still keeps every thread busy.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

from daskflow import config

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.runners.base import TaskRunner

MAX_CHUNKSIZE = 100_000  # ``map.max-chunksize`` unset
_seconds_per_run: dict[str, float] = {}
_lock = threading.Lock()


def observe(task: Task, result: ChunkResult) -> None:
    """Feed the measured time per run of a finished chunk into the task's average."""
    if not result.n or not len(result.ends):
        return
    elapsed = max(0.0, result.ends[-1] - result.started)
    if result.n < 8 and elapsed < 0.01:
        return  # a few fast runs measure the chunk's own start more than the runs (a 1-run warm-up:
        # ~1.5 ms, which made the next 10^6 map 7,752 chunks of 129 runs instead of 100 of 10^4)
    per_run = elapsed / result.n
    with _lock:
        old = _seconds_per_run.get(task.task_key)
        _seconds_per_run[task.task_key] = per_run if old is None else 0.5 * old + 0.5 * per_run


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
        size = max(1, min(cap, int(chunk_seconds(threads) / max(per_run, 1e-9))))
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    bounds, lo, size = [], 0, 1
    while lo < n:
        hi = min(lo + size, n)
        bounds.append((lo, hi))
        lo, size = hi, min(cap, size * 2)
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
