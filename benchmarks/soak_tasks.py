"""The tasks of ``benchmarks/soak.py``, importable by name on its workers and task workers."""

from __future__ import annotations

import os

from daskflow import task
from daskflow.cache import INPUTS


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@task(cache_policy=INPUTS, persist_result=True)
def square(x: int) -> int:
    return x * x


@task(retries=1, retry_delay_seconds=0)
def flaky(marker: str) -> str:
    """Fails on its first attempt (no ``marker`` file yet), succeeds on the retry."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError("first attempt fails on purpose")
    return "ok"


@task(persist_result=True)
def background(x: int) -> int:
    return 2 * x


def scheduler_trace_start(dask_scheduler=None) -> None:
    """Start tracemalloc in the scheduler (``--profile``), keeping a first snapshot."""
    import tracemalloc

    tracemalloc.start(25)
    dask_scheduler._soak_snapshot = tracemalloc.take_snapshot()


def scheduler_trace_grown(dask_scheduler=None) -> list:
    """The scheduler's allocation sites that grew since ``scheduler_trace_start``."""
    import gc
    import tracemalloc

    gc.collect()
    diff = tracemalloc.take_snapshot().compare_to(dask_scheduler._soak_snapshot, "traceback")
    out = []
    for stat in diff[:10]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
        out.append({"kib": round(stat.size_diff / 1024, 1), "count": stat.count_diff, "where": frames[-12:]})
    tracemalloc.stop()
    return out
