"""Direct call overhead ``t(x)`` with tracking on and off, interleaved, in one process.

    python benchmarks/bench_direct.py

"tracking on" includes waiting for the run store writer (``tracker.flush``) after each
block of calls, so the writer thread's work is charged to the calls that caused it
(without the flush it would leak into the next "off" block).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time


def main() -> None:
    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-direct-")
    import dask.config

    from daskflow import task
    from daskflow.engine.tracking import tracker
    from daskflow.store.runs import open_run_store

    @task
    def inc(x):
        return x + 1

    def plain(x):
        return x + 1

    n, reps = 5000, 15
    inc(1)
    on, off, pl = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        [plain(1) for _ in range(n)]
        pl.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        [inc(1) for _ in range(n)]
        tracker.flush(60)
        on.append((time.perf_counter() - t0) / n)
        with dask.config.set({"daskflow.tracking": False}):
            t0 = time.perf_counter()
            [inc(1) for _ in range(n)]
            off.append((time.perf_counter() - t0) / n)
    m = statistics.median
    recorded = len(open_run_store().task_runs(limit=None))
    print(f"plain function {m(pl) * 1e6:.2f} µs | t(x) tracking on {m(on) * 1e6:.1f} µs (writes included) | "
          f"tracking off {m(off) * 1e6:.1f} µs | tracking costs {(m(on) - m(off)) * 1e6:.1f} µs per call | "
          f"runs recorded {recorded} of {reps * n + 1}")


if __name__ == "__main__":
    main()
