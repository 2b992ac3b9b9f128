"""Cached reruns: first run vs rerun of an INPUTS-cached ``.map()``, beside joblib.Memory.

    python benchmarks/bench_cache.py                 # 10^4 and 10^5, medians of 3
    python benchmarks/bench_cache.py --sizes 10000   # quicker

One LocalCluster(2 workers x 1 thread) serves every row. Each repetition starts from
an empty cache (a fresh DASKFLOW_HOME), runs the pipeline once (every body runs and
its result is written), then again (every run is a cache hit). Bodies are counted for
real: each one increments a counter on the Dask worker that ran it, read back with
``client.run``. joblib.Memory caches the same function in a plain loop. The store
rows measure put/get throughput of the LMDB result store itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def body(x):
    from distributed import get_worker

    w = get_worker()
    w.daskflow_bench_bodies = getattr(w, "daskflow_bench_bodies", 0) + 1
    return x * x + 1


def plain(x):
    return x * x + 1


def bodies(client) -> int:
    return sum(client.run(lambda dask_worker: getattr(dask_worker, "daskflow_bench_bodies", 0)).values())


def bench_pipeline(cluster, client, n: int, reps: int) -> dict:
    from daskflow import flow, task
    from daskflow.cache import INPUTS
    from daskflow.runners.dask import DaskTaskRunner

    cached = task(name="bench-square", cache_policy=INPUTS)(body)

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def pipeline(n):
        return sum(cached.map(range(n)).result())

    firsts, reruns, rerun_bodies = [], [], []
    for _ in range(reps):
        os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-cache-")
        t0 = time.perf_counter()
        a = pipeline(n)
        firsts.append(time.perf_counter() - t0)
        before = bodies(client)
        t0 = time.perf_counter()
        b = pipeline(n)
        reruns.append(time.perf_counter() - t0)
        rerun_bodies.append(bodies(client) - before)
        assert a == b
    return {"first": statistics.median(firsts), "rerun": statistics.median(reruns),
            "rerun_bodies": max(rerun_bodies)}


def bench_joblib(n: int, reps: int) -> dict:
    import joblib

    firsts, reruns = [], []
    for _ in range(reps):
        mem = joblib.Memory(tempfile.mkdtemp(prefix="bench-joblib-"), verbose=0)
        f = mem.cache(plain)
        t0 = time.perf_counter()
        [f(x) for x in range(n)]
        firsts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        [f(x) for x in range(n)]
        reruns.append(time.perf_counter() - t0)
    return {"first": statistics.median(firsts), "rerun": statistics.median(reruns)}


def bench_store(reps: int) -> list[tuple[str, float, str]]:
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import get_store

    rows = []
    small_put, small_get, big_put, big_get = [], [], [], []
    arr = np.random.default_rng(0).standard_normal(100 * 2**20 // 8)
    for _ in range(reps):
        store = get_store(tempfile.mkdtemp(prefix="bench-store-"))
        keys = [b"k%d" % i for i in range(100_000)]
        t0 = time.perf_counter()
        store.put_many([(k, ser.encode(i, "t-0", None, None, store.secret)) for i, k in enumerate(keys)])
        small_put.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert len(store.load_many(keys)) == len(keys)
        small_get.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.put_many([(b"big", ser.encode(arr, "t-0", None, None, store.secret))])
        big_put.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = store.load_many([b"big"])[0]
        big_get.append(time.perf_counter() - t0)
        assert back.shape == arr.shape
    m = statistics.median
    rows.append(("put 10^5 small entries", m(small_put), f"{1e5 / m(small_put):,.0f} entries/s"))
    rows.append(("get 10^5 small entries", m(small_get), f"{1e5 / m(small_get):,.0f} entries/s"))
    rows.append(("put 100 MB numpy array", m(big_put), f"{100 / m(big_put):,.0f} MB/s"))
    rows.append(("get 100 MB numpy array", m(big_get), f"{100 / m(big_get):,.0f} MB/s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--joblib-max", type=int, default=100_000)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    print(f"LocalCluster(2 workers x 1 thread) started in {time.perf_counter() - t0:.2f} s "
          "(not included below)")
    print(f"medians of {args.reps}\n")
    print(f"{'N':>8} {'first run':>10} {'rerun':>8} {'ratio':>7} {'bodies in rerun':>16} "
          f"{'joblib first':>13} {'joblib rerun':>13}")
    for n in args.sizes:
        r = bench_pipeline(cluster, client, n, args.reps)
        j = bench_joblib(n, args.reps) if n <= args.joblib_max else None
        jf = f"{j['first']:.2f} s" if j else "-"
        jr = f"{j['rerun']:.2f} s" if j else "-"
        print(f"{n:>8} {r['first']:>8.2f} s {r['rerun']:>6.2f} s {r['first'] / r['rerun']:>6.1f}x "
              f"{r['rerun_bodies']:>16} {jf:>13} {jr:>13}", flush=True)
    print()
    for name, seconds, rate in bench_store(args.reps):
        print(f"{name:<26} {seconds:>7.3f} s   {rate}")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
