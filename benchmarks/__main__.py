"""The benchmark suite in one command: figures as JSON, and plots.

    python -m benchmarks                 # every section, medians of 3 (~10 minutes here)
    python -m benchmarks --quick         # smaller sizes, medians of 3 (~3 minutes)
    python -m benchmarks --sections fanout graph

Sections (each beside raw Dask, measured in the same run on the same cluster):

- ``fanout``: µs per element of a trivial function against N, for the plain loop, raw
  ``client.map``, ``dask.bag``, joblib (``n_jobs=2``) and daskflow ``.map()`` on Dask;
- ``heavy``: 32 runs of ~0.2 s of numpy work on 2 workers: speedup over the plain loop;
- ``cache``: an INPUTS-cached ``.map()``: first run vs fully cached rerun, per N;
- ``graph``: chain of 1,000 and diamond of 1,201 ``.submit()`` calls, per task;
- ``delay``: background runs end to end (``benchmarks/bench_delay.py`` in a subprocess);
- ``stream``: a 10^7-element ``.map()`` consumed as it completes: wall time and the
  client's peak RSS (``benchmarks/bench_stream.py``, each row in a fresh subprocess);
- ``data``: a three-stage pipeline of 16 and 64 arrays of 50 MB, raw Dask and daskflow
  alternating, each repetition in a fresh subprocess: wall time and the client's peak RSS
  (``benchmarks/bench_data.py``).
- ``retries``: 20,000 runs of which 5% fail once, retry delay 0 vs 1 s, beside raw Dask's
  ``retries=`` (``benchmarks/bench_retries.py`` in a subprocess);
- ``storage``: an INPUTS-cached ``.map()`` of 10^4 small values and of 64 x 50 MB arrays
  (``--quick``: 16 x 20 MB) on the local LMDB store, ``file://`` and an S3 server (moto,
  started on 127.0.0.1): first run, rerun, and a rerun from a cold home; raw Dask beside
  them; ``daskflow cache ls`` on 80,000 entries (``benchmarks/bench_storage.py`` in a subprocess);
- ``rerun``: sequential flows on the default runner (one embedded cluster per process): a
  fully cached rerun of 10^5 runs, one and two steps, beside the thread runner
  (``benchmarks/bench_rerun.py`` in a subprocess);
- ``resume``: ``flow-runs retry`` of a 10^5 map with 1% failed runs: bodies executed, µs per
  reused run, beside a flow of the failed runs only and raw Dask (``benchmarks/bench_resume.py``
  in a subprocess).
- ``scale``: the client's peak RSS and CPU per element of a map consumed as it completes, at
  10^6, 10^7 and 10^8 elements (``--quick``: 10^5 to 10^7), each in a fresh subprocess beside
  raw Dask's batches (``benchmarks/bench_stream.py``);
- ``workers``: N = 10^5 runs of ``time.sleep(0.01)`` on 8, 32 and 64 one-thread workers
  (``--quick``: 3 x 10^4 on 8 and 32): wall per 10^6 runs against the ideal, beside raw Dask
  (``benchmarks/bench_workers.py``).

Writes ``benchmarks/results/results.json`` and one PNG per section next to it, each
titled with the date and the command that made it. Needs ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_map import heavy as heavy_body  # noqa: E402
from bench_map import median_time, trivial  # noqa: E402

SECTIONS = ("fanout", "heavy", "cache", "graph", "delay", "stream", "data", "retries", "rerun", "resume",
            "storage", "scale", "workers")
SCALE_ROWS = "stream_iter_chunks,iter_chunks,raw_bytes"  # bench_stream.py's rows the scale section runs


def fanout(client, cluster, sizes: list[int], reps: int, raw_max: int) -> dict:
    """Seconds per element for each method and N (raw Dask only up to ``raw_max``)."""
    import dask.bag as db
    from joblib import Parallel, delayed

    from daskflow import task
    from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
    from daskflow.runners.dask import DaskTaskRunner

    inc = task(trivial)
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    threads = sum(client.nthreads().values())
    out: dict[str, dict[int, float]] = {k: {} for k in
                                        ("plain loop", "raw client.map", "dask.bag", "joblib n_jobs=2", "daskflow .map()")}
    token = flow_run_ctx.set(FlowRunContext(None, "bench", runner, {}))  # type: ignore[arg-type]
    try:
        inc.map([0, 1]).result()  # warm: connection, worker imports
        for n in sizes:
            xs = list(range(n))
            out["plain loop"][n] = median_time(lambda: [trivial(x) for x in xs], reps) / n
            if n <= raw_max:
                out["raw client.map"][n] = median_time(
                    lambda: client.gather(client.map(trivial, xs, pure=False)), reps) / n
            bag = db.from_sequence(xs, npartitions=max(1, min(n, 4 * threads)))
            out["dask.bag"][n] = median_time(lambda: bag.map(trivial).compute(scheduler=client.get), reps) / n
            out["joblib n_jobs=2"][n] = median_time(
                lambda: Parallel(n_jobs=2)(delayed(trivial)(x) for x in xs), reps) / n
            out["daskflow .map()"][n] = median_time(lambda: inc.map(xs).result(), reps) / n
            print(f"fanout N={n}: " + ", ".join(f"{k} {v[n] * 1e6:.2f} µs" for k, v in out.items() if n in v),
                  flush=True)
    finally:
        flow_run_ctx.reset(token)
    return {k: {str(n): s for n, s in v.items()} for k, v in out.items()}


def heavy(client, cluster, reps: int) -> dict:
    """Wall time of 32 runs of ~0.2 s numpy work: plain loop, raw ``client.map``, daskflow."""
    from daskflow import task
    from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
    from daskflow.runners.dask import DaskTaskRunner

    t = task(heavy_body)
    seeds = list(range(32))
    token = flow_run_ctx.set(FlowRunContext(None, "bench", DaskTaskRunner(address=cluster.scheduler_address), {}))
    try:
        t.map([0, 1]).result()
        client.gather(client.map(heavy_body, [0, 1], pure=False))
        loop = median_time(lambda: [heavy_body(s) for s in seeds], 1)
        raws, ours = [], []
        for _ in range(reps):  # alternate, so both sides see the same machine
            raws.append(median_time(lambda: client.gather(client.map(heavy_body, seeds, pure=False)), 1))
            ours.append(median_time(lambda: t.map(seeds).result(), 1))
    finally:
        flow_run_ctx.reset(token)
    out = {"loop_s": loop, "raw_dask_s": sorted(raws)[len(raws) // 2], "daskflow_s": sorted(ours)[len(ours) // 2]}
    print(f"heavy: loop {loop:.2f} s, raw Dask {out['raw_dask_s']:.2f} s ({loop / out['raw_dask_s']:.2f}x), "
          f"daskflow {out['daskflow_s']:.2f} s ({loop / out['daskflow_s']:.2f}x)", flush=True)
    return out


def cache(client, cluster, sizes: list[int], reps: int) -> dict:
    from bench_cache import bench_pipeline

    out = {}
    for n in sizes:
        row = bench_pipeline(cluster, client, n, reps)
        out[str(n)] = row
        print(f"cache N={n}: first {row['first']:.3f} s, rerun {row['rerun']:.3f} s, "
              f"bodies in rerun {row['rerun_bodies']}", flush=True)
    return out


def graph(reps: int) -> dict:
    from bench_graph import measure

    out = measure(reps)
    for name, row in out.items():
        print(f"graph {name}: raw {row['raw_dask_s'] * 1e3:.2f} ms/task, "
              f"daskflow {row['daskflow_s'] * 1e3:.2f} ms/task", flush=True)
    return out


def _script_json(script: str, *args: str) -> dict:
    """Run ``benchmarks/<script>`` with ``args`` and ``--json`` in a subprocess; its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    subprocess.run([sys.executable, str(HERE / script), *args, "--json", path], check=True)
    with open(path) as f:
        return json.load(f)


def delay(n: int, reps: int) -> dict:
    """bench_delay.py (it starts its own server and task workers)."""
    return _script_json("bench_delay.py", "-n", str(n), "--reps", str(reps))


def retries(n: int, reps: int) -> dict:
    """bench_retries.py (its own LocalCluster(2x1))."""
    out = _script_json("bench_retries.py", "-n", str(n), "--reps", str(reps))
    return out


def rerun(n: int, reps: int) -> dict:
    """bench_rerun.py (flows on the default runner, in a fresh process)."""
    return _script_json("bench_rerun.py", "-n", str(n), "--reps", str(reps))


def resume(n: int, reps: int) -> dict:
    """bench_resume.py (its own LocalCluster(2x1), in a fresh process)."""
    return _script_json("bench_resume.py", "-n", str(n), "--reps", str(reps))


def stream(n: int, reps: int) -> dict:
    """bench_stream.py (every row in a fresh subprocess)."""
    return _script_json("bench_stream.py", "-n", str(n), "--reps", str(reps))


def scale(sizes: list[int], reps: int) -> dict:
    """bench_stream.py at each N (one repetition at the largest: it takes minutes)."""
    out = {}
    for n in sizes:
        got = _script_json("bench_stream.py", "-n", str(n), "--reps", str(reps if n < max(sizes) else 1),
                           "--rows", SCALE_ROWS)
        out[str(n)] = got["rows"]
    return out


def workers(n: int, counts: list[int]) -> dict:
    """bench_workers.py (in-process LocalClusters of one-thread workers)."""
    return _script_json("bench_workers.py", "-n", str(n), "--workers", *map(str, counts))


def storage(quick: bool, reps: int) -> dict:
    """bench_storage.py (its own LocalCluster(2x1) and S3 server)."""
    return _script_json("bench_storage.py", *(["--quick"] if quick else []), "--reps", str(reps))


def data(sizes: list[int], mb: int, reps: int) -> dict:
    """bench_data.py (each repetition of each side in a fresh subprocess)."""
    return _script_json("bench_data.py", "--sizes", *map(str, sizes), "--mb", str(mb), "--reps", str(reps))


def plot(results: dict, out_dir: pathlib.Path, stamp: str) -> list[pathlib.Path]:
    """One PNG per section present in ``results``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str, title: str) -> None:
        fig.suptitle(title, fontsize=11)
        fig.text(0.01, 0.01, results.get("runs", {}).get(name, stamp), fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 0.95))
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    if "fanout" in results:
        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        for label, points in results["fanout"].items():
            if points:
                ns = sorted(int(n) for n in points)
                ax.plot(ns, [points[str(n)] * 1e6 for n in ns], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="N (elements)", ylabel="µs per element")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # beside the lines, not on them
        save(fig, "fanout", "Fan-out of a trivial function: cost per element")
    if "cache" in results:
        fig, ax = plt.subplots(figsize=(7, 4))
        ns = sorted(results["cache"], key=int)
        xs = range(len(ns))
        ax.bar([x - 0.2 for x in xs], [results["cache"][n]["first"] for n in ns], 0.4, label="first run")
        ax.bar([x + 0.2 for x in xs], [results["cache"][n]["rerun"] for n in ns], 0.4, label="cached rerun")
        ax.set(xticks=list(xs), xticklabels=[f"{int(n):,}" for n in ns], yscale="log", xlabel="N",
               ylabel="seconds")
        ax.legend()
        save(fig, "cache", "INPUTS-cached .map(): first run vs rerun")
    if "graph" in results:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(results["graph"])
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [results["graph"][k]["raw_dask_s"] * 1e3 for k in names], 0.4,
               label="raw client.submit")
        ax.bar([x + 0.2 for x in xs], [results["graph"][k]["daskflow_s"] * 1e3 for k in names], 0.4,
               label="daskflow .submit()")
        ax.set(xticks=list(xs), xticklabels=[f"{k} of {results['graph'][k]['tasks']:,}" for k in names],
               ylabel="ms per task")
        ax.legend()
        save(fig, "graph", "Task graphs: cost per task")
    if "data" in results:
        fig, (wall, rss) = plt.subplots(1, 2, figsize=(9, 4))
        ns = sorted(results["data"], key=int)
        xs = range(len(ns))
        rows = [results["data"][n] for n in ns]
        labels = [f"{r['arrays']} x {r['mb']} MB" for r in rows]
        for ax, field, unit in ((wall, "wall_s", "seconds"), (rss, "peak_rss_mib", "client peak RSS (MiB)")):
            ax.bar([x - 0.2 for x in xs], [r[f"raw_{field}"] for r in rows], 0.4, label="raw Dask")
            ax.bar([x + 0.2 for x in xs], [r[f"daskflow_{field}"] for r in rows], 0.4, label="daskflow")
            ax.set(xticks=list(xs), xticklabels=labels, ylabel=unit)
        wall.legend()
        save(fig, "data", "Three-stage pipeline of large arrays (make → scale → total)")
    if "scale" in results:
        fig, (rss, cpu) = plt.subplots(1, 2, figsize=(10, 4))
        ns = sorted(results["scale"], key=int)
        rows = sorted({row for n in ns for row in results["scale"][n]})
        for row in rows:
            have = [n for n in ns if row in results["scale"][n]]
            xs = [int(n) for n in have]
            rss.plot(xs, [results["scale"][n][row]["rss_mib"] for n in have], marker="o", label=row)
            cpu.plot(xs, [results["scale"][n][row]["cpu_us_per_elem"] for n in have], marker="o", label=row)
        rss.set(xscale="log", xlabel="N (elements)", ylabel="client peak RSS (MiB)", ylim=(0, None))
        cpu.set(xscale="log", xlabel="N (elements)", ylabel="client CPU, µs per element", ylim=(0, None))
        for ax in (rss, cpu):
            ax.grid(True, which="both", alpha=0.3)
        rss.legend(fontsize="small")
        save(fig, "scale", "A map consumed as it completes: the client against N")
    if "workers" in results:
        from matplotlib.ticker import NullFormatter

        fig, (per, ratio) = plt.subplots(1, 2, figsize=(10, 4))
        ws = sorted(results["workers"], key=int)
        rows = [results["workers"][w] for w in ws]
        xs = [int(w) for w in ws]
        for label, key in (("ideal (N x 10 ms / workers)", "ideal_s"), ("raw Dask, one batch a worker", "raw_s"),
                           ("raw Dask, as many batches as chunks", "raw_same_s"), ("daskflow .map()", "wall_s")):
            style = "--" if key == "ideal_s" else "-"
            per.plot(xs, [r[key] / r["n"] * 1e6 for r in rows], marker="o", label=label, linestyle=style)
            ratio.plot(xs, [r[key] / r["ideal_s"] for r in rows], marker="o", label=label, linestyle=style)
        per.set(xscale="log", yscale="log", xlabel="one-thread workers", ylabel="seconds per 10^6 runs of sleep(10 ms)")
        ratio.set(xscale="log", xlabel="one-thread workers", ylabel="wall / ideal", ylim=(0.9, None))
        ratio.axhline(1.2, color="gray", linewidth=0.8, linestyle=":")  # the target
        for ax in (per, ratio):
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
        ratio.legend(fontsize="small")
        n = rows[0]["n"]
        save(fig, "workers", f"Many workers: N = {n:,} runs of sleep(10 ms), one run per point")
    if "delay" in results:
        fig, ax = plt.subplots(figsize=(6, 4))
        d = results["delay"]
        ax.bar(["daskflow .delay()", "raw submit + fire_and_forget"], [d["daskflow_runs_per_s"], d["raw_runs_per_s"]])
        ax.set(ylabel="runs per second (end to end)")
        save(fig, "delay", f"Background runs, N = {d['n']:,}, 2 task workers x 1 thread")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plots from results.json")
    args = parser.parse_args()
    if args.plot_only:
        for png in plot(json.loads((args.out / "results.json").read_text()), args.out, ""):
            print(f"wrote {png}")
        return
    os.environ.setdefault("DASKFLOW_HOME", tempfile.mkdtemp(prefix="daskflow-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks " + " ".join(sys.argv[1:])
    stamp = f"{datetime.date.today().isoformat()} · {command.strip()} · 2-core machine, medians of {args.reps}"
    results: dict = {"date": datetime.date.today().isoformat(), "command": command.strip(), "reps": args.reps,
                     "runs": {s: stamp for s in args.sections}}

    if {"fanout", "heavy", "cache"} & set(args.sections):
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        client = Client(cluster)
        try:
            if "fanout" in args.sections:
                sizes = [100, 1_000, 10_000] if args.quick else [100, 1_000, 10_000, 100_000, 1_000_000]
                results["fanout"] = fanout(client, cluster, sizes, args.reps, raw_max=10_000 if not args.quick else 1_000)
            if "heavy" in args.sections:
                results["heavy"] = heavy(client, cluster, args.reps)
            if "cache" in args.sections:
                results["cache"] = cache(client, cluster, [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000],
                                         args.reps)
        finally:
            from daskflow.runners.clients import close_shared_clients

            close_shared_clients()
            client.close()
            cluster.close()
    if "graph" in args.sections:
        results["graph"] = graph(max(args.reps, 3))
    if "delay" in args.sections:
        results["delay"] = delay(2_000 if args.quick else 10_000, args.reps)
    if "stream" in args.sections:
        results["stream"] = stream(10**6 if args.quick else 10**7, args.reps)
    if "retries" in args.sections:
        results["retries"] = retries(2_000 if args.quick else 20_000, args.reps)
    if "rerun" in args.sections:
        results["rerun"] = rerun(10_000 if args.quick else 100_000, max(args.reps, 5))
    if "resume" in args.sections:
        results["resume"] = resume(10_000 if args.quick else 100_000, args.reps)
    if "storage" in args.sections:
        results["storage"] = storage(args.quick, args.reps)
    if "scale" in args.sections:
        results["scale"] = scale([10**5, 10**6, 10**7] if args.quick else [10**6, 10**7, 10**8], args.reps)
    if "workers" in args.sections:
        results["workers"] = workers(30_000 if args.quick else 100_000, [8, 32] if args.quick else [8, 32, 64])
    if "data" in args.sections:
        results["data"] = data([16] if args.quick else [16, 64], 20 if args.quick else 50, args.reps)

    path = args.out / "results.json"
    if path.exists() and set(args.sections) != set(SECTIONS):  # a partial run keeps the other sections
        kept = json.loads(path.read_text())
        results = {**{k: v for k, v in kept.items() if k in SECTIONS}, **results}
        results["runs"] = {**kept.get("runs", {}), **{s: stamp for s in args.sections}}
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    for png in plot(results, args.out, stamp):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
