"""What measuring CPU and memory costs a fan-out: ``daskflow.resources`` on vs off, alternating.

    python benchmarks/bench_resources.py              # medians of 5, on/off interleaved
    python benchmarks/bench_resources.py --reps 9
    python benchmarks/bench_resources.py --direct-only   # the direct-call rows alone

One LocalCluster (2 workers x 1 thread). The workers' ``daskflow.resources`` is switched
between repetitions (``client.run``), so on and off share the cluster, the load and the
warm caches. Rows: the trivial fan-out of ``bench_map.py`` (10^5 elements, adaptive
chunks; the per-chunk psutil samples), the same on the thread runner (the tight loop's
per-run check, without a cluster's noise), the same function one run per Dask task
(``chunksize=1``, the worst case for a per-chunk cost) beside raw ``client.map``, and
200 runs of 10 ms of CPU (each measured alone); first, the tight loop alone in this
process (thread CPU time of one chunk of 10^5 runs), and direct calls ``t(x)`` inside a
flow (per-call cost, on vs off; also the measurement alone, ``call_started``+``call_ended``).
Ratios on/off; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

from bench_map import median_time, trivial  # noqa: E402


def busy(x):
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.01:
        pass
    return x


def switch(flag: bool) -> None:
    import dask.config

    dask.config.set({"daskflow.resources": flag})


def loop_cost(n: int, reps: int) -> None:
    """The tight loop alone, in this process: thread CPU time of one ``run_chunk`` of ``n``
    trivial runs, resources on vs off (CPU time: the load on the machine barely moves it)."""
    import dask.config

    from daskflow import task
    from daskflow.engine.core.envelope import ChunkSpec
    from daskflow.engine.core.inputs import MAPPED, Column
    from daskflow.engine.worker.run import run_chunk
    from daskflow.ids import new_run_base

    inc, xs = task(trivial), list(range(n))
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps):
        for flag in ((True, False) if rep % 2 == 0 else (False, True)):
            with dask.config.set({"daskflow.resources": flag, "daskflow.tracking": False}):
                spec = ChunkSpec(inc, new_run_base(), 0, n, [Column(MAPPED, xs)])
                t0 = time.thread_time()
                res = run_chunk(spec)
                times[flag].append(time.thread_time() - t0)
                assert res.codes.count(0) == n
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{'run_chunk of ' + format(n, ',') + ' trivial runs (CPU)':42} on {on:7.4f} s | off {off:7.4f} s | "
          f"on/off = {on / off:.3f} ({1e9 * (on - off) / n:.0f} ns a run)", flush=True)


def direct_cost(n: int, reps: int) -> None:
    """Direct calls ``t(x)`` of a trivial task inside a flow run, resources on vs off,
    interleaved: the per-call cost (thread CPU time per call, the tracker on as users have it)."""
    import dask.config

    from daskflow import task
    from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
    from daskflow.engine.tracking import tracker
    from daskflow.engine.worker import resources
    from daskflow.runners import ThreadPoolTaskRunner

    inc = task(trivial)
    token = flow_run_ctx.set(FlowRunContext(None, "bench", ThreadPoolTaskRunner(1), {}))  # type: ignore[arg-type]
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for rep in range(reps):
            for flag in ((True, False) if rep % 2 == 0 else (False, True)):
                with dask.config.set({"daskflow.resources": flag}):
                    t0 = time.thread_time()
                    for i in range(n):
                        inc(i)
                    times[flag].append((time.thread_time() - t0) / n)
                tracker.flush(60)
    finally:
        flow_run_ctx.reset(token)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{'direct call t(x) in a flow (CPU per call)':42} on {1e6 * on:6.2f} us | off {1e6 * off:6.2f} us | "
          f"on/off = {on / off:.3f} ({1e9 * (on - off):.0f} ns a call)", flush=True)
    alone = []
    for _ in range(reps):
        t0 = time.thread_time()
        for _ in range(n):
            now = time.time()  # as a direct call has it: its start and end times
            resources.call_ended(resources.call_started(now), now, 0.0)  # type: ignore[arg-type]
        alone.append((time.thread_time() - t0) / n)
    print(f"{'  the measurement alone (start + end)':42} {1e9 * statistics.median(alone):.0f} ns a call", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n-single", type=int, default=2_000)
    parser.add_argument("--n-direct", type=int, default=20_000)
    parser.add_argument("--direct-only", action="store_true", help="only the direct-call rows (no cluster)")
    args = parser.parse_args()
    os.environ.setdefault("DASKFLOW_HOME", tempfile.mkdtemp(prefix="daskflow-bench-"))
    print(f"load average at start {os.getloadavg()[0]:.2f} (2 cores shared)")
    direct_cost(args.n_direct, max(args.reps, 9))
    if args.direct_only:
        return
    from distributed import Client, LocalCluster

    from daskflow import task
    from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
    from daskflow.engine.tracking import tracker
    from daskflow.runners import ThreadPoolTaskRunner
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    inc, heavy = task(trivial), task(busy)

    threads = ThreadPoolTaskRunner(1)

    def timed(fn, on=runner):
        def call():
            token = flow_run_ctx.set(FlowRunContext(None, "bench", on, {}))  # type: ignore[arg-type]
            try:
                return fn()
            finally:
                flow_run_ctx.reset(token)
        return median_time(call, 1)

    rows = {
        f"trivial .map(), N={args.n:,}": lambda: inc.map(range(args.n)).result(),
        f"same, thread runner (1 thread), N={args.n:,}": (lambda: inc.map(range(args.n)).result(), threads),
        f"trivial .map(chunksize=1), N={args.n_single:,}": lambda: inc.map(range(args.n_single), chunksize=1).result(),
        "200 runs of 10 ms CPU": lambda: heavy.map(range(200)).result(),
    }
    timed(lambda: inc.map(range(1000)).result())  # warm up: the cluster, the chunk-size model
    timed(lambda: heavy.map(range(20)).result())
    loop_cost(args.n, max(args.reps, 9))
    for name, call in rows.items():
        call, on_runner = call if isinstance(call, tuple) else (call, runner)
        times: dict[bool, list[float]] = {True: [], False: []}
        for rep in range(args.reps):
            for flag in ((True, False) if rep % 2 == 0 else (False, True)):
                client.run(switch, flag)
                switch(flag)  # this process: the thread runner's chunks run here
                times[flag].append(timed(call, on_runner))
        tracker.flush(60)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name:42} on {on:7.3f} s | off {off:7.3f} s | on/off = {on / off:.3f}", flush=True)
    raw = median_time(lambda: client.gather(client.map(trivial, range(args.n_single), pure=False)), args.reps)
    print(f"{'raw client.map, N=' + format(args.n_single, ','):42} {raw:7.3f} s (the chunksize=1 row's reference)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
