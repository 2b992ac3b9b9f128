"""Soak: a mixed workload for N minutes on one external cluster; do memory, fds and threads stay flat?

    python benchmarks/soak.py --minutes 10                  # the README figures
    python benchmarks/soak.py --minutes 3 --profile         # + where the client's memory went

Starts, on 127.0.0.1 with a fresh ``DASKFLOW_HOME``, a ``dask scheduler``, two ``dask
worker`` processes (1 thread each) and one ``daskflow worker`` task worker for the
background runs. This process then runs rounds of, each inside a ``@flow`` on that
cluster:

- a ``.map()`` of 10^4 (``inc``), summed: exact;
- 50 dependent ``.submit()`` calls (a chain of ``add``): exact;
- a ``.map()`` of 10^3 of an INPUTS-cached task: computed in the first round, Cached after;
- a task that fails once and retries (``flaky``): Completed after two attempts;
- 20 background runs (``.delay()``) read back: exact.

Every ``--sample`` seconds it records the client's RSS (and its anonymous part: RSS
without the file-backed pages of the mapped LMDB stores), open fds and threads, the
scheduler's and the workers' RSS, and the run store's size. After ``--warmup`` seconds
(60), it fits a line through the samples: the slopes (MiB per minute) are the figures;
fds and threads are reported first and last. Any wrong result stops the soak with an error.
``--profile`` compares tracemalloc snapshots (after warm-up, at the end) and counts of
live objects by type, to name what grows. Prints one JSON object; ``--out`` writes it too.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
MiB = 1 << 20


def start_cluster(home: pathlib.Path) -> tuple[list[subprocess.Popen], str]:
    """A dask scheduler, two dask workers and a daskflow task worker; (processes, address)."""
    env = dict(os.environ, DASKFLOW_HOME=str(home), PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    logs = open(home.parent / "cluster.log", "ab")
    sched_file = home.parent / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                               str(sched_file)], env=env, stdout=logs, stderr=logs)]
    deadline = time.monotonic() + 60
    while not sched_file.exists() or not sched_file.read_text().strip():
        if time.monotonic() > deadline or procs[0].poll() is not None:
            raise RuntimeError(f"the scheduler did not start; see {logs.name}")
        time.sleep(0.1)  # waiting for another process to write a file: no event to await
    address = json.loads(sched_file.read_text())["address"]
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", "--nworkers", "1", "--host", "127.0.0.1", "--no-nanny",
                                       "--dashboard-address", "127.0.0.1:0"], env=env, stdout=logs, stderr=logs))
    procs.append(subprocess.Popen([sys.executable, "-m", "daskflow", "worker", "soak_tasks:background",
                                   "--nthreads", "1", "--scheduler", address], env=env, stdout=logs, stderr=logs))
    return procs, address


def one_round(runner, round_no: int, scratch: pathlib.Path) -> None:
    """One round of the mixed workload; raises AssertionError on any wrong result."""
    from soak_tasks import add, background, flaky, inc, square

    from daskflow import flow
    from daskflow.background.client import BackgroundFutures

    @flow(task_runner=runner, name="soak-map")
    def mapped() -> int:
        total = 0
        for f in inc.map(range(10_000)):
            total += f.result()
        return total

    @flow(task_runner=runner, name="soak-chain")
    def chain() -> int:
        f = add.submit(round_no, 0)
        for _ in range(50):
            f = add.submit(f, 1)
        return f.result()

    @flow(task_runner=runner, name="soak-cached")
    def cached() -> tuple[list[int], list[str]]:
        futs = square.map(range(1000))
        return futs.result(), [f.state.name for f in futs[:5]]

    @flow(task_runner=runner, name="soak-retry")
    def retried() -> tuple[str, str]:
        marker = scratch / f"flaky-{uuid.uuid4().hex}"
        state = flaky(str(marker), return_state=True)
        marker.unlink(missing_ok=True)
        return state.name, state.result()

    total = mapped()
    assert total == sum(range(1, 10_001)), total
    assert chain() == round_no + 50
    values, states = cached()
    assert values == [x * x for x in range(1000)], "cached map values"
    if round_no > 0:
        assert states == ["Cached"] * 5, states
    assert retried() == ("Completed", "ok")
    futures = BackgroundFutures(background.delay(round_no * 100 + i) for i in range(20))
    assert futures.result(timeout=120) == [2 * (round_no * 100 + i) for i in range(20)]


def scheduler_client(address: str):
    """The connection ``.delay()`` uses (one per process): to run the profiler in the scheduler."""
    from daskflow.background.client import server_link

    return server_link(address).client


def sample(t0: float, procs: list[subprocess.Popen], home: pathlib.Path) -> dict:
    import psutil

    me = psutil.Process()
    rss = []
    for p in procs:
        try:
            rss.append(psutil.Process(p.pid).memory_info().rss / MiB)
        except psutil.Error:
            rss.append(float("nan"))
    store = home / "runs" / "data.mdb"
    mem = me.memory_info()
    # anonymous = RSS without file-backed pages (the run store and cache files are mapped)
    return {"t": time.monotonic() - t0, "client_mib": mem.rss / MiB, "client_anon_mib": (mem.rss - mem.shared) / MiB,
            "fds": me.num_fds(),
            "threads": me.num_threads(), "scheduler_mib": rss[0], "workers_mib": rss[1:],
            "store_mib": store.stat().st_size / MiB if store.exists() else 0.0}


def slope(samples: list[dict], key: str, after: float) -> float | None:
    """Least-squares slope of ``key`` over time, in units per minute, of samples after ``after`` s."""
    pts = [(s["t"], s[key]) for s in samples if s["t"] >= after]
    if len(pts) < 3:
        return None
    return statistics.linear_regression([t for t, _ in pts], [v for _, v in pts]).slope * 60


def type_counts() -> collections.Counter:
    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def main() -> None:  # noqa: C901 - one soak, in order
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=60, help="seconds left out of the slopes")
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples")
    parser.add_argument("--profile", action="store_true", help="tracemalloc and object counts: what grew")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="daskflow-soak-"))
    home = tmp / "home"
    os.environ["DASKFLOW_HOME"] = str(home)
    procs, address = start_cluster(home)
    os.environ["DASKFLOW_SCHEDULER_ADDRESS"] = address
    import soak_tasks

    from daskflow.background.client import disconnect
    from daskflow.runners import DaskTaskRunner

    runner = DaskTaskRunner(address=address)
    samples: list[dict] = []
    rounds, profile = 0, {}
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_sample = t0
    try:
        while time.monotonic() < end:
            one_round(runner, rounds, tmp)
            rounds += 1
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(t0, procs, home))
                next_sample = now + args.sample
            if args.profile and not profile and now - t0 >= args.warmup:
                import tracemalloc

                tracemalloc.start(25)
                profile = {"snapshot": tracemalloc.take_snapshot(), "types": type_counts()}
                scheduler_client(address).run_on_scheduler(soak_tasks.scheduler_trace_start)
        samples.append(sample(t0, procs, home))
        report = summarise(args, samples, rounds, address)
        if profile:
            report["profile"] = grown(profile)
            report["profile"]["scheduler_sites"] = scheduler_client(address).run_on_scheduler(
                soak_tasks.scheduler_trace_grown)
    finally:
        disconnect(address)
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


def summarise(args: argparse.Namespace, samples: list[dict], rounds: int, address: str) -> dict:
    after = [s for s in samples if s["t"] >= args.warmup] or samples
    return {
        "minutes": args.minutes, "rounds": rounds, "load": os.getloadavg(), "cpus": os.cpu_count(),
        "results_exact": True,
        "client_mib_per_min": slope(samples, "client_mib", args.warmup),
        "client_anon_mib_per_min": slope(samples, "client_anon_mib", args.warmup),
        "scheduler_mib_per_min": slope(samples, "scheduler_mib", args.warmup),
        "store_mib_per_min": slope(samples, "store_mib", args.warmup),
        "client_mib": [after[0]["client_mib"], samples[-1]["client_mib"]],
        "scheduler_mib": [after[0]["scheduler_mib"], samples[-1]["scheduler_mib"]],
        "workers_mib": [after[0]["workers_mib"], samples[-1]["workers_mib"]],
        "fds": [after[0]["fds"], samples[-1]["fds"]],
        "threads": [after[0]["threads"], samples[-1]["threads"]],
        "samples": samples,
    }


def grown(profile: dict) -> dict:
    """What grew since the warm-up: top allocation sites (tracemalloc) and object types."""
    import tracemalloc

    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    total = sum(s.size for s in snapshot.statistics("filename")) - sum(
        s.size for s in profile["snapshot"].statistics("filename"))
    diff = snapshot.compare_to(profile["snapshot"], "traceback")
    sites = []
    for stat in diff[:12]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
        sites.append({"kib": round(stat.size_diff / 1024, 1), "count": stat.count_diff, "where": frames})
    types = type_counts()
    types.subtract(profile["types"])
    return {"traced_growth_kib": round(total / 1024, 1), "sites": sites,
            "types": [(name, n) for name, n in types.most_common(15) if n > 0]}


if __name__ == "__main__":
    main()
