"""A three-stage pipeline of large arrays on a LocalCluster(2 x 1), run as its own process by
tests/engine/test_data_stays.py: prints the result and the client's peak RSS."""

import json
import resource
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


if __name__ == "__main__":
    value = pipeline()
    print(json.dumps({"value": value, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
