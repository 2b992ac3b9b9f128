"""Many workers: chunk planning and bookkeeping at 32 and 64 one-thread workers.

    python benchmarks/bench_workers.py                   # N = 10^5 runs of time.sleep(0.01), 32 and 64 workers
    python benchmarks/bench_workers.py -n 20000 --workers 16 32
    python benchmarks/bench_workers.py -n 30000 --workers 32 --timeline   # where the time went, chunk by chunk

Each row: a LocalCluster of W one-thread workers in this process (``processes=False``: the
runs sleep, so threads are enough, and 64 processes would not fit 2 cores), a ``.map()`` of N
runs of ``time.sleep(0.01)``. Printed: wall time, the ideal ``N x 10 ms / W``, their ratio,
the number of chunks, and the most Dask tasks the scheduler held at once (sampled every 20 ms).
Raw Dask beside it, on the same cluster: ``client.map`` over N/W-sized batches (one task per
worker share, each sleeping its elements in turn), the floor of this shape, and over batches
as many as daskflow's chunks (what Dask alone pays for that many tasks).

``--timeline`` adds, from the chunks' envelopes: the wall time per run inside the run loops
(10 ms is the floor), the idle gaps of each worker between one chunk's last run and the
next chunk's first, how long the workers waited for their first chunk, and how long before
the end each worker ran out of chunks (the tail).

Dask's own per-worker monitors are slowed down (``--dask-monitors quiet``, the default): 32
in-process workers each profiling every 10 ms, sampling the GIL every 1 ms and reading
psutil every 100-500 ms keep the one event loop they share busy most of the time (py-spy:
~80% of the GIL), which measures Dask's simulation of 32 hosts, not the runs' planning and
bookkeeping. Both daskflow and raw Dask run with the same settings. ``--dask-monitors
default`` keeps Dask's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

SLEEP = 0.01


def sleepy(x):
    time.sleep(SLEEP)
    return x


def sleepy_batch(xs):
    return [sleepy(x) for x in xs]


class PeakTasks:
    """The most tasks the scheduler held at once, sampled on a thread."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.peak, self.stop = scheduler, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, len(self.scheduler.tasks))

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


QUIET_MONITORS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "5s",
    "distributed.admin.tick.interval": "1s",
}


def run(n: int, workers: int, processes: bool, show_timeline: bool = False) -> dict:
    from distributed import Client, LocalCluster

    from daskflow import flow, task
    from daskflow.runners import DaskTaskRunner
    from daskflow.runners.clients import close_shared_client

    t_sleepy = task(sleepy)
    ideal = n * SLEEP / workers
    # memory_limit=0: the workers share this one process, and Dask pauses a worker once the
    # process's RSS passes 80% of its share (64 workers: ~300 MiB here): every worker paused
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=":0",
                      memory_limit=0) as cluster:
        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def fan_out() -> tuple[float, int, int]:
            t_sleepy.map(range(2 * workers), chunksize=1).result()  # warm: the per-run time is known
            peak = PeakTasks(cluster.scheduler)
            t0 = time.perf_counter()
            futs = t_sleepy.map(range(n))
            futs.wait()
            wall = time.perf_counter() - t0
            lines = timeline(futs.chunks, t0 - time.perf_counter() + time.time(), wall) if show_timeline else []
            return wall, len(futs.chunks), peak.close(), lines

        wall, chunks, peak, lines = fan_out()
        with Client(cluster) as client:
            size = -(-n // workers)
            batches = [range(lo, min(lo + size, n)) for lo in range(0, n, size)]
            t0 = time.perf_counter()
            client.gather(client.map(sleepy_batch, batches, pure=False))
            raw = time.perf_counter() - t0
            size = -(-n // chunks)
            batches = [range(lo, min(lo + size, n)) for lo in range(0, n, size)]
            t0 = time.perf_counter()
            client.gather(client.map(sleepy_batch, batches, pure=False))
            raw_same = time.perf_counter() - t0
        close_shared_client(cluster.scheduler_address)  # before its cluster: no "Failed to reconnect" later
    print(f"{workers:3d} workers  N={n:,}  daskflow {wall:6.2f} s  ideal {ideal:6.2f} s  "
          f"ratio {wall / ideal:4.2f}x  chunks {chunks:5d}  peak scheduler tasks {peak:5d} "
          f"(4 x workers = {4 * workers})   raw Dask: {workers} batches {raw:6.2f} s ({raw / ideal:4.2f}x), "
          f"{len(batches)} batches {raw_same:6.2f} s ({raw_same / ideal:4.2f}x)", flush=True)
    for line in lines:
        print("    " + line, flush=True)
    return {"n": n, "wall_s": wall, "ideal_s": ideal, "chunks": chunks, "peak_tasks": peak, "raw_s": raw,
            "raw_same_s": raw_same}


def timeline(chunks, t0: float, wall: float) -> list[str]:
    """Where a map's time went, from its chunks' envelopes (``ChunkResult``: worker, start of
    the run loop, end of each run): medians and 90th percentiles, in the lines to print."""
    import statistics
    from collections import defaultdict

    def spread(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"median {statistics.median(xs) * 1000:7.1f} ms, p90 {xs[int(0.9 * (len(xs) - 1))] * 1000:7.1f} ms"

    by_worker = defaultdict(list)
    for c in chunks:
        res = c.result
        by_worker[res.worker].append((res.first, res.ends[-1], res.n))
    per_run = [(end - first) / n for spans in by_worker.values() for first, end, n in spans]
    gaps, firsts, tails, busy = [], [], [], []
    for spans in by_worker.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
        firsts.append(spans[0][0] - t0)
        tails.append(t0 + wall - spans[-1][1])
        busy.append(sum(end - first for first, end, _ in spans))
    return [f"wall per run in the run loops: {spread(per_run)}",
            f"idle between chunks on a worker: {spread(gaps or [0.0])}, {sum(gaps):.1f} s in all",
            f"first chunk started after: {spread(firsts)}; a worker out of chunks before the end: {spread(tails)}, "
            f"least {min(tails) * 1000:.1f} ms (the client's own end)",
            f"busy in run loops per worker: median {statistics.median(busy):.2f} s of {wall:.2f} s, "
            f"{len(by_worker)} workers"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--processes", action="store_true", help="worker processes instead of threads")
    parser.add_argument("--timeline", action="store_true", help="where the time went, from the chunks' envelopes")
    parser.add_argument("--dask-monitors", choices=("quiet", "default"), default="quiet")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    os.environ.setdefault("DASKFLOW_HOME", tempfile.mkdtemp(prefix="daskflow-bench-workers-"))
    import dask.config

    settings = QUIET_MONITORS if args.dask_monitors == "quiet" else {}
    with dask.config.set(settings):
        rows = {str(workers): run(args.n, workers, args.processes, args.timeline) for workers in args.workers}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
