"""Resume of a failed flow run: a 10^5 map with 1% failed runs, retried.

    python benchmarks/bench_resume.py                # N = 10^5, medians of 3
    python benchmarks/bench_resume.py -n 10000 --reps 3

One LocalCluster (2 workers x 1 thread), started once, used by every row. The map's body
is trivial; runs ``x % 100 == 0`` fail while a flag file exists. Each repetition runs the
flow once with the flag (1% of runs fail, spread over every chunk), removes the flag and
retries the flow run (``flow.retry``). Rows:

- ``first run, values kept``: the failing first run, every completed value kept (default);
- ``first run, keep 0``: the same with ``daskflow.results.keep: 0`` (what keeping costs);
- ``retry``: the resume: 99% of runs come back ``Cached`` from their kept values, 1% run;
  the bodies executed are counted by the workers (``resume_body.py``);
- ``flow of the failed runs only``: a flow mapping just those 1% (what executing them costs);
- ``raw Dask``: ``client.gather(client.map(f, range(min(N, 2000))))`` on the same cluster
  (one Dask task per element), per element.

Per reused run: (retry - flow of the failed runs only) / reused runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import resume_body  # imported by the workers too (their sys.path is this process's): they count bodies
from bench_map import median_time  # benchmarks/ is on the path, as a script or as a section

FLAG = os.path.join(tempfile.mkdtemp(prefix="bench-resume-flag-"), "broken")


def raw_body(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--runner", choices=("dask", "threads"), default="dask",
                        help="the flows' task runner: the cluster, or ThreadPoolTaskRunner(2) in this process")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-resume-")
    import logging

    logging.getLogger("daskflow").setLevel(logging.CRITICAL)  # not 1,000 "Failed" lines per repetition
    import dask.config
    from distributed import Client, LocalCluster

    from daskflow import flow, task, unmapped
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    if args.runner == "threads":
        from daskflow.runners import ThreadPoolTaskRunner

        runner = ThreadPoolTaskRunner(2)
    else:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
    step = task(name="bench-resume-step")(resume_body.body)
    n = args.n

    @flow(name="bench-resume", task_runner=runner)
    def pipeline(n: int, flag: str) -> int:
        return sum(step.map(range(n), unmapped(flag)).result())  # raises when a run failed

    def executed_bodies() -> int:
        if args.runner == "threads":
            return resume_body.executed()
        return sum(client.run(resume_body.executed).values())

    @flow(name="bench-resume-failed-only", task_runner=runner)
    def failed_only(xs: list, flag: str) -> list:
        return step.map(xs, unmapped(flag)).result()

    from daskflow.engine.tracking import tracker

    def first_run() -> str:
        open(FLAG, "w").close()
        state = pipeline(n, FLAG, return_state=True)
        assert state.is_failed()
        tracker.flush()
        from daskflow.store import open_run_store

        return open_run_store(create=False).flow_runs(limit=1)[0]["id"]

    pipeline(1000, "/nonexistent")  # warm: worker imports, connection
    firsts, firsts_nokeep, retries, executed = [], [], [], []  # executed: bodies run by each retry
    for _ in range(args.reps):
        with dask.config.set({"daskflow.results.keep": 0}):
            t0 = time.perf_counter()
            open(FLAG, "w").close()
            assert pipeline(n, FLAG, return_state=True).is_failed()
            firsts_nokeep.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        flow_run_id = first_run()
        firsts.append(time.perf_counter() - t0)
        os.unlink(FLAG)
        client.run(resume_body.reset)
        resume_body.reset()
        t0 = time.perf_counter()
        total = pipeline.retry(flow_run_id)
        retries.append(time.perf_counter() - t0)
        executed.append(executed_bodies())
        assert total == sum(range(1, n + 1)), "every run completes on the retry, with its value"
    failed = list(range(0, n, 100))
    only = median_time(lambda: failed_only(failed, FLAG), args.reps)
    m = min(n, 2_000)  # raw Dask runs one Dask task per element: 2,000 price it (10^5 takes minutes under load)
    raw = median_time(lambda: client.gather(client.map(raw_body, range(m), pure=False)), args.reps)
    med = sorted
    first, first_nokeep, retry = med(firsts)[len(firsts) // 2], med(firsts_nokeep)[len(firsts) // 2], \
        med(retries)[len(retries) // 2]
    reused = n - len(failed)
    per_reused = (retry - only) / reused
    out = {"n": n, "reps": args.reps, "runner": args.runner, "failed": len(failed), "executed_on_retry": executed,
           "first_run_kept_s": first, "first_run_keep0_s": first_nokeep, "retry_s": retry,
           "failed_only_flow_s": only, "raw_dask": {"n": m, "s": raw}, "per_reused_run_us": per_reused * 1e6}
    print(f"N={n}, {len(failed)} failed runs, {args.runner} runner; bodies executed by each retry: {executed}")
    print(f"first run, values kept   {first:.3f} s  ({first / first_nokeep:.2f}x keep 0)")
    print(f"first run, keep 0        {first_nokeep:.3f} s")
    print(f"retry                    {retry:.3f} s  ({retry / first:.2f}x the first run)")
    print(f"flow of the failed only  {only:.3f} s")
    print(f"raw Dask client.map      {raw:.3f} s for {m} elements, {raw / m * 1e6:.0f} µs each "
          f"(the retry: {retry / n * 1e6:.1f} µs per element)")
    print(f"per reused run           {per_reused * 1e6:.2f} µs  ((retry - failed only) / {reused})", flush=True)
    assert all(e == len(failed) for e in executed), "the retry executes exactly the failed runs"
    client.close()
    cluster.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    sys.exit(main())
