"""The CLI's listings as a user types them: wall time of the whole command, start-up included.

    python benchmarks/bench_cli.py                                 # 10^8 runs, 80,000 cache entries
    python benchmarks/bench_cli.py --compare /path/to/other/tree   # the same commands from another tree, alternating
    python benchmarks/bench_cli.py --home DIR                      # reuse (or build once into) DIR

One ``DASKFLOW_HOME`` holds a run store of ``--runs`` runs (``bench_store.synthetic``: the
writer's batch API, chunks of 10^4 runs, one chunk in 100 with a failed run, a flow run per
10^6 runs) and a result cache of ``--entries`` real entries (``put_many``, a seventh of them
read once). Each command runs as ``python -m daskflow ...`` in a fresh interpreter, its
output to a pipe, ``--reps`` times (median). Beside them, in the same run: the bare
interpreter (``python -c pass``) and ``python -c "import dask"``, the import the read-only
commands no longer pay. With ``--compare TREE`` every command also runs with
``PYTHONPATH=TREE``, alternating with this tree's, and the ratio of wall times is printed.
Each command's CPU time (user + system, from ``wait4``) is printed beside its wall time:
on a loaded machine wall time is mostly waiting for a core.

Targets (issues 23 and 24): ``cache ls`` on 80,000 entries < 1 s; ``runs ls --state
Failed`` < 1 s and ``flow-runs ls`` < 0.5 s on 10^8 runs.
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
TREE = str(HERE.parent)
TARGETS = {"runs ls --state Failed": 1.0, "flow-runs ls": 0.5, "cache ls": 1.0}


def build(home: str, runs: int, entries: int) -> dict:
    """The run store and the cache in ``home`` (each only when missing); seconds each took."""
    took = {}
    env = dict(os.environ, DASKFLOW_HOME=home, PYTHONPATH=os.pathsep.join([TREE, str(HERE)]))
    if not (pathlib.Path(home) / "runs" / "data.mdb").exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import bench_store; bench_store.synthetic({runs})"], env=env,
                       check=True, cwd=home)
        took["runs_build_s"] = time.perf_counter() - t0
    if not (pathlib.Path(home) / "cache" / "data.mdb").exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import bench_cli; bench_cli.fill_cache({entries})"], env=env,
                       check=True, cwd=home)
        took["cache_build_s"] = time.perf_counter() - t0
    return took


def fill_cache(n: int) -> None:
    """``n`` real entries of one task in the configured home's cache; every seventh read once."""
    from daskflow import config
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import close_store, get_store

    home = config.home()
    store = get_store(home)
    keys = [b"v1/bench-ls-0000000a/" + i.to_bytes(16, "big") for i in range(n)]
    store.put_many(list(zip(keys, ser.encode_many(list(range(n)), "bench-ls-0000000a", None, None, store.secret))))
    store.load_many(keys[::7])
    close_store(home)


def ids(home: str) -> tuple[str, str]:
    """A task run id and a flow run id of the store (read as the CLI reads them)."""
    env = dict(os.environ, DASKFLOW_HOME=home, PYTHONPATH=TREE)
    run = json.loads(subprocess.run([sys.executable, "-m", "daskflow", "runs", "ls", "--limit", "1", "-o", "json"],
                                    env=env, check=True, capture_output=True, cwd=home).stdout)[0]["id"]
    flow = json.loads(subprocess.run([sys.executable, "-m", "daskflow", "flow-runs", "ls", "-o", "json"],
                                     env=env, check=True, capture_output=True, cwd=home).stdout)[0]["id"]
    return run, flow


def commands(run: str, flow: str) -> dict[str, list[str]]:
    py = [sys.executable]
    cli = [*py, "-m", "daskflow"]
    return {
        "python -c pass": [*py, "-c", "pass"],
        "python -c 'import dask'": [*py, "-c", "import dask"],
        "daskflow --help": [*cli, "--help"],
        "runs ls --state Failed": [*cli, "runs", "ls", "--state", "Failed"],
        "flow-runs ls": [*cli, "flow-runs", "ls"],
        "runs ls": [*cli, "runs", "ls"],
        "runs show ID": [*cli, "runs", "show", run],
        "flow-runs show ID": [*cli, "flow-runs", "show", flow],
        "cache ls": [*cli, "cache", "ls"],
        "cache ls -o json": [*cli, "cache", "ls", "-o", "json"],
        "cache ls --sort read --limit 20": [*cli, "cache", "ls", "--sort", "read", "--limit", "20"],
    }


def wall(args: list[str], home: str, tree: str) -> tuple[float, float]:
    """Wall seconds of the command, and the CPU seconds (user + system) its process used:
    on a loaded machine the second says more about the command than the first."""
    env = dict(os.environ, DASKFLOW_HOME=home, PYTHONPATH=tree)
    t0 = time.perf_counter()
    # cwd: not a source tree (``python -m`` puts the working directory first on the path)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args)
    return took, usage.ru_utime + usage.ru_stime


def measure(home: str, reps: int, compare: str | None) -> dict:
    """Median wall and CPU seconds of each command, per tree (the trees alternate within each repetition)."""
    trees = {"this": TREE, **({"compare": compare} if compare else {})}
    times: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, args in commands(*ids(home)).items():
        for _ in range(reps):
            for label, tree in trees.items():
                times.setdefault(name, {}).setdefault(label, []).append(wall(args, home, tree))
    return {name: {label: statistics.median(w for w, _ in v) for label, v in by_tree.items()} |
            {f"{label}_cpu": statistics.median(c for _, c in v) for label, v in by_tree.items()}
            for name, by_tree in times.items()}


def report(result: dict) -> None:
    compare = result["compare"] is not None
    print(f"\n{result['runs']:,} runs, {result['entries']:,} cache entries; medians of {result['reps']}; "
          f"load {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after")
    head = f"{'command':34} {'wall':>8} {'cpu':>7}" + (f" {'compared':>9} {'cpu':>7} {'ratio':>6}" if compare else "")
    print(head + "  target (wall)")
    for name, t in result["medians"].items():
        line = f"{name:34} {t['this']:7.3f}s {t['this_cpu']:6.3f}s"
        if compare:
            line += f" {t['compare']:8.3f}s {t['compare_cpu']:6.3f}s {t['this'] / t['compare']:5.2f}x"
        target = TARGETS.get(name)
        print(line + (f"  < {target} s {'met' if t['this'] < target else 'MISSED'}" if target else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000_000)
    parser.add_argument("--entries", type=int, default=80_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--home", help="a home to reuse (stores built into it when missing)")
    parser.add_argument("--compare", help="another source tree to run the same commands from (PYTHONPATH)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = args.home or tmp
        os.makedirs(home, mode=0o700, exist_ok=True)
        result = {"runs": args.runs, "entries": args.entries, "reps": args.reps, "compare": args.compare,
                  "build": build(home, args.runs, args.entries), "load_before": os.getloadavg()}
        result["medians"] = measure(home, args.reps, args.compare)
        result["load_after"] = os.getloadavg()
    report(result)
    text = json.dumps(result, indent=2)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    print(text, file=sys.stderr)


if __name__ == "__main__":
    main()
