"""A fan-out pipeline on the embedded LocalCluster: simulate, summarise, reduce.

Run it with ``python examples/pipeline.py`` (or ``... pipeline.py 200`` for fewer walks). It maps a seeded Monte-Carlo simulation
over 2,000 parameter sets, summarises each result in a second map that lines up with
the first (no round trip through this process), and reduces them into one report.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from daskflow import flow, task, unmapped


@task(retries=2)
def simulate(seed: int, steps: int) -> np.ndarray:
    """A random walk of ``steps`` steps, reproducible from its seed."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal(steps))


@task
def summarise(walk: np.ndarray) -> dict:
    return {"final": float(walk[-1]), "max": float(walk.max()), "min": float(walk.min())}


@task
def report(summaries: list[dict]) -> dict:
    finals = np.array([s["final"] for s in summaries])
    return {
        "walks": len(summaries),
        "mean_final": round(float(finals.mean()), 3),
        "std_final": round(float(finals.std()), 3),
        "widest_range": round(max(s["max"] - s["min"] for s in summaries), 3),
    }


@flow
def random_walks(n: int = 2_000, steps: int = 1_000) -> dict:
    walks = simulate.map(range(n), unmapped(steps))
    summaries = summarise.map(walks)
    return report(summaries.result())


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000  # python examples/pipeline.py [walks]
    start = time.perf_counter()
    result = random_walks(n)
    print(result)
    print(f"{n:,} walks simulated and summarised in {time.perf_counter() - start:.1f} s "
          "(including the LocalCluster start)")
    print("Where to look next:\n"
          "  daskflow flow-runs ls                 # this flow run, its state and counts\n"
          "  daskflow runs ls --task simulate      # its task runs (runs show ID: history, traceback)\n"
          "  daskflow ui                           # the same in a browser, http://127.0.0.1:4200")
