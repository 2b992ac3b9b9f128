"""This tree against an older one, side by side: a direct call's cost and a map's per element.

    python benchmarks/bench_trees.py                  # against wave 1 (commit 2342cc6)
    python benchmarks/bench_trees.py --base <commit> --rounds 5

The machine is shared and noisy, so the two trees are never measured at different times:
each round starts a fresh subprocess of the base tree, then one of this tree (a temporary
``git worktree`` of ``--base``, on ``PYTHONPATH``), and the figures are medians over rounds,
with each round's ratio. The probes use only the API both trees have (``@flow``, ``@task``,
``DaskTaskRunner``, ``.map``).

- ``direct``: a flow on a Dask runner (``LocalCluster(2x1)``) calls ``t(i)`` 20,000 times,
  five times; per call: the calling thread's CPU (``time.thread_time``), the whole process's
  CPU from the flow's start to its end (the run store's writer and the flow's end included),
  and the wall time.
- ``map``: ``t.map(range(10**6)).result()`` three times on the same cluster (after a map of
  10^4): the client process's CPU (every thread, its in-process scheduler's too) and wall.

``--features`` measures this tree alone: the direct call of ``direct`` with the features that
cost it something turned off one by one (``daskflow.resources``, ``daskflow.results.keep``,
``daskflow.tracking``), the variants alternating within one process, medians of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
WAVE1 = "2342cc6"  # the tree before the engine was split into rooms ("wave 1")


def inc(x):
    return x + 1


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def probe(kind: str) -> dict:
    """Run in a child whose ``PYTHONPATH`` names the tree under test; return its figures."""
    import logging

    from distributed import LocalCluster

    from daskflow import flow, task
    from daskflow.runners import DaskTaskRunner

    logging.getLogger("daskflow").setLevel(logging.WARNING)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    t = task(inc)
    try:
        if kind == "direct":
            calls = 20_000

            @flow(task_runner=runner)
            def direct(k):
                t0 = time.thread_time()
                for i in range(k):
                    t(i)
                return time.thread_time() - t0

            direct(200)
            thread, process, wall = [], [], []
            for _ in range(5):
                c0, w0 = _process_cpu(), time.perf_counter()
                thread.append(direct(calls) / calls * 1e6)
                process.append((_process_cpu() - c0) / calls * 1e6)
                wall.append((time.perf_counter() - w0) / calls * 1e6)
            m = statistics.median
            return {"thread_cpu_us": m(thread), "process_cpu_us": m(process), "wall_us": m(wall)}

        n = 1_000_000

        @flow(task_runner=runner)
        def fan(k):
            return t.map(range(k)).result()[-1]

        fan(10_000)
        cpu, wall = [], []
        for _ in range(3):
            c0, w0 = _process_cpu(), time.perf_counter()
            assert fan(n) == n
            cpu.append(_process_cpu() - c0)
            wall.append(time.perf_counter() - w0)
        return {"client_cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}
    finally:
        cluster.close()


FEATURES = {
    "everything on (the default)": {},
    "daskflow.resources: false": {"daskflow.resources": False},
    "daskflow.results.keep: 0": {"daskflow.results.keep": 0},
    "both off": {"daskflow.resources": False, "daskflow.results.keep": 0},
    "and daskflow.tracking: false": {"daskflow.resources": False, "daskflow.results.keep": 0,
                                     "daskflow.tracking": False},
}


def features() -> None:
    """A direct call's cost in this process with each of ``FEATURES``, alternating."""
    import logging

    import dask.config
    from distributed import LocalCluster

    from daskflow import flow, task
    from daskflow.runners import DaskTaskRunner

    logging.getLogger("daskflow").setLevel(logging.WARNING)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    t, calls = task(inc), 20_000

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def direct(k):
        t0 = time.thread_time()
        for i in range(k):
            t(i)
        return time.thread_time() - t0

    try:
        direct(200)
        got: dict[str, dict[str, list[float]]] = {name: {"thread": [], "process": []} for name in FEATURES}
        for _ in range(5):
            for name, settings in FEATURES.items():
                with dask.config.set(settings):
                    c0 = _process_cpu()
                    got[name]["thread"].append(direct(calls) / calls * 1e6)
                    got[name]["process"].append((_process_cpu() - c0) / calls * 1e6)
        for name, figures in got.items():
            print(f"  {name:30} thread CPU {statistics.median(figures['thread']):6.2f} µs   "
                  f"process CPU {statistics.median(figures['process']):6.2f} µs per direct call")
    finally:
        cluster.close()


def run_probe(tree: str, kind: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, DASKFLOW_HOME=tempfile.mkdtemp(prefix="bench-trees-"))
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    out = subprocess.run([sys.executable, str(HERE / "bench_trees.py"), "--probe", kind], env=env,
                         cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"probe {kind} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=WAVE1, help="the commit to compare against (default: wave 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["direct", "map"], choices=["direct", "map"])
    parser.add_argument("--features", action="store_true", help="this tree alone: what each feature costs a direct call")
    parser.add_argument("--probe", choices=["direct", "map"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.features:
        os.environ.setdefault("DASKFLOW_HOME", tempfile.mkdtemp(prefix="bench-trees-"))
        features()
        return
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return
    here = str(HERE.parent)
    base = tempfile.mkdtemp(prefix="bench-trees-base-")
    subprocess.run(["git", "-C", here, "worktree", "add", "--detach", base, args.base], check=True,
                   capture_output=True)
    try:
        for kind in args.kinds:
            rows: dict[str, list[dict]] = {"base": [], "this": []}
            for r in range(args.rounds):
                load = os.getloadavg()[0]
                rows["base"].append(run_probe(base, kind))
                rows["this"].append(run_probe(here, kind))
                print(f"{kind} round {r + 1} (load {load:.1f}): base {rows['base'][-1]}  this {rows['this'][-1]}",
                      flush=True)
            for field in rows["base"][0]:
                b = statistics.median(x[field] for x in rows["base"])
                t = statistics.median(x[field] for x in rows["this"])
                ratios = ", ".join(f"{x[field] / y[field]:.2f}" for x, y in zip(rows["this"], rows["base"]))
                print(f"  {kind:6} {field:15} base {b:9.3f}  this {t:9.3f}  this/base {t / b:.2f}x "
                      f"(rounds: {ratios})")
    finally:
        subprocess.run(["git", "-C", here, "worktree", "remove", "--force", base], capture_output=True)


if __name__ == "__main__":
    main()
