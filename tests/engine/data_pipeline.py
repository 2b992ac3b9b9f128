"""A three-stage pipeline of large arrays on a LocalCluster(2 x 1), run as its own process by
tests/engine/test_data_stays.py: prints the result and the client's peak RSS."""

import json
import sys

import numpy as np

from daskflow import flow, task
from daskflow.runners import DaskTaskRunner

N, MB = int(sys.argv[1]), int(sys.argv[2])


@task
def make(i: int) -> np.ndarray:
    return np.full(MB * 2**20 // 8, float(i))


@task
def scale(a: np.ndarray) -> np.ndarray:
    return a * 2


@task
def total(b: np.ndarray) -> float:
    return float(b.sum())


@flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None}))
def pipeline() -> float:
    c = total.map(scale.map(make.map(range(N))))
    return sum(c.result())


def peak_rss_mib() -> float:
    """VmHWM: this process's own high-water mark (``ru_maxrss`` carries the parent's over exec:
    the pytest process's RSS, ~900 MiB after the streaming tests, was reported as this one's)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


if __name__ == "__main__":
    value = pipeline()
    print(json.dumps({"value": value, "peak_rss_mib": peak_rss_mib()}))
