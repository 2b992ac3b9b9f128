import os
import signal
import subprocess
import sys
import textwrap

import pytest

from daskflow import flow, task, transaction
from daskflow.cache import INPUTS
from daskflow.cache.store import get_store
from daskflow.runners import ThreadPoolTaskRunner


def entries(home):
    return len(list(get_store(home).iterate()))


def make_tasks(log):
    @task(cache_policy=INPUTS)
    def step(x):
        log.append(("run", x))
        return x

    @step.on_commit
    def _commit(txn):
        log.append(("commit", txn.get("tag")))

    @step.on_rollback
    def _rollback(txn):
        log.append(("rollback", txn.get("tag")))

    @task(cache_policy=INPUTS)
    def boom(x):
        raise ValueError(f"boom {x}")

    @boom.on_rollback
    def _boom_rollback(txn):
        log.append(("boom-rollback", txn.key))

    return step, boom


def test_transaction_commits_all_at_clean_exit(daskflow_home):
    log = []
    step, _ = make_tasks(log)
    with transaction() as txn:
        txn.set("tag", "t1")
        step(1)
        step(2)
        assert entries(daskflow_home) == 0  # staged, not written
        assert not any(e[0] == "commit" for e in log)
    assert entries(daskflow_home) == 2
    assert log == [("run", 1), ("run", 2), ("commit", "t1"), ("commit", "t1")]
    assert txn.is_committed()


def test_transaction_failure_writes_nothing_and_rolls_back_newest_first(daskflow_home):
    log = []
    step, boom = make_tasks(log)

    @task(cache_policy=INPUTS)
    def named(x):
        return x

    order = []
    named.on_rollback(lambda txn: order.append("named"))
    step.on_rollback(lambda txn: order.append("step"))
    with pytest.raises(ValueError, match="boom 3"):
        with transaction():
            step(1)
            named(2)
            boom(3)
    assert entries(daskflow_home) == 0
    assert order == ["named", "step"]  # newest first; the failed run's own hook does not fire
    assert not any(e[0] == "boom-rollback" for e in log)


def test_transaction_submitted_runs_stage_on_workers(runner, daskflow_home):
    @task(cache_policy=INPUTS)
    def sq(x):
        return x * x

    @task(cache_policy=INPUTS)
    def fail_on(x, bad):
        if x == bad:
            raise RuntimeError("bad element")
        return x

    @flow(task_runner=runner)
    def ok():
        with transaction():
            futs = sq.map(range(10))
            single = sq.submit(20)
        return futs.result(), single.result()

    assert ok() == ([x * x for x in range(10)], 400)
    assert entries(daskflow_home) == 11

    @flow(task_runner=runner)
    def failing():
        with transaction():
            fail_on.map(range(100, 110), 105)

    with pytest.raises(RuntimeError, match="bad element"):
        failing()
    assert entries(daskflow_home) == 11  # none of the 9 good runs were committed


def test_transaction_commit_hooks_outside_a_block_fire_at_once_cached_or_not():
    calls = []

    @task(cache_policy=INPUTS)
    def t(x):
        return x

    @t.on_commit
    def _c(txn):
        calls.append(txn.key)

    t(1)
    t(1)  # cached
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0].startswith("v1/")

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def f():
        return t.map([1, 2, 3]).result()

    f()
    assert len(calls) == 5


def test_transaction_key_is_committed_makes_blocks_idempotent():
    runs = []

    @task
    def load(x):
        runs.append(x)

    def block():
        with transaction(key="load-2024-06") as txn:
            if txn.is_committed():
                return "skipped"
            load(1)
        return "done"

    assert block() == "done"
    assert block() == "skipped"
    assert runs == [1]


def test_transaction_nested_commits_with_outer(daskflow_home):
    @task(cache_policy=INPUTS)
    def t(x):
        return x

    with pytest.raises(KeyError):
        with transaction():
            with transaction():
                t(1)
            assert entries(daskflow_home) == 0
            raise KeyError("outer fails")
    assert entries(daskflow_home) == 0


_CHILD = textwrap.dedent(r"""
    import sys, time
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import get_store
    store = get_store(sys.argv[1])
    rec = lambda i: ser.encode(i, "t-0", None, None, store.secret)
    store.put_many([(b"before", rec(0))], txn_key="first")

    class SlowItems(list):
        # pauses half way through the write transaction, so the parent kills it mid-commit
        def __iter__(self):
            for i, item in enumerate(list.__iter__(self)):
                if i == len(self) // 2:
                    print("mid-commit", flush=True)
                    time.sleep(60)
                yield item

    store.put_many(SlowItems([(b"k%d" % i, rec(i)) for i in range(1000)]), txn_key="second")
""")


def test_transaction_kill_9_mid_commit_leaves_store_as_before(daskflow_home):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(daskflow_home)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert proc.stdout.readline().strip() == "mid-commit"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    store = get_store(daskflow_home)
    store.env.reader_check()
    keys = [k for k, _ in store.iterate()]
    assert keys == [b"before"]
    assert store.is_committed("first") and not store.is_committed("second")
    store.put_many([(b"after", ser_rec(store))])  # the writer lock was released by the kill
    assert len(list(store.iterate())) == 2


def ser_rec(store):
    from daskflow.cache import serialization as ser

    return ser.encode("x", "t-0", None, None, store.secret)


def test_transaction_hooks_of_non_caching_tasks_run_on_the_client(runner):
    events = []

    @task
    def extract(x):
        return x

    @extract.on_commit
    def _c(txn):
        events.append(("commit", txn.get("who")))

    @extract.on_rollback
    def _r(txn):
        events.append(("rollback", txn.get("who")))

    @task
    def load(x):
        raise OSError("disk full")

    @flow(task_runner=runner)
    def good():
        with transaction() as txn:
            txn.set("who", "good")
            extract.map([1, 2]).wait()
        return list(events)

    # on a Dask worker the hooks would run in another process: they fire here, at block exit
    assert good() == [("commit", "good"), ("commit", "good")]

    @flow(task_runner=runner)
    def bad():
        with transaction() as txn:
            txn.set("who", "bad")
            extract.submit(3).wait()
            load.submit(4).result()

    with pytest.raises(OSError, match="disk full"):
        bad()
    assert events[2:] == [("rollback", "bad")]
