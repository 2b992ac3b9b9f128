"""``GET /metrics`` over a big run store: a scrape reads the writer's counters, not the runs.

    python benchmarks/bench_metrics.py                    # 10^6 runs in chunks of 1,000 and of 10
    python benchmarks/bench_metrics.py --runs 100000 --reps 5
    python benchmarks/bench_metrics.py --writer-cost      # the writer with and without counters

Builds a run store in a temporary home through the run store's writer path
(``RunStore.apply``: every chunk recorded Pending, then final, so the counters are
kept as a flow's writer keeps them), then times the scrape (``ui.metrics.render``,
what ``/metrics`` answers, without HTTP) as the median of ``--reps``, beside one full
count of the same store by a scan (what a scrape would cost without the counters).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from array import array


def build(home: str, runs: int, chunk: int) -> float:
    """Record ``runs`` runs in chunks of ``chunk`` over 4 tasks; the seconds the writer took."""
    from daskflow.ids import new_run_base
    from daskflow.store.runs import ChunkUpdate, open_run_store

    store = open_run_store(home)
    codes = bytes([0] * (chunk - 1) + [2])  # one failure a chunk
    spent = 0.0
    batch_live, batch_final = [], []
    now = time.time()
    for c in range(runs // chunk):
        base = new_run_base()
        task = f"task{c % 4}"
        batch_live.append(ChunkUpdate(base, 0, {"task": task, "n": chunk, "submitted": now,
                                                "live": ["PENDING", "Pending", now, ""]}, new=True))
        ends = array("d", [now + 0.001 * (i + 1) for i in range(chunk)]).tobytes()
        batch_final.append(ChunkUpdate(base, 0, {"codes": codes, "ends": ends, "started": now, "live": None}))
        if len(batch_live) >= 1000:  # a writer batch: ~100 ms of a busy flow
            t0 = time.perf_counter()
            store.apply(batch_live)
            store.apply(batch_final)
            spent += time.perf_counter() - t0
            batch_live, batch_final = [], []
    if batch_live:
        t0 = time.perf_counter()
        store.apply(batch_live)
        store.apply(batch_final)
        spent += time.perf_counter() - t0
    return spent


def scan_count(home: str) -> float:
    """Seconds to count the runs by state by reading every chunk (no counters)."""
    from daskflow.store.rows import chunk_counts
    from daskflow.store.runs import open_run_store, unpack

    store = open_run_store(home)
    t0 = time.perf_counter()
    totals: dict = {}
    for _, raw in store.env.read(lambda txn: list(txn.cursor(db=store.dbs["chunks"]))):
        for name, n in chunk_counts(unpack(raw)).items():
            totals[name] = totals.get(name, 0) + n
    return time.perf_counter() - t0


def writer_cost(runs: int, chunk: int, reps: int) -> None:
    """The writer's time for ``runs`` runs in chunks of ``chunk``, counters kept vs not, alternating.

    "Not" replaces ``store.metrics.change`` by a no-op for the run: the cost of this
    benchmark's subject alone, everything else equal.
    """
    from daskflow.store import metrics

    kept = metrics.change
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps):
        for on in ((True, False) if rep % 2 == 0 else (False, True)):
            metrics.change = kept if on else (lambda *a, **k: None)
            with tempfile.TemporaryDirectory() as tmp:
                home = os.path.join(tmp, "home")
                os.mkdir(home, 0o700)
                times[on].append(build(home, runs, chunk))
    metrics.change = kept
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"writer, {runs:,} runs in chunks of {chunk}: counters {on:.2f} s | none {off:.2f} s | "
          f"{1e6 * (on - off) / (runs // chunk):.1f} µs a chunk (medians of {reps})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1000, 10])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--writer-cost", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.writer_cost:
        print(f"load average {os.getloadavg()[0]:.2f} (2 cores)")
        for chunk in args.chunks:
            writer_cost(min(args.runs, 100_000 * chunk // 10), chunk, args.reps)
        return
    from daskflow.ui.metrics import render

    print(f"load average {os.getloadavg()[0]:.2f} (2 cores)")
    print(f"{'runs':>9} {'chunk':>6} {'writer s':>9} {'scrape ms (median)':>19} {'scan ms':>9}")
    for chunk in args.chunks:
        with tempfile.TemporaryDirectory() as tmp:
            home = os.path.join(tmp, "home")
            os.mkdir(home, 0o700)
            wrote = build(home, args.runs, chunk)
            body = render(home)
            total = sum(float(line.split()[-1]) for line in body.decode().splitlines()
                        if line.startswith("daskflow_task_runs_total"))
            assert total == args.runs, (total, args.runs)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                render(home)
                times.append(time.perf_counter() - t0)
            print(f"{args.runs:>9} {chunk:>6} {wrote:>9.2f} {1000 * statistics.median(times):>19.2f} "
                  f"{1000 * scan_count(home):>9.0f}")


if __name__ == "__main__":
    main()
