"""Data that stays in the cluster: a three-stage pipeline of large arrays, daskflow beside raw Dask.

    python benchmarks/bench_data.py                       # 16 and 64 arrays of 50 MB, medians of 3
    python benchmarks/bench_data.py --sizes 16 --mb 20    # smaller
    python benchmarks/bench_data.py --json out.json       # figures as JSON (python -m benchmarks --sections data)

The pipeline, on a LocalCluster(2 workers x 1 thread) started in the measured process
(its scheduler runs there too, as with daskflow's default runner):

- raw Dask: ``a = client.map(make, range(N))``, ``b = client.map(scale, a)``,
  ``c = client.map(total, b)``, ``sum(client.gather(c))``;
- daskflow: ``make.map(range(N))`` → ``scale.map(a)`` → ``total.map(b)`` → ``sum(c.result())``
  inside a ``@flow`` on the same kind of cluster.

``make`` returns an array of ``--mb`` MB, ``scale`` doubles it, ``total`` sums it to a float.
Each repetition of each side runs in a fresh subprocess (peak RSS, ``VmHWM``, is per
process: ``bench_map.peak_rss_mib``), raw and daskflow alternating so both see the same machine; the wall time is the
pipeline's only (the cluster is started and warmed up first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_map import peak_rss_mib  # noqa: E402


def make(i: int, mb: int) -> np.ndarray:
    return np.full(mb * 2**20 // 8, float(i))


def scale(a: np.ndarray) -> np.ndarray:
    return a * 2


def total(b: np.ndarray) -> float:
    return float(b.sum())


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, memory_limit="10GiB")
    return cluster, Client(cluster)


def run_raw(n: int, mb: int) -> float:
    cluster, client = _cluster()
    try:
        client.gather(client.map(total, client.map(make, range(2), mb=1, pure=False), pure=False))  # warm up
        t0 = time.perf_counter()
        a = client.map(make, range(n), mb=mb, pure=False)
        b = client.map(scale, a, pure=False)
        c = client.map(total, b, pure=False)
        value = sum(client.gather(c))
        wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    assert value == sum(2.0 * i * (mb * 2**20 // 8) for i in range(n))
    return wall


def run_daskflow(n: int, mb: int) -> float:
    from daskflow import flow, task, unmapped
    from daskflow.runners import DaskTaskRunner

    cluster, client = _cluster()
    t_make, t_scale, t_total = task(make), task(scale), task(total)

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def pipeline(count: int, size: int) -> float:
        return sum(t_total.map(t_scale.map(t_make.map(range(count), unmapped(size)))).result())

    try:
        pipeline(2, 1)  # warm up
        t0 = time.perf_counter()
        value = pipeline(n, mb)
        wall = time.perf_counter() - t0
    finally:
        from daskflow.runners.clients import close_shared_clients

        close_shared_clients()
        client.close()
        cluster.close()
    assert value == sum(2.0 * i * (mb * 2**20 // 8) for i in range(n))
    return wall


def one(side: str, n: int, mb: int) -> dict:
    """One repetition of one side in this process: wall seconds and peak RSS (MiB)."""
    wall = run_raw(n, mb) if side == "raw" else run_daskflow(n, mb)
    return {"wall_s": wall, "peak_rss_mib": peak_rss_mib()}


def _subprocess(side: str, n: int, mb: int) -> dict:
    env = dict(os.environ)
    env.setdefault("DASKFLOW_HOME", tempfile.mkdtemp(prefix="daskflow-bench-data-"))
    out = subprocess.run([sys.executable, __file__, "--one", side, "--sizes", str(n), "--mb", str(mb)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(sizes: list[int], mb: int, reps: int) -> dict:
    """Medians of ``reps`` alternating repetitions per size: ``{str(n): {raw_*, daskflow_*, ratios}}``."""
    out = {}
    for n in sizes:
        rows: dict[str, list[dict]] = {"raw": [], "daskflow": []}
        for _ in range(reps):
            for side in ("raw", "daskflow"):
                rows[side].append(_subprocess(side, n, mb))
        row = {"arrays": n, "mb": mb}
        for side, got in rows.items():
            row[f"{side}_wall_s"] = statistics.median(r["wall_s"] for r in got)
            row[f"{side}_peak_rss_mib"] = statistics.median(r["peak_rss_mib"] for r in got)
        row["wall_ratio"] = row["daskflow_wall_s"] / row["raw_wall_s"]
        row["rss_over_raw_mib"] = row["daskflow_peak_rss_mib"] - row["raw_peak_rss_mib"]
        out[str(n)] = row
        print(f"data {n} x {mb} MB: raw Dask {row['raw_wall_s']:.2f} s, {row['raw_peak_rss_mib']:.0f} MiB; "
              f"daskflow {row['daskflow_wall_s']:.2f} s ({row['wall_ratio']:.2f}x), "
              f"{row['daskflow_peak_rss_mib']:.0f} MiB (+{row['rss_over_raw_mib']:.0f})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--one", choices=["raw", "daskflow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.sizes[0], args.mb)))
        return
    result = measure(args.sizes, args.mb, args.reps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
