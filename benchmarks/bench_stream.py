"""Streaming a big ``.map()``: client peak RSS and wall time while results are consumed.

    python benchmarks/bench_stream.py                 # N = 10^7, every row, one subprocess each
    python benchmarks/bench_stream.py -n 1000000      # a smaller N
    python benchmarks/bench_stream.py --reps 3        # medians of 3 runs per row
    python benchmarks/bench_stream.py --profile       # tracemalloc: where the client's memory is

Rows (each in a fresh subprocess that reports its peak RSS, ``VmHWM``: ``bench_map.peak_rss_mib``):

- ``plain loop``: ``for x in range(N): inc(x)`` in one process (no cluster).
- ``daskflow as_completed``: ``for f in as_completed(inc.map(range(N))): f.result()``
  inside a ``@flow`` on a LocalCluster(2 workers x 1 thread).
- ``daskflow iterate``: the same map consumed ``for f in futs: f.result()``.
- ``daskflow iter_chunks``: ``for part in futs.iter_chunks(): total += sum(part.values)``,
  which lets each chunk's values go once consumed (O(chunks) on the client).
- ``daskflow reduce``: ``futs.reduce(operator.add)``.
- ``daskflow stream ...``: the same two over ``t.map(iter(range(N)))``, a ``MapStream``: chunks
  are cut as the iterator is read and at most a window of them is submitted at a time.
- ``raw Dask batches, lists``: raw Dask cannot map 10^7 elements one task each (~2 ms a
  task here: hours), so this row is ``client.map`` over N/10^4 ranges of 10^4 elements
  (one task returns a list comprehension), consumed with
  ``distributed.as_completed(futs, with_results=True)``, each future released as it is
  read. Dask serializes a list result element by element (~25 µs an element here), so
  this row is not in the default set for N > 10^6 (``--rows raw`` runs it anyway).
- ``raw Dask batches, bytes``: the same, each task returning its list pickled as one
  ``bytes`` that the client unpickles: the floor of streaming through Dask here.

The LocalCluster's scheduler runs in the client process, so its memory counts too
(as it does for a user's flow on the default runner).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_map import peak_rss_mib  # noqa: E402

BATCH = 10_000


def inc(x):
    return x + 1


def inc_batch(xs):
    return [x + 1 for x in xs]


def inc_batch_pickled(xs):
    return pickle.dumps([x + 1 for x in xs], protocol=5)


class RssParts:
    """The client's resident memory split into anonymous and file-backed pages (``Rss`` and
    ``Anonymous`` of /proc/self/smaps_rollup), sampled on a thread every 0.2 s: the parts at
    the largest sample, and each part's largest."""

    def __init__(self) -> None:
        import threading

        self.at_peak: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def read() -> dict[str, float]:
        try:
            with open("/proc/self/smaps_rollup") as f:
                kb = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1] == "kB"}
        except OSError:
            return {}
        return {"rss": kb["Rss"] / 1024, "anon": kb["Anonymous"] / 1024, "file": (kb["Rss"] - kb["Anonymous"]) / 1024}

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            now = self.read()
            if now and now["rss"] >= self.at_peak.get("rss", 0):
                self.at_peak = now
            for k, v in now.items():
                self.peaks[k] = max(v, self.peaks.get(k, 0))

    def close(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {"anon_at_peak": self.at_peak.get("anon", 0), "file_at_peak": self.at_peak.get("file", 0),
                "anon_peak": self.peaks.get("anon", 0), "file_peak": self.peaks.get("file", 0)}


def cluster_kwargs() -> dict:
    return {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"}


def run_plain(n: int) -> dict:
    t0 = time.perf_counter()
    total = 0
    for x in range(n):
        total += inc(x)
    assert total == n * (n + 1) // 2
    return {"wall": time.perf_counter() - t0}


def run_daskflow(n: int, how: str) -> dict:
    from daskflow import as_completed, flow, task
    from daskflow.runners import DaskTaskRunner

    t_inc = task(inc)

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=cluster_kwargs()))
    def stream() -> tuple[int, float]:
        t_inc.map([0, 1], chunksize=1).result()  # the cluster is up before the clock starts
        t0, cpu0 = time.perf_counter(), time.process_time()
        futs = t_inc.map(iter(range(n)) if how.startswith("stream") else range(n))
        total = 0
        if how in ("iter_chunks", "stream_iter_chunks"):
            for part in futs.iter_chunks():
                total += sum(part.values)
        elif how in ("reduce", "stream_reduce"):
            total = futs.reduce(operator.add)
        else:
            for f in (as_completed(futs) if how == "as_completed" else futs):
                total += f.result()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if how in ("as_completed", "iterate"):
            assert futs[n // 2].result() == n // 2 + 1  # a future read again keeps its value
        return total, wall, cpu

    total, wall, cpu = stream()
    assert total == n * (n + 1) // 2, total
    return {"wall": wall, "cpu": cpu}  # cpu: every thread of the client process, its scheduler's too


def run_raw(n: int, pickled: bool = False) -> dict:
    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(**cluster_kwargs()) as cluster, Client(cluster) as client:
        client.submit(inc, 1).result()
        t0 = time.perf_counter()
        batches = [range(lo, min(lo + BATCH, n)) for lo in range(0, n, BATCH)]
        futs = client.map(inc_batch_pickled if pickled else inc_batch, batches, pure=False)
        total = 0
        for fut, values in as_completed(futs, with_results=True):
            for v in (pickle.loads(values) if pickled else values):
                total += v
            fut.release()
        del futs
        wall = time.perf_counter() - t0
    assert total == n * (n + 1) // 2, total
    return {"wall": wall}


ROWS = {"plain loop": ("plain", run_plain),
        "daskflow as_completed": ("as_completed", lambda n: run_daskflow(n, "as_completed")),
        "daskflow iterate": ("iterate", lambda n: run_daskflow(n, "iterate")),
        "daskflow iter_chunks": ("iter_chunks", lambda n: run_daskflow(n, "iter_chunks")),
        "daskflow reduce": ("reduce", lambda n: run_daskflow(n, "reduce")),
        "daskflow stream iter_chunks": ("stream_iter_chunks", lambda n: run_daskflow(n, "stream_iter_chunks")),
        "daskflow stream reduce": ("stream_reduce", lambda n: run_daskflow(n, "stream_reduce")),
        "raw Dask batches, lists": ("raw", run_raw),
        "raw Dask batches, bytes": ("raw_bytes", lambda n: run_raw(n, pickled=True))}


def child(mode: str, n: int) -> None:
    home = os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="daskflow-bench-stream-")
    fn = next(f for m, f in ROWS.values() if m == mode)
    parts = RssParts()
    try:
        out = fn(n)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # a run store of 10^8 runs is ~0.5 GB
    out["rss"] = peak_rss_mib()
    out.update(parts.close())
    print(json.dumps(out))


def profile(n: int) -> None:
    """Where the client's memory is at the peak of an as_completed stream (tracemalloc, top lines)."""
    import tracemalloc

    from daskflow import as_completed, flow, task
    from daskflow.runners import DaskTaskRunner

    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="daskflow-bench-stream-")
    t_inc = task(inc)

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=cluster_kwargs()))
    def stream() -> None:
        t_inc.map([0, 1], chunksize=1).result()
        tracemalloc.start()
        futs = t_inc.map(range(n))
        snap_submitted = tracemalloc.take_snapshot()
        for i, f in enumerate(as_completed(futs)):
            f.result()
            if i == n * 3 // 4:
                snap = tracemalloc.take_snapshot()
        for title, s in (("after .map()", snap_submitted), ("3/4 consumed", snap)):
            stats = s.statistics("lineno")
            print(f"\n== {title}: {sum(x.size for x in stats) / 2**20:.0f} MiB traced")
            for stat in stats[:12]:
                print(f"{stat.size / 2**20:8.1f} MiB {stat.count:>10} blocks  {stat.traceback}")

    stream()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--rows", help="comma-separated: plain,as_completed,iterate,iter_chunks,reduce,stream_iter_chunks,stream_reduce,raw,raw_bytes")
    parser.add_argument("--child")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", help="also write the medians to this file")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n)
    if args.profile:
        return profile(args.n)
    wanted = args.rows.split(",") if args.rows else [m for m, _ in ROWS.values() if m != "raw" or args.n <= 10**6]
    print(f"N = {args.n:,}; medians of {args.reps} run(s), each in a fresh subprocess")
    medians: dict = {"n": args.n, "rows": {}}
    for name, (mode, _) in ROWS.items():
        if mode not in wanted:
            continue
        runs = []
        for _ in range(args.reps):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "-n", str(args.n)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-3000:]}", flush=True)
                break
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if runs:
            wall = statistics.median(r["wall"] for r in runs)
            rss = statistics.median(r["rss"] for r in runs)
            anon = statistics.median(r.get("anon_at_peak", 0) for r in runs)
            filed = statistics.median(r.get("file_at_peak", 0) for r in runs)
            cpu = statistics.median(r.get("cpu", float("nan")) for r in runs)
            print(f"{name:28s} wall {wall:7.2f} s ({wall / args.n * 1e6:.2f} µs/elem, client process CPU "
                  f"{cpu / args.n * 1e6:.2f} µs/elem)   "
                  f"client peak RSS {rss:6.0f} MiB (at the peak sample: anonymous {anon:.0f}, "
                  f"file-backed {filed:.0f})", flush=True)
            medians["rows"][name] = {"wall_s": wall, "rss_mib": rss, "anon_mib": anon, "file_mib": filed,
                                     "cpu_us_per_elem": cpu / args.n * 1e6}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(medians, f, indent=2)


if __name__ == "__main__":
    main()
