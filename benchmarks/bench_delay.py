"""Background runs: enqueue cost of ``.delay()`` and end-to-end throughput, beside raw Dask.

    python benchmarks/bench_delay.py              # N = 10^4, medians of 3
    python benchmarks/bench_delay.py -n 2000      # quicker

Starts one ``daskflow server`` and two ``daskflow worker`` subprocesses (1 thread each)
on 127.0.0.1 with a temporary DASKFLOW_HOME, then measures in this process:

- enqueue: wall time of N ``inc.delay(i)`` calls / N (the calls return futures at once);
- daskflow end to end: from the first ``.delay()`` until every result is read
  (``BackgroundFutures.result()``), in runs/s;
- raw Dask on the same cluster: ``client.submit(inc_raw, i, resources=...)`` +
  ``fire_and_forget`` per call (enqueue), and until all N tasks are done (end to end;
  the futures are kept only to wait for them; no result is fetched).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def inc_raw(x):
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="also write the medians to this file (python -m benchmarks reads it)")
    args = parser.parse_args()
    n = args.n

    home = pathlib.Path(tempfile.mkdtemp()) / "home"
    os.environ["DASKFLOW_HOME"] = str(home)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from background_procs import TESTS, start_server, start_worker  # noqa: F401

    server, address = start_server(home)
    workers = [start_worker(home, address, "bench_delay_tasks:inc")[0] for _ in range(2)]
    os.environ["DASKFLOW_SCHEDULER_ADDRESS"] = address
    from bench_delay_tasks import inc
    from distributed import fire_and_forget
    from distributed.client import _wait

    from daskflow.background.client import BackgroundFutures, disconnect, server_link

    try:
        client = server_link(address).client
        inc.delay(0).result(timeout=60)  # warm: connection, plugin check, worker imports
        rows = {"daskflow enqueue": [], "daskflow e2e": [], "raw enqueue": [], "raw e2e": []}
        for rep in range(args.reps):
            t0 = time.perf_counter()
            futures = BackgroundFutures(inc.delay(i) for i in range(n))
            t1 = time.perf_counter()
            values = futures.result(timeout=600)
            t2 = time.perf_counter()
            assert values == [i + 1 for i in range(n)]
            rows["daskflow enqueue"].append((t1 - t0) / n)
            rows["daskflow e2e"].append(n / (t2 - t0))

            # raw Dask: same cluster, same resource routing; futures kept only to observe completion
            t0 = time.perf_counter()
            raw = []
            for i in range(n):
                f = client.submit(inc_raw, i, key=f"inc_raw-{rep}-{i}", resources={inc.task_key: 1}, pure=False)
                fire_and_forget(f)
                raw.append(f)
            t1 = time.perf_counter()
            client.sync(_wait, raw, timeout=600)
            t2 = time.perf_counter()
            del raw
            rows["raw enqueue"].append((t1 - t0) / n)
            rows["raw e2e"].append(n / (t2 - t0))
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.6g}" for k, v in rows.items()), flush=True)

        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"\nN = {n}, one server + 2 task workers x 1 thread, medians of {args.reps}")
        print(f"{'':28}{'daskflow .delay()':>20}{'raw Dask submit+f&f':>22}")
        print(f"{'enqueue per call':28}{med['daskflow enqueue'] * 1e6:>17.1f} µs{med['raw enqueue'] * 1e6:>19.1f} µs")
        print(f"{'end-to-end throughput':28}{med['daskflow e2e']:>14.0f} runs/s{med['raw e2e']:>16.0f} runs/s")
        print(f"ratio daskflow/raw: enqueue {med['daskflow enqueue'] / med['raw enqueue']:.2f}x cost, "
              f"throughput {med['daskflow e2e'] / med['raw e2e']:.2f}x")
        if args.json:
            import json

            with open(args.json, "w") as f:
                json.dump({"n": n, "reps": args.reps, "daskflow_enqueue_s": med["daskflow enqueue"],
                           "raw_enqueue_s": med["raw enqueue"], "daskflow_runs_per_s": med["daskflow e2e"],
                           "raw_runs_per_s": med["raw e2e"]}, f)
    finally:
        disconnect(address)
        for w in workers:
            w.stop()
        server.stop()


if __name__ == "__main__":
    main()
