"""Fan-out cost: plain loop vs raw Dask vs joblib vs daskflow ``.map()``, in one run.

    python benchmarks/bench_map.py            # every row, medians of 3
    python benchmarks/bench_map.py --quick    # N <= 10^4 only
    python benchmarks/bench_map.py --tracking # 10^5 with daskflow.tracking on vs off; 10^6 RSS, tracking on

All Dask rows share one LocalCluster(2 workers x 1 thread). Raw ``client.map`` costs
~2 ms per element here, so it is measured up to 10^4 and extrapolated linearly beyond
(marked "~"); pass ``--raw-max 100000`` to measure it at 10^5 too (~4 minutes).
The 10^6 row also runs in a fresh subprocess that reports the client's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def trivial(x):
    return x + 1


def heavy(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((300, 300))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        a = np.tanh(a @ a.T / 300)
    return float(a.sum())


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` of /proc/self/status, the high-water mark of
    its own memory. Not ``ru_maxrss``: Linux carries the parent's over ``exec``, so a child of a
    big process (a benchmark's driver, pytest) reports at least the parent's RSS."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_child(n: int) -> None:
    """Run one 10^n map on a fresh LocalCluster; print the client's peak RSS in MiB."""
    from daskflow import flow, task
    from daskflow.runners import DaskTaskRunner

    inc = task(trivial)

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1}))
    def run():
        return len(inc.map(range(n)).result())

    assert run() == n
    from daskflow.engine.tracking import tracker
    from daskflow.store.runs import open_run_store

    assert tracker.flush(120)
    rss = peak_rss_mib()  # before reading the store back
    recorded = open_run_store().count()
    print(f"recorded {recorded} task runs", file=sys.stderr)
    assert recorded == n, recorded
    print(rss)


def tracking_row(runner_call, inc, n: int, reps: int) -> dict:
    """The same .map() with ``daskflow.tracking`` on and off, interleaved, medians of ``reps``."""
    import dask.config

    xs = list(range(n))
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(reps):
        for flag in (True, False):
            with dask.config.set({"daskflow.tracking": flag}):
                times[flag].append(median_time(runner_call(lambda: inc.map(xs).result()), 1))
    from daskflow.engine.tracking import tracker

    tracker.flush(60)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"N={n} tracking on: {fmt(on, n)} | tracking off: {fmt(off, n)} | on/off = {on / off:.3f}", flush=True)
    return {"N": f"{n:,} tracking on/off", "on": on, "off": off}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--raw-max", type=int, default=10_000)
    parser.add_argument("--rss-child", type=int)
    parser.add_argument("--tracking", action="store_true", help="only the tracking on/off row and the RSS child")
    args = parser.parse_args()
    if not os.environ.get("DASKFLOW_HOME"):  # keep benchmark runs out of the user's run store
        os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="daskflow-bench-")
    if args.rss_child:
        os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="daskflow-bench-rss-")  # count only its runs
        return rss_child(args.rss_child)

    import dask.config
    from distributed import Client, LocalCluster
    from joblib import Parallel, delayed

    from daskflow import task
    from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
    from daskflow.runners import ThreadPoolTaskRunner
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    dask_runner = DaskTaskRunner(address=cluster.scheduler_address)
    threads = ThreadPoolTaskRunner(2)
    inc, heavy_t = task(trivial), task(heavy)

    def in_runner(runner, fn):
        def call():
            token = flow_run_ctx.set(FlowRunContext(None, "bench", runner, {}))  # type: ignore[arg-type]
            try:
                return fn()
            finally:
                flow_run_ctx.reset(token)
        return call

    if args.tracking:
        inc.map([0, 1], chunksize=1)
        tracking_row(lambda fn: in_runner(dask_runner, fn), inc, 100_000, args.reps)
        from daskflow.runners.clients import close_shared_clients

        close_shared_clients()
        client.close()
        cluster.close()
        out = subprocess.run([sys.executable, __file__, "--rss-child", "1000000"], capture_output=True, text=True)
        print(out.stderr.strip().splitlines()[-1])
        print(f"10^6-element map, tracking on: client peak RSS {float(out.stdout.strip().splitlines()[-1]):.0f} MiB")
        return

    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    rows = []
    for n in sizes:
        xs = list(range(n))
        row = {"N": n}
        row["plain loop"] = median_time(lambda: [trivial(x) for x in xs], args.reps)
        if n <= args.raw_max:
            row["raw client.map"] = median_time(lambda: client.gather(client.map(trivial, xs, pure=False)),
                                                args.reps if n <= 10_000 else 1)
        else:
            row["raw client.map"] = ("~", rows[-1]["raw client.map"][1] * n / rows[-1]["N"]
                                     if isinstance(rows[-1]["raw client.map"], tuple)
                                     else rows[-1]["raw client.map"] * n / rows[-1]["N"])
        row["joblib n_jobs=2"] = median_time(lambda: Parallel(n_jobs=2)(delayed(trivial)(x) for x in xs), args.reps)
        inc.map([0, 1], chunksize=1)  # warm: not counted
        row["daskflow .map() Dask"] = median_time(in_runner(dask_runner, lambda: inc.map(xs).result()), args.reps)
        if n <= 10_000:
            row["daskflow chunksize=1"] = median_time(
                in_runner(dask_runner, lambda: inc.map(xs, chunksize=1).result()), args.reps)
        row["daskflow .map() threads"] = median_time(in_runner(threads, lambda: inc.map(xs).result()), args.reps)
        rows.append(row)
        print_row(row)

    if 100_000 in sizes:
        tracking_row(lambda fn: in_runner(dask_runner, fn), inc, 100_000, args.reps)

    seeds = list(range(32))
    heavy_row = {"N": "32 x 0.2 s"}
    heavy_row["plain loop"] = median_time(lambda: [heavy(s) for s in seeds], 1)
    heavy_row["raw client.map"] = median_time(lambda: client.gather(client.map(heavy, seeds, pure=False)), args.reps)
    heavy_row["joblib n_jobs=2"] = median_time(lambda: Parallel(n_jobs=2)(delayed(heavy)(s) for s in seeds), args.reps)
    heavy_row["daskflow .map() Dask"] = median_time(in_runner(dask_runner, lambda: heavy_t.map(seeds).result()),
                                                    args.reps)
    rows.append(heavy_row)
    print_row(heavy_row)

    # direct call overhead: t(x) vs x + 1
    n = 20_000
    plain = median_time(lambda: [trivial(1) for _ in range(n)], args.reps) / n
    on, off = [], []
    for _ in range(max(5, args.reps)):  # tracking on and off interleaved
        on.append(median_time(lambda: [inc(1) for _ in range(n // 5)], 1) / (n // 5))
        with dask.config.set({"daskflow.tracking": False}):
            off.append(median_time(lambda: [inc(1) for _ in range(n // 5)], 1) / (n // 5))
    direct, untracked = statistics.median(on), statistics.median(off)
    print(f"\ndirect call t(x): {direct * 1e6:.1f} µs vs plain function {plain * 1e6:.2f} µs "
          f"(+{(direct - plain) * 1e6:.1f} µs); tracking off {untracked * 1e6:.1f} µs")

    from daskflow.runners.clients import close_shared_clients

    close_shared_clients()
    client.close()
    cluster.close()
    if not args.quick:
        out = subprocess.run([sys.executable, __file__, "--rss-child", "1000000"], capture_output=True, text=True)
        print(f"10^6-element map: client peak RSS {float(out.stdout.strip().splitlines()[-1]):.0f} MiB")
    print_markdown(rows)


def fmt(v, n):
    if isinstance(v, tuple):
        return f"~{v[1]:.2f} s" if v[1] >= 0.1 else f"~{v[1] * 1e3:.0f} ms"
    return f"{v:.2f} s" if v >= 0.1 else f"{v * 1e3:.1f} ms"


def per_elem(v, n):
    secs = v[1] if isinstance(v, tuple) else v
    return secs / n * 1e6


def print_row(row):
    n = row["N"]
    count = n if isinstance(n, int) else 32
    raw = row.get("raw client.map")
    parts = [f"N={n}"]
    for k, v in row.items():
        if k == "N":
            continue
        ratio = ""
        if raw is not None and k.startswith("daskflow"):
            ratio = f" ({per_elem(raw, count) / per_elem(v, count):.1f}x faster than raw)"
        parts.append(f"{k}: {fmt(v, count)} = {per_elem(v, count):.2f} µs/elem{ratio}")
    print(" | ".join(parts), flush=True)


def print_markdown(rows):
    cols = [k for k in rows[0] if k != "N"]
    print("\n| N | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        count = row["N"] if isinstance(row["N"], int) else 32
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("—" if v is None else f"{fmt(v, count)} ({per_elem(v, count):.2f} µs)")
        n = f"{row['N']:,}" if isinstance(row["N"], int) else row["N"]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
