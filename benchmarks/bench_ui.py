"""What `daskflow ui` costs: writers with the UI open vs closed, and pages over 10^6 runs.

    python benchmarks/bench_ui.py --map --reps 5     # a 10^5 map with the UI polling vs closed
    python benchmarks/bench_ui.py --pages            # /api/runs pages over a store of 10^6 runs

``--map``: one LocalCluster (2 workers x 1 thread); each repetition runs a flow whose
``.map()`` has 10^5 elements, alternately with no UI and with a `daskflow ui` process
polled every second (faster than the pages' 2 s) on every endpoint the flow-runs and
flow-run pages read (flow runs with counts, the flow run, metrics, timeline, logs) plus
the first task-run page. Medians of ``--reps`` each.

``--pages``: writes 10^6 runs (100 chunk records of 10^4, as a 10^6 map records them,
1 % failed) straight into a fresh store with ``RunStore.apply``, starts `daskflow ui`
on it, and times HTTP requests (median of 5): the first page, the 20th page through
cursors, a state filter, a task filter, an id-prefix search.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array

ROOT = pathlib.Path(__file__).resolve().parents[1]


def start_ui(home: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, DASKFLOW_HOME=home, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "daskflow", "ui", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            text=True)
    return proc, proc.stdout.readline().split()[3].rstrip("/")


def fetch(url: str) -> tuple[object, dict]:
    with urllib.request.urlopen(url, timeout=60) as res:
        return json.loads(res.read()), dict(res.headers)


def timed(url: str, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fetch(url)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Poller(threading.Thread):
    """What an open flow-run page and flow-runs page ask for, every ``period`` seconds."""

    def __init__(self, url: str, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.stop, self.requests = url, period, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.is_set():
            flows, _ = fetch(self.url + "/api/flow-runs")
            paths = ["/api/runs"]
            if flows:
                fid = flows[0]["id"]
                paths += [f"/api/flow-runs/{fid}", f"/api/metrics?flow_run={fid}", f"/api/timeline?flow_run={fid}",
                          f"/api/flow-runs/{fid}/logs"]
            for path in paths:
                fetch(self.url + path)
            self.requests += 1 + len(paths)
            self.stop.wait(self.period)


def bench_map(reps: int, n: int) -> None:
    home = tempfile.mkdtemp(prefix="daskflow-bench-ui-")
    os.environ["DASKFLOW_HOME"] = home
    from distributed import LocalCluster

    from daskflow import flow, task
    from daskflow.engine.tracking import tracker
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")
    inc = task(lambda x: x + 1, name="inc")

    @flow(name="bench-map", task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def mapped(n: int) -> int:
        return len(inc.map(range(n)).result())

    mapped(1000)  # warm up: workers import daskflow
    proc, url = start_ui(home)
    closed, open_ = [], []
    try:
        for rep in range(reps):
            for with_ui in (rep % 2 == 0, rep % 2 == 1):  # interleaved, alternating which goes first
                poller = Poller(url) if with_ui else None
                if poller:
                    poller.start()
                t0 = time.perf_counter()
                mapped(n)
                tracker.flush()
                (open_ if with_ui else closed).append(time.perf_counter() - t0)
                if poller:
                    poller.stop.set()
                    poller.join()
                    print(f"  UI open: {open_[-1]:.2f} s ({poller.requests} requests)", flush=True)
                else:
                    print(f"  UI closed: {closed[-1]:.2f} s", flush=True)
    finally:
        proc.terminate()
        from daskflow.runners.clients import close_shared_clients

        close_shared_clients()
        cluster.close()
    c, o = statistics.median(closed), statistics.median(open_)
    print(f"{n:,}-element map, median of {reps}: UI closed {c:.2f} s, UI open and polling {o:.2f} s, "
          f"open/closed = {o / c:.2f}")


def write_runs(home: str, chunks: int = 100, per_chunk: int = 10_000) -> None:
    os.environ["DASKFLOW_HOME"] = home
    from daskflow.codes import COMPLETED, FAILED
    from daskflow.ids import new_run_base
    from daskflow.store.runs import ChunkUpdate, FlowUpdate, open_run_store

    store = open_run_store()
    flow_id = "6dddad06-0000-4000-8000-000000000001"
    t = time.time() - 3600
    store.apply([FlowUpdate(flow_id, {"name": "million", "state": "Completed", "state_type": "COMPLETED", "start": t,
                                      "end": t + 600, "parameters": {"n": chunks * per_chunk}})])
    rng = random.Random(0)
    for c in range(chunks):
        codes = bytearray(COMPLETED for _ in range(per_chunk))
        messages = {}
        for i in rng.sample(range(per_chunk), per_chunk // 100):
            codes[i] = FAILED
            messages[i] = f"ValueError: bad row {i}"
        start = t + c * 6
        ends = array("d", (start + (i + 1) * 6 / per_chunk for i in range(per_chunk)))
        store.apply([ChunkUpdate(new_run_base(), 0, {
            "task": "load" if c % 2 else "parse", "task_key": "load-0000" if c % 2 else "parse-0000", "n": per_chunk,
            "flow_run_id": flow_id, "submitted": start, "started": start, "codes": bytes(codes),
            "ends": ends.tobytes(), "messages": messages, "worker": f"tcp://127.0.0.1:{40000 + c % 2}"}, new=True)])


def bench_pages() -> None:
    home = tempfile.mkdtemp(prefix="daskflow-bench-pages-")
    t0 = time.perf_counter()
    write_runs(home)
    print(f"wrote 10^6 runs in {time.perf_counter() - t0:.1f} s")
    proc, url = start_ui(home)
    try:
        rows, headers = fetch(url + "/api/runs?limit=50")
        cursor = None
        t0 = time.perf_counter()
        for _ in range(19):
            _, headers = fetch(url + "/api/runs?limit=50" + (f"&cursor={cursor}" if cursor else ""))
            cursor = headers["X-Next-Cursor"]
        walk = (time.perf_counter() - t0) / 19
        some_id = rows[0]["id"]
        cases = [("first page (50 runs)", "/api/runs?limit=50"),
                 ("20th page, by cursor", f"/api/runs?limit=50&cursor={cursor}"),
                 ("state=Failed", "/api/runs?state=Failed&limit=50"),
                 ("task=load", "/api/runs?task=load&limit=50"),
                 ("id prefix (6 digits)", f"/api/runs?id={some_id[:6]}&limit=50"),
                 ("flow-runs listing with counts", "/api/flow-runs")]
        total, _ = fetch(url + "/api/flow-runs")
        fid = total[0]["id"]
        cases += [("flow run (counts, slowest)", f"/api/flow-runs/{fid}"),
                  ("metrics of the flow run", f"/api/metrics?flow_run={fid}"),
                  ("timeline of the flow run", f"/api/timeline?flow_run={fid}")]
        print(f"store: {total[0]['task_runs']:,} task runs; one page per cursor step: {walk * 1e3:.0f} ms")
        for label, path in cases:
            print(f"  {label:32} {timed(url + path) * 1e3:7.1f} ms (median of 5)")
    finally:
        proc.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", action="store_true")
    parser.add_argument("--pages", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-n", type=int, default=100_000)
    args = parser.parse_args()
    if args.pages or not args.map:
        bench_pages()
    if args.map or not args.pages:
        bench_map(args.reps, args.n)


if __name__ == "__main__":
    main()
