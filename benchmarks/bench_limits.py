"""Tag concurrency limits: an untagged map must not pay for them; what a limited run costs.

    python benchmarks/bench_limits.py                 # 10^5 elements, medians of 5
    python benchmarks/bench_limits.py -n 20000 --reps 3

One LocalCluster(2 workers x 1 thread) serves every row; rows alternate within each
repetition (so load drifts hit all of them), each a median of ``--reps``:

- raw Dask: ``client.gather(client.map(batch, starts, ends))``, one Dask task per 10,000
  elements (each calls the function over ``range(lo, hi)``: raw Dask's cheapest way to run
  N trivial calls and get their values back);
- daskflow ``.map()`` of an untagged task (the hot path: one ``task.tags`` test per chunk);
- daskflow ``.map()`` of a task tagged ``other``, a tag with no limit while the home
  defines one (``db``): the per-chunk check reads the definitions;
- daskflow ``.map()`` of a task tagged ``db`` (limit 1000: never waits), on ``--limited``
  elements: every run takes and gives back a slot on the scheduler (two round trips),
  reported per run.

- daskflow ``.map()`` of the untagged task on ``ThreadPoolTaskRunner(1)``: everything runs in
  this process, so its CPU time (``time.process_time``) is printed too: a figure the
  machine's load moves much less than wall time.

Ratios to raw Dask are printed beside the times. ``--tree PATH`` imports daskflow from
PATH instead (to run the same rows on another checkout, e.g. main, in the same window).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def trivial(x):
    return x + 1


def batch(lo, hi):
    return [trivial(x) for x in range(lo, hi)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--limited", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tree", default=None, help="import daskflow from this checkout")
    parser.add_argument("--json", default=None)
    parser.add_argument("--ab", action="store_true",
                        help="only the untagged rows (for quick A/B runs of two checkouts with --tree); no ratios")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-limits-")
    import json as _json

    with open(os.path.join(os.environ["DASKFLOW_HOME"], "limits.json"), "w") as f:
        _json.dump({"db": {"limit": 1000, "per_second": None}}, f)
    from distributed import Client, LocalCluster

    import daskflow
    from daskflow import flow, task
    from daskflow.runners.clients import close_shared_clients
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster, set_as_default=False)
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    plain, other, limited = (task(trivial, name="trivial"), task(trivial, name="trivial_other", tags={"other"}),
                             task(trivial, name="trivial_db", tags={"db"}))
    xs = list(range(args.n))
    starts = list(range(0, args.n, 10000))
    ends = [min(lo + 10000, args.n) for lo in starts]

    def in_flow(t, items):
        @flow(task_runner=runner)
        def f():
            return t.map(items).result()
        return f

    from daskflow.runners import ThreadPoolTaskRunner

    @flow(task_runner=ThreadPoolTaskRunner(1))
    def on_threads():
        return plain.map(xs).result()

    rows = {"raw Dask (batches of 10000)": lambda: client.gather(client.map(batch, starts, ends, pure=False)),
            "daskflow untagged, threads runner": on_threads,
            "daskflow untagged": in_flow(plain, xs),
            "daskflow tagged, no limit on the tag": in_flow(other, xs)}
    if hasattr(daskflow, "concurrency"):
        rows[f"daskflow tagged db (limit 1000), {args.limited} runs"] = in_flow(limited, xs[:args.limited])
    if args.ab:
        rows = {k: v for k, v in rows.items() if "untagged" in k}
    for fn in rows.values():  # warm up: workers import, first graph
        fn()
    times: dict[str, list[float]] = {name: [] for name in rows}
    cpu: list[float] = []
    for _ in range(args.reps):
        for name, fn in rows.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            if fn is on_threads:
                cpu.append(time.process_time() - c0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    raw = med.get("raw Dask (batches of 10000)", float("nan"))
    print(f"N = {args.n}, medians of {args.reps}, load {os.getloadavg()[0]:.1f}, daskflow from "
          f"{os.path.dirname(os.path.dirname(daskflow.__file__))}")
    for name, m in med.items():
        per = f"{m / args.limited * 1e3:.2f} ms/run" if "limit 1000" in name else f"{m / args.n * 1e6:.2f} µs/elem"
        ratio = f"   x{m / raw:5.2f} raw Dask" if raw == raw else ""  # nan (--ab): no raw Dask row
        print(f"  {name:<44} {m:8.3f} s   {per:>14}{ratio}")
    print(f"  {'threads runner, CPU time of this process':<44} {statistics.median(cpu):8.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "reps": args.reps, "medians": med}, f, indent=1)
    client.close()
    close_shared_clients()
    cluster.close()


if __name__ == "__main__":
    main()
