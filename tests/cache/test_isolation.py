"""Transactions with isolation: SERIALIZABLE runs of one cache key execute one at a time.

Real processes: two clients on one home, two workers of one cluster, a lock holder
SIGKILLed mid-body (the waiter proceeds within the lease, the body runs at most twice,
no lock stays held). Executions are counted by files the body leaves.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import pytest
from background_procs import Proc, env_for

from daskflow import flow, task, transaction
from daskflow.cache import INPUTS, TASK_SOURCE, FileLockManager, IsolationLevel
from daskflow.runners import DaskLockManager

PROCS = pathlib.Path(__file__).with_name("isolation_procs.py")


def bodies(out: pathlib.Path) -> int:
    return len(list(out.glob("body-*")))


def start(mode: str, out: pathlib.Path, home: pathlib.Path, **env: str) -> Proc:
    code = f"import runpy, sys; sys.argv = ['x', {mode!r}, {str(out)!r}]; runpy.run_path({str(PROCS)!r}, run_name='__main__')"
    return Proc(["-c", code], {**env_for(home), **env}, out.parent / f"{mode}.log")


def exit_code(proc: Proc, timeout: float = 60) -> int:
    """The exit status of a process that should end by itself."""
    try:
        return proc.popen.wait(timeout)
    finally:
        proc.log.close()


def wait_for(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- options -------------------------------------------------------------------------------


def test_configure_sets_isolation_without_changing_keys_and_rejects_bad_input():
    policy = (INPUTS + TASK_SOURCE).configure(isolation_level="SERIALIZABLE", lock_manager=FileLockManager())
    assert policy.isolation_level is IsolationLevel.SERIALIZABLE and policy == INPUTS + TASK_SOURCE
    assert (policy - "x").isolation_level is IsolationLevel.SERIALIZABLE  # kept through the algebra
    with pytest.raises(ValueError, match="isolation_level must be an IsolationLevel"):
        INPUTS.configure(isolation_level="SOMETIMES")
    with pytest.raises(TypeError, match="lock_manager=.*must be a daskflow LockManager"):
        INPUTS.configure(lock_manager=object())
    with pytest.raises(ValueError, match="needs a key"):
        transaction(isolation_level=IsolationLevel.SERIALIZABLE)
    with pytest.raises(ValueError, match="lease_seconds must be > 0"):
        FileLockManager(lease_seconds=0)


def test_lock_manager_takes_waits_and_frees(tmp_path):
    locks = FileLockManager(tmp_path / "locks", lease_seconds=5)
    assert locks.acquire_lock("k", "a") and locks.is_lock_holder("k", "a")
    assert not locks.acquire_lock("k", "b", acquire_timeout=0.1)
    locks.release("k", "a")
    assert not locks.is_locked("k") and locks.acquire_lock("k", "b", acquire_timeout=1)
    locks.release("k", "b")


def test_an_expired_lease_frees_the_lock(tmp_path):
    locks = FileLockManager(tmp_path / "locks", lease_seconds=0.3)
    assert locks.try_acquire("k", "gone", 0.3)  # taken, never renewed: as a holder that hung
    t0 = time.monotonic()
    assert locks.acquire_lock("k", "next", acquire_timeout=5)
    assert time.monotonic() - t0 < 5
    locks.release("k", "next")


# -- two processes on one home ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["task", "block"])
def test_two_clients_on_one_home_run_the_body_once(tmp_path, mode):
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    env = {"LOCKS": "file", "LOCK_DIR": str(tmp_path / "locks")}
    first = start(mode, out, home, HOLD="waiter", **env)
    first.expect("body started")
    second = start(mode, out, home, **env)  # finds no committed value, waits for the lock
    got = [first.expect("result"), second.expect("result")]
    assert exit_code(first) == 0 and exit_code(second) == 0
    assert bodies(out) == 1
    if mode == "task":
        assert got == ["result Completed 42\n", "result Cached 42\n"]
    else:
        assert got == ["result ran\n", "result skipped 42\n"]  # the waiter reads the value the first staged
    assert FileLockManager(tmp_path / "locks").waiters() == 0


# -- two workers of one cluster ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "dask"])
def test_two_workers_of_one_cluster_run_the_body_once(cluster, dask_runner, tmp_path, kind):
    manager = (FileLockManager(tmp_path / "locks") if kind == "file"
               else DaskLockManager(cluster.scheduler_address, lease_seconds=10))
    out = tmp_path / "out"
    out.mkdir()

    @task(cache_policy=INPUTS.configure(isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=manager))
    def once(out_dir, tag=None):
        from distributed import get_worker

        pathlib.Path(out_dir, f"body-{os.getpid()}").write_text("ran")
        deadline = time.monotonic() + 20
        while manager.waiters() < 1 and time.monotonic() < deadline:  # the other run comes to wait
            time.sleep(0.02)
        return get_worker().address, manager.waiters() >= 1

    @flow(task_runner=dask_runner)
    def f():
        futures = [once.submit(str(out)) for _ in range(2)]
        values = [fut.result() for fut in futures]
        return [fut.state for fut in futures], values

    states, values = f()
    assert bodies(out) == 1
    assert sorted(s.name for s in states) == ["Cached", "Completed"]
    assert values[0] == values[1]  # the one committed value ...
    assert values[0][1], "the other run did not wait for the lock while the body ran"  # ... read after a wait
    assert manager.waiters() == 0


# -- a holder killed mid-body -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["task", "block"])
def test_killed_holder_the_waiter_proceeds_within_the_lease(tmp_path, mode):
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    locks = FileLockManager(tmp_path / "locks")  # default lease: 30 s
    env = {"LOCKS": "file", "LOCK_DIR": str(tmp_path / "locks")}
    holder = start(mode, out, home, HOLD="forever", **env)
    holder.expect("body started")
    waiter = start(mode, out, home, **env)
    wait_for(lambda: locks.waiters() >= 1, what="the second process to wait for the lock")
    killed = time.monotonic()
    holder.stop(signal.SIGKILL)
    line = waiter.expect("result", timeout=40)
    waited = time.monotonic() - killed
    assert exit_code(waiter) == 0
    assert line == ("result Completed 42\n" if mode == "task" else "result ran\n")
    assert waited < 30, waited  # same host: the dead pid frees the lock at once, well within the lease
    assert bodies(out) == 2  # at most twice: the killed attempt and the waiter's
    assert locks.waiters() == 0


def test_killed_holder_of_a_scheduler_lock_frees_it_when_its_lease_runs_out(remote_cluster, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    lease = 4.0
    locks = DaskLockManager(remote_cluster, lease_seconds=lease)
    env = {"LOCKS": "dask", "LOCK_ADDRESS": remote_cluster, "LEASE": str(lease)}
    holder = start("task", out, home, HOLD="forever", **env)
    holder.expect("body started", timeout=60)
    waiter = start("task", out, home, **env)
    wait_for(lambda: locks.waiters() >= 1, what="the second process to wait for the lock")
    killed = time.monotonic()
    holder.stop(signal.SIGKILL)
    line = waiter.expect("result", timeout=60)
    waited = time.monotonic() - killed
    assert exit_code(waiter) == 0
    assert line == "result Completed 42\n"
    assert waited < lease + 5, waited  # the lease ran out (plus the waiter's poll and a process exit)
    assert bodies(out) == 2
    assert locks.waiters() == 0


def test_a_serializable_task_in_threads_of_one_process_runs_once(tmp_path):
    calls = []
    entered = threading.Event()
    manager = FileLockManager(tmp_path / "locks")

    @task(cache_policy=INPUTS.configure(isolation_level="SERIALIZABLE", lock_manager=manager))
    def once(x):
        calls.append(x)
        entered.set()
        deadline = time.monotonic() + 20
        while manager.waiters() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        return x * 2

    results = []
    first = threading.Thread(target=lambda: results.append(once(3, return_state=True).name))
    first.start()
    assert entered.wait(20)
    second = once(3, return_state=True)
    first.join(20)
    assert calls == [3] and results == ["Completed"] and second.name == "Cached" and second.result() == 6


def test_transaction_stage_and_read_as_prefect(tmp_path):
    with transaction(key="answer") as txn:
        assert not txn.is_committed() and txn.read() is None
        txn.stage({"rows": 3})
        assert txn.read() == {"rows": 3}
    with transaction(key="answer") as again:
        assert again.is_committed() and again.read() == {"rows": 3}
    with pytest.raises(ValueError, match="needs a transaction with a key"):
        with transaction() as keyless:
            keyless.stage(1)
    try:
        with transaction(key="rolled-back") as txn:
            txn.stage(1)
            raise RuntimeError("the block fails")
    except RuntimeError:
        pass
    with transaction(key="rolled-back") as txn:
        assert not txn.is_committed() and txn.read() is None  # nothing staged is written on rollback
    with transaction(key="outer"):
        with transaction(key="inner") as inner:
            inner.stage("nested")
    with transaction(key="inner") as txn:
        assert txn.read() == "nested"  # committed with its outermost block
