"""Task graphs built from ``.submit()``: a chain and a diamond, per task, beside raw Dask.

    python benchmarks/bench_graph.py            # medians of 5
    python benchmarks/bench_graph.py --reps 9

One LocalCluster(2 workers x 1 thread) serves both sides, in this process:

- chain of 1,000: each call takes the previous one's future;
- diamond of 1,201: 100 roots, 10 children of each root (1,000), one fan-in per root over
  its 10 children (100), and one final fan-in over the 100 fan-ins.

daskflow submits with ``t.submit(...)`` inside a ``@flow`` on that cluster, one flow run
per repetition (futures as arguments are the dependencies; the flow's own start and end
are counted); raw Dask with ``client.submit(fn, *futures, pure=False)``. Both wait for the
last result. Figures are wall time per task.
"""

from __future__ import annotations

import argparse
import statistics
import time


def inc(x):
    return x + 1


def add_all(*xs):
    return sum(xs)


def add_list(xs):
    return sum(xs)


def raw_chain(client, n: int) -> int:
    f = client.submit(inc, 0, pure=False)
    for _ in range(n - 1):
        f = client.submit(inc, f, pure=False)
    return f.result()


def raw_diamond(client, roots: int = 100, width: int = 10) -> int:
    fans = []
    for r in range(roots):
        root = client.submit(inc, r, pure=False)
        children = [client.submit(inc, root, pure=False) for _ in range(width)]
        fans.append(client.submit(add_all, *children, pure=False))
    return client.submit(add_all, *fans, pure=False).result()


def flow_chain(t_inc, n: int) -> int:
    f = t_inc.submit(0)
    for _ in range(n - 1):
        f = t_inc.submit(f)
    return f.result()


def flow_diamond(t_inc, t_add, roots: int = 100, width: int = 10) -> int:
    fans = []
    for r in range(roots):
        root = t_inc.submit(r)
        children = [t_inc.submit(root) for _ in range(width)]
        fans.append(t_add.submit(children))
    return t_add.submit(fans).result()


def measure(reps: int) -> dict:
    """Seconds per task, medians of ``reps``: {"chain": {...}, "diamond": {...}}."""
    from distributed import Client, LocalCluster

    from daskflow import flow, task
    from daskflow.runners.clients import close_shared_clients
    from daskflow.runners.dask import DaskTaskRunner

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    t_inc, t_add = task(inc), task(add_list)

    @flow(task_runner=runner)
    def chain(n: int) -> int:
        return flow_chain(t_inc, n)

    @flow(task_runner=runner)
    def diamond() -> int:
        return flow_diamond(t_inc, t_add)

    try:
        chain(10), raw_chain(client, 10)  # warm both
        cases = {
            "chain": (1000, lambda: raw_chain(client, 1000), lambda: chain(1000)),
            "diamond": (1201, lambda: raw_diamond(client), diamond),
        }
        out = {}
        for name, (n, raw, ours) in cases.items():
            raws, flows = [], []
            for _ in range(reps):  # alternate, so both sides see the same machine
                t0 = time.perf_counter()
                a = raw()
                raws.append((time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                b = ours()
                flows.append((time.perf_counter() - t0) / n)
                assert a == b, (a, b)
            out[name] = {"tasks": n, "raw_dask_s": statistics.median(raws), "daskflow_s": statistics.median(flows)}
        return out
    finally:
        close_shared_clients()
        client.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    for name, row in measure(args.reps).items():
        ratio = row["daskflow_s"] / row["raw_dask_s"]
        print(f"{name} of {row['tasks']}: raw client.submit {row['raw_dask_s'] * 1e3:.2f} ms/task, "
              f"daskflow .submit() {row['daskflow_s'] * 1e3:.2f} ms/task ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
