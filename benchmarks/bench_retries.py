"""Retry delays in a chunked map: runs awaiting their retry must not stall their chunk.

    python benchmarks/bench_retries.py                # 20,000 runs, medians of 3
    python benchmarks/bench_retries.py -n 2000 --reps 1

One LocalCluster(2 workers x 1 thread) serves every row. A trivial task over N elements,
default chunks; 5% of the runs fail on their first attempt (``retries=3``). Rows, each a
median of ``--reps`` repetitions, alternating in the same run:

- daskflow, ``retry_delay_seconds=0``;
- daskflow, ``retry_delay_seconds=1`` (the target: wall <= the delay-0 wall + 2 x the delay;
  the retries go back through the scheduler, to any worker, as their delays pass);
- raw Dask: ``client.gather(client.map(f, range(M), retries=3))`` with the same failures
  (Dask retries at once: it has no retry delay), M = min(N, 2,000) (a Dask task per run is
  slow), compared per run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

def flaky(i, run, marks):
    """Fails once per (repetition, element) for 5% of the elements, on whichever worker.

    The memory of failures is a marker file per (repetition, element) in ``marks`` (one
    host, one folder): a retry fails no second time on another worker, since retries may run
    on any worker.
    """
    if i % 20 == 7:
        path = os.path.join(marks, f"{run}-{i}")
        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError(f"transient failure of {i}")
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import tempfile

    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-retries-")
    marks = tempfile.mkdtemp(prefix="bench-retries-marks-")
    from distributed import Client, LocalCluster

    from daskflow import flow, task, unmapped
    from daskflow.runners.clients import close_shared_clients
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    n = args.n
    m = min(n, 2_000)
    tasks = {d: task(name="flaky", retries=3, retry_delay_seconds=d)(flaky) for d in (0.0, args.delay)}

    @flow(task_runner=runner)
    def pipeline(delay: float, run: int):
        return tasks[delay].map(range(n), run=run, marks=unmapped(marks)).result()

    walls: dict[str, list[float]] = {"delay 0": [], f"delay {args.delay:g}": [], "raw Dask": []}
    run = 0
    try:
        pipeline(0.0, -1)  # warm: connection, worker imports
        for _ in range(args.reps):
            for name, delay in (("delay 0", 0.0), (f"delay {args.delay:g}", args.delay)):
                run += 1
                t0 = time.perf_counter()
                assert pipeline(delay, run) == list(range(n))
                walls[name].append(time.perf_counter() - t0)
            run += 1
            t0 = time.perf_counter()
            assert client.gather(client.map(flaky, range(m), run=run, marks=marks, retries=3, pure=False)) == list(range(m))
            walls["raw Dask"].append((time.perf_counter() - t0) * n / m)  # scaled to N runs
            print("  " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items()), flush=True)
    finally:
        close_shared_clients()
        client.close()
        cluster.close()
    med = {k: statistics.median(v) for k, v in walls.items()}
    zero, delayed, raw = med["delay 0"], med[f"delay {args.delay:g}"], med["raw Dask"]
    print(f"N={n}, 5% fail once, retries=3, LocalCluster(2x1), medians of {args.reps}: "
          f"daskflow delay 0 {zero:.2f} s ({zero / raw:.2f}x raw Dask), delay {args.delay:g}s {delayed:.2f} s "
          f"({delayed / raw:.2f}x raw), raw Dask {raw:.2f} s (scaled from {m} runs); delay cost {(delayed - zero) / args.delay:.2f} x the delay "
          f"(target <= 2)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "reps": args.reps, "delay": args.delay, "walls": walls, "medians": med,
                       "delay_cost_in_delays": (delayed - zero) / args.delay}, f)


if __name__ == "__main__":
    sys.exit(main())
