"""Sequential flows on the default runner: a fully cached rerun, and what a flow's cluster costs.

    python benchmarks/bench_rerun.py               # N = 10^5, medians of 5
    python benchmarks/bench_rerun.py -n 10000 --reps 3

Everything runs in one process, as a script calling several flows (or a notebook) does.
Flows have no ``task_runner``: the default one, whose embedded LocalCluster (2 workers x 1
thread) sequential flows share. Rows:

- ``cold``: the first flow of the process (starts the cluster; every body runs);
- ``rerun one step``: ``sq.map(range(N))``, every run in the cache (INPUTS);
- ``rerun two steps``: ``inc.map(sq.map(range(N)))``, the second step taking the first
  step's futures, every run in the cache;
- the same two reruns on ``ThreadPoolTaskRunner`` (what the README compared against);
- ``raw Dask``: ``client.gather(client.map(f, range(N // 10)))`` on the same cluster,
  a tenth of N (the cost of executing instead of reading the cache), in the same run.

Ratios are against the thread runner's rerun of the same pipeline, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from bench_map import median_time  # benchmarks/ is on the path, as a script or as a section


def square(x):
    return x * x


def plus_one(x):
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-rerun-")
    os.environ.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    import dask.config

    dask.config.set({"daskflow.local-cluster.n-workers": 2, "daskflow.local-cluster.threads-per-worker": 1})
    from daskflow import flow, task
    from daskflow.cache import INPUTS
    from daskflow.runners import ThreadPoolTaskRunner, flow_runner

    sq = task(name="bench-rerun-sq", cache_policy=INPUTS)(square)
    inc = task(name="bench-rerun-inc", cache_policy=INPUTS)(plus_one)
    n = args.n

    def one(n):
        return sum(sq.map(range(n)).result())

    def two(n):
        return sum(inc.map(sq.map(range(n))).result())

    flows = {"one step": flow(name="one")(one), "two steps": flow(name="two")(two)}
    threads = {"one step": flow(name="one-t", task_runner=ThreadPoolTaskRunner(max_workers=2))(one),
               "two steps": flow(name="two-t", task_runner=ThreadPoolTaskRunner(max_workers=2))(two)}
    t0 = time.perf_counter()
    expect = flows["two steps"](n)  # fills the cache of both steps
    cold = time.perf_counter() - t0
    out: dict = {"n": n, "reps": args.reps, "cold_s": cold}
    print(f"cold (cluster start + {2 * n} bodies): {cold:.2f} s", flush=True)
    for name in flows:
        assert flows[name](n) == threads[name](n)
        dflt = median_time(lambda: flows[name](n), args.reps)
        thr = median_time(lambda: threads[name](n), args.reps)
        out[f"rerun {name}"] = {"default_runner_s": dflt, "thread_runner_s": thr, "ratio": dflt / thr}
        print(f"fully cached rerun, {name}, N={n}: default runner {dflt:.3f} s, thread runner {thr:.3f} s "
              f"({dflt / thr:.2f}x)", flush=True)
    assert flows["two steps"](n) == expect
    client = flow_runner().client  # the embedded cluster the flows shared
    m = max(1, n // 10)
    raw = median_time(lambda: client.gather(client.map(square, range(m), pure=False)), max(1, args.reps // 2))
    out["raw_dask_s"] = {"n": m, "s": raw}
    print(f"raw Dask client.map of {m} trivial calls on the same cluster: {raw:.2f} s "
          f"(the cached rerun of {n} runs: {out['rerun one step']['default_runner_s'] / raw:.3f}x of it)",
          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    sys.exit(main())
