"""Concurrency limits: tag limits over a real cluster, concurrency() and rate_limit(), leases
that a SIGKILLed holder loses, and the edges (limit 0, undefined names, bad arguments).

Concurrency is observed from the bodies: each run creates a file in a shared directory
while it runs and records how many it sees (a real place every worker process shares).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from daskflow import concurrency, config, flow, rate_limit, task
from daskflow.exceptions import LimitNotDefined
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.store.limits import set_limit


def observe(folder, i, seconds):
    """Be one of the runs in ``folder`` for ``seconds``; the number of runs seen meanwhile."""
    mine = os.path.join(folder, f"{os.getpid()}-{threading.get_ident()}-{i}")
    open(mine, "w").close()
    try:
        seen = len(os.listdir(folder))
        time.sleep(seconds)
        return max(seen, len(os.listdir(folder)))
    finally:
        os.unlink(mine)


@task(tags={"db"})
def tagged(folder, i):
    return observe(folder, i, 0.01)


@task
def untagged(folder, i):
    return observe(folder, i, 0.3)


def test_tag_limit_holds_over_200_runs_on_4_workers_x_2_threads(tmp_path):
    from distributed import LocalCluster

    from daskflow.runners.clients import close_shared_client
    from daskflow.runners.dask import DaskTaskRunner

    set_limit(config.home_path(), "db", 3)
    folder = tmp_path / "running"
    folder.mkdir()
    lc = LocalCluster(n_workers=4, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None)
    try:
        @flow(task_runner=DaskTaskRunner(address=lc.scheduler_address))
        def pipeline():
            limited = tagged.map([str(folder)] * 200, range(200)).result()
            free = untagged.map([str(tmp_path / "free")] * 8, range(8), chunksize=1)
            return limited, free.result()

        (tmp_path / "free").mkdir()
        t0 = time.monotonic()
        seen, free_seen = pipeline()
        print(f"200 limited runs in {time.monotonic() - t0:.2f} s")
    finally:
        close_shared_client(lc.scheduler_address)
        lc.close()
    assert len(seen) == 200
    assert max(seen) <= 3, sorted(seen)[-10:]  # never more than the limit running
    assert max(seen) >= 2  # the runs did overlap: the limit, not the cluster, kept them at 3
    assert max(free_seen) >= 3  # untagged runs are not limited: more than 3 at once


def test_tag_limit_threads_runner_without_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS", raising=False)
    set_limit(config.home_path(), "db", 2)
    folder = tmp_path / "running"
    folder.mkdir()

    @flow(task_runner=ThreadPoolTaskRunner(8))
    def pipeline():
        return tagged.map([str(folder)] * 40, range(40), chunksize=1).result()

    seen = pipeline()
    assert max(seen) == 2


def test_concurrency_in_code_and_limit_raised_while_waiting(monkeypatch, caplog):
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS", raising=False)
    home = config.home_path()
    set_limit(home, "gate", 0)
    entered = threading.Event()

    def waiter():
        with concurrency("gate"):
            entered.set()

    t = threading.Thread(target=waiter)
    with caplog.at_level("WARNING", logger="daskflow"):
        t.start()
        assert not entered.wait(0.5)  # a limit of 0 blocks...
        set_limit(home, "gate", 1)  # ...until it is raised
        assert entered.wait(10)
    t.join(10)
    assert any("limit 'gate' is 0" in r.message and "daskflow limits set gate" in r.message for r in caplog.records)


def test_concurrency_timeout_undefined_and_bad_arguments(monkeypatch, caplog):
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS", raising=False)
    set_limit(config.home_path(), "one", 1)
    with concurrency("one"):
        with pytest.raises(TimeoutError, match="'one'"):
            with concurrency("one", timeout_seconds=0.2):
                pass
    with concurrency("one", timeout_seconds=1):  # given back at the end of the block
        pass
    with caplog.at_level("WARNING", logger="daskflow"):
        with concurrency("nobody-defined-it"):
            pass
    assert any("'nobody-defined-it' is not defined" in r.message for r in caplog.records)
    with pytest.raises(LimitNotDefined, match="daskflow limits set"):
        with concurrency("nobody-defined-it", strict=True):
            pass
    with pytest.raises(ValueError, match="occupy"):
        with concurrency("one", occupy=0):
            pass
    with pytest.raises(ValueError, match="can never be served"):
        with concurrency("one", occupy=2):
            pass
    with pytest.raises(ValueError, match="limit name"):
        with concurrency("a/b"):
            pass
    with pytest.raises(ValueError, match="per_second"):
        rate_limit("one")  # a concurrency limit has no decay


def test_rate_limit_spaces_calls(monkeypatch):
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS", raising=False)
    set_limit(config.home_path(), "api", 2, per_second=10)
    t0 = time.monotonic()
    for _ in range(6):  # a burst of 2, then 4 more at 10/s
        rate_limit("api")
    took = time.monotonic() - t0
    assert 0.3 <= took < 2.0, took


HOLDER = textwrap.dedent("""
    import time
    from daskflow import concurrency
    with concurrency("k"):
        print("held", flush=True)
        time.sleep(120)
""")


def test_sigkilled_holder_frees_its_slot_within_the_lease(tmp_path, cluster, monkeypatch):
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", cluster.scheduler_address)
    set_limit(config.home_path(), "k", 1)
    lease = 3
    env = dict(os.environ, PYTHONPATH=os.getcwd(), DASK_DASKFLOW__LIMITS__LEASE_SECONDS=str(lease))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(lease * 1.2)  # longer than one lease: the holder's renewals keep it
        with pytest.raises(TimeoutError):
            with concurrency("k", timeout_seconds=0.5):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        with concurrency("k", timeout_seconds=lease * 4):
            took = time.monotonic() - t0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert took <= lease + 2.5, took


@task(tags={"remote-db"})
def tagged_remote(folder, i):
    return observe(folder, i, 0.02)


def test_limit_known_only_to_the_scheduler(tmp_path, cluster, dask_runner):
    """A worker whose submitter's home has no limits (another host's case) takes the
    definition the scheduler was given (by `limits set` with DASKFLOW_SCHEDULER_ADDRESS)."""
    from daskflow.runners.clients import shared_client
    from daskflow.runners.slots import DaskSlots

    assert not (config.home_path() / "limits.json").exists()
    DaskSlots(shared_client(cluster.scheduler_address)).define("remote-db", 1)
    folder = tmp_path / "running"
    folder.mkdir()

    @flow(task_runner=dask_runner)
    def pipeline():
        return tagged_remote.map([str(folder)] * 12, range(12), chunksize=2).result()

    try:
        seen = pipeline()
    finally:
        DaskSlots(shared_client(cluster.scheduler_address)).define("remote-db", None)
    assert max(seen) == 1, seen
