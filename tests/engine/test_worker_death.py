"""A run that kills its worker (past the worker's memory limit) crashes alone, not its chunk-mates.

Real processes: a `dask scheduler` and two `dask worker --memory-limit` subprocesses; the
nanny kills the worker whose run allocates past the limit, every time Dask tries it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from daskflow import flow, task
from daskflow.engine.tracking import tracker
from daskflow.runners.clients import close_shared_client
from daskflow.runners.dask import DaskTaskRunner
from daskflow.store.runs import open_run_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def small_workers(tmp_path):
    """A scheduler (a chunk may fail on 2 workers: allowed-failures 1) and two 1-thread workers of 300 MB."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=os.getcwd(), DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    out = open(tmp_path / "cluster.log", "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", address.rsplit(":", 1)[1], "--no-dashboard"], stdout=out, stderr=out,
                              env=env)]
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", "--memory-limit", "300MB", "--host", "127.0.0.1", "--no-dashboard"],
                                      stdout=out, stderr=out, env=env))
    try:
        with Client(address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        close_shared_client(address)
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        out.close()


def test_a_run_past_the_memory_limit_crashes_alone_and_its_chunk_mates_are_recorded(small_workers, tmp_path):
    log = tmp_path / "ran"

    @task
    def hog(i, bad):
        import time

        import numpy as np

        with open(log, "a") as f:
            f.write(f"{i}\n")
        time.sleep(0.05)  # long enough to be checkpointed as soon as it finishes
        if i == bad:
            block = np.ones(800 * 2**20 // 8)  # 800 MB, well past the worker's 300 MB
            time.sleep(60)  # the nanny kills the worker meanwhile
            return int(block[0])
        return i * 10

    @flow(task_runner=DaskTaskRunner(address=small_workers))
    def pipeline():
        futs = hog.map(range(12), bad=5, chunksize=12)
        futs.wait()
        return [f.state for f in futs], [f.task_run_id for f in futs]

    states, ids = pipeline()
    names = [s.name for s in states]
    assert names == ["Completed"] * 5 + ["Crashed"] + ["Completed"] * 6, names
    assert [s.result() for i, s in enumerate(states) if i != 5] == [i * 10 for i in range(12) if i != 5]
    ran = [int(x) for x in log.read_text().split()]
    # runs that finished before the first kill were recorded from checkpoints, not run again
    assert all(ran.count(i) == 1 for i in range(5)), sorted(ran)
    assert ran.count(5) >= 2 and "KilledWorker" in states[5].message
    # the nanny's kill, in the user's words, with the worker's limit and the memory it measured last
    assert "killed: worker exceeded its memory limit (0.28 GiB)" in states[5].message, states[5].message
    assert tracker.flush()
    shown = open_run_store().task_run(ids[5])
    assert "killed: worker exceeded its memory limit (0.28 GiB)" in shown["error"]
    res = shown["resources"]
    assert res["resolution"] == "killed" and res["memory_limit_bytes"] == 300_000_000
    assert res["worker_rss_bytes"] > 0.95 * 300_000_000  # the nanny kills past 95% of the limit
    mate = open_run_store().task_run(ids[8])["resources"]  # ran again after the culprit, with 6..11
    assert mate["resolution"] == "run" and mate["cpu_seconds"] is not None  # 50 ms runs: measured alone
    # the crashed run says what it was given; its chunk-mates, which completed, keep nothing
    store = open_run_store()
    assert store.task_run(ids[5])["inputs"] == {"i": "5", "bad": "5"}
    assert store.task_run(ids[4])["inputs"] is None
