"""The run store at scale: bytes on disk per run, and how fast the listings answer.

    python benchmarks/bench_store.py --real 1000000 10000000     # real maps: bytes per run
    python benchmarks/bench_store.py --synthetic 100000000       # a store of 10^8 runs: listings

Two parts, each in a fresh ``DASKFLOW_HOME``:

- ``--real N ...``: a ``.map()`` of N trivial runs inside a ``@flow`` on a
  LocalCluster(2 workers x 1 thread), as users record them; then the store's size on
  disk (LMDB pages in use, ``(last_pgno + 1) * page size``; the file never shrinks below
  its high-water mark) minus the size of the store before the map, per run.
- ``--synthetic N``: a store of N runs written through the writer's batch API
  (``RunStore.apply``, the call the tracker's writer thread makes) at the packed rate:
  chunks of 10^4 runs with end times 1-10 µs apart (as a trivial map's are), one chunk in
  100 with a failed run (its message kept per run), one flow run per 10^6 runs. Then the
  listings, median of ``--reps``: in this process (the query alone) and as the command
  a user types (``python -m daskflow ...``, a fresh interpreter: imports included):
  ``runs ls --state Failed``, ``flow-runs ls``, ``runs ls``, ``runs show ID``.

Prints one JSON object; ``--out`` writes it to a file too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

CHUNK = 10_000
FLOW_RUNS_EVERY = 1_000_000


def inc(x):
    return x + 1


def store_bytes(home: str) -> int:
    """LMDB pages in use in the run store of ``home``, in bytes."""
    from daskflow.store.runs import open_run_store

    env = open_run_store(home).env.env
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def real(n: int) -> dict:
    """Bytes per run of a real map of ``n`` trivial runs (run in a fresh subprocess)."""
    from distributed import LocalCluster

    from daskflow import flow, task
    from daskflow.engine.tracking import tracker
    from daskflow.runners import DaskTaskRunner

    home = os.environ["DASKFLOW_HOME"]
    t_inc = task(inc)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as cluster:
        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def warm() -> int:
            return sum(t_inc.map(range(10)).result())

        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def big(n: int) -> int:
            total = 0
            for f in t_inc.map(range(n)):
                total += f.result()
            return total

        warm()
        tracker.flush(60)
        before = store_bytes(home)
        t0 = time.perf_counter()
        total = big(n)
        wall = time.perf_counter() - t0
        assert total == n * (n + 1) // 2, total
        assert tracker.flush(600)
    after = store_bytes(home)
    from daskflow.store.runs import open_run_store

    store = open_run_store(home)
    chunks = store.env.stat("chunks")["entries"]
    return {"n": n, "bytes": after - before, "bytes_per_run": (after - before) / n, "chunks": chunks,
            "wall_s": wall, "runs_recorded": store.count()}


def synthetic(n: int, seed: int = 1) -> dict:
    """Write ``n`` runs through ``RunStore.apply`` in batches, as the writer does."""
    import numpy as np

    from daskflow.codes import COMPLETED, FAILED
    from daskflow.ids import new_run_base
    from daskflow.store.runs import ChunkUpdate, FlowUpdate, open_run_store

    rng = np.random.default_rng(seed)
    store = open_run_store(os.environ["DASKFLOW_HOME"])
    t = time.time() - 3600
    t0 = time.perf_counter()
    flow_id, ops, done = None, [], 0
    while done < n:
        if done % FLOW_RUNS_EVERY == 0:
            if flow_id:
                ops.append(FlowUpdate(flow_id, {"state": "Completed", "state_type": "COMPLETED", "end": t}))
            flow_id = str(uuid.uuid4())
            ops.append(FlowUpdate(flow_id, {"name": "synthetic", "parameters": {}, "state": "Running",
                                            "state_type": "RUNNING", "start": t}))
        size = min(CHUNK, n - done)
        ends = t + np.cumsum(rng.integers(1, 10, size)) / 1e6
        codes = bytearray([COMPLETED]) * size
        fields = {"task": "inc", "task_key": "inc-0123abcd", "n": size, "flow_run_id": flow_id, "submitted": t,
                  "started": t, "worker": "tcp://127.0.0.1:40000", "live": None}
        if (done // CHUNK) % 100 == 7:
            codes[size // 2] = FAILED
            fields["messages"] = {size // 2: "ValueError: synthetic failure"}
        fields.update(codes=bytes(codes), ends=ends.tobytes())
        ops.append(ChunkUpdate(new_run_base(), 0, fields, new=True))
        t = float(ends[-1])
        done += size
        if len(ops) >= 100:
            store.apply(ops)
            ops = []
    ops.append(FlowUpdate(flow_id, {"state": "Completed", "state_type": "COMPLETED", "end": t}))
    store.apply(ops)
    return {"n": n, "build_s": time.perf_counter() - t0, "bytes": store_bytes(os.environ["DASKFLOW_HOME"]),
            "bytes_per_run": store_bytes(os.environ["DASKFLOW_HOME"]) / n}


def listings(reps: int) -> dict:
    """Median seconds of each listing, in this process and as a CLI command."""
    from daskflow.store import queries
    from daskflow.store.runs import open_run_store

    store = open_run_store(os.environ["DASKFLOW_HOME"], readonly=True)
    some_id = store.task_runs(limit=1)[0]["id"]
    in_process = {
        "runs ls --state Failed": lambda: queries.runs_page(store, state="Failed", limit=50),
        "flow-runs ls": lambda: queries.flow_run_rows(store, 50),
        "runs ls": lambda: queries.runs_page(store, limit=50),
        "runs show ID": lambda: queries.run_detail(store, some_id),
    }
    commands = {
        "runs ls --state Failed": ["runs", "ls", "--state", "Failed", "-o", "json"],
        "flow-runs ls": ["flow-runs", "ls", "-o", "json"],
        "runs ls": ["runs", "ls", "-o", "json"],
        "runs show ID": ["runs", "show", some_id, "-o", "json"],
    }
    out = {}
    for name, fn in in_process.items():
        out[name] = {"query_s": statistics.median(_timed(fn) for _ in range(reps))}
    for name, args in commands.items():
        out[name]["cli_s"] = statistics.median(_timed(lambda: _cli(args)) for _ in range(reps))
    failed = queries.runs_page(store, state="Failed", limit=50).rows
    out["failed_rows"] = len(failed)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cli(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "daskflow", *args], check=True, capture_output=True)


def _in_subprocess(mode: str, n: int, home: str, reps: int) -> dict:
    env = dict(os.environ, DASKFLOW_HOME=home)
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), "--reps", str(reps)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, nargs="*", default=[], help="sizes of real maps (bytes per run)")
    parser.add_argument("--synthetic", type=int, help="runs in a synthetic store (listings timed)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n = args.child
        result = real(int(n)) if mode == "real" else synthetic(int(n))
        if mode == "synthetic":
            result["listings"] = listings(args.reps)
        print(json.dumps(result))
        return
    report: dict = {"load": os.getloadavg(), "cpus": os.cpu_count(), "real": [], "synthetic": None}
    for n in args.real:
        with tempfile.TemporaryDirectory() as home:
            report["real"].append(_in_subprocess("real", n, home, args.reps))
            print(json.dumps(report["real"][-1]), file=sys.stderr)
    if args.synthetic:
        with tempfile.TemporaryDirectory() as home:
            report["synthetic"] = _in_subprocess("synthetic", args.synthetic, home, args.reps)
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
