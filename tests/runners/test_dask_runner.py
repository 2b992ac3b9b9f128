import threading

import pytest

from daskflow import flow, task
from daskflow.exceptions import RunnerShutdown
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.runners.dask import DaskTaskRunner


@task
def inc(x):
    return x + 1


@task
def fan_in(n):
    # Submits from inside a Dask task and waits: must not take a worker slot while waiting.
    return sum(inc.map(range(n)).result()) + inc.submit(0).result()


@task
def worker_address(_):
    from distributed import get_worker

    return get_worker().address


def test_dask_runner_keys_are_named_after_task(dask_runner):
    @flow(task_runner=dask_runner)
    def f():
        fut = inc.submit(1)
        fut.wait()
        return fut._chunk

    chunk = f()
    assert chunk.result.n == 1 and chunk.result.worker.startswith("tcp://127.0.0.1")


def test_nested_submission_from_worker_does_not_deadlock(dask_runner):
    # 2 single-threaded workers, 4 runs that each wait on inner runs.
    @flow(task_runner=dask_runner)
    def f():
        return [fut.result(timeout=120) for fut in fan_in.map([10, 10, 10, 10])]

    assert f() == [sum(range(1, 11)) + 1] * 4


def test_unpicklable_argument_fails_only_its_run(dask_runner):
    lock = threading.Lock()

    @task
    def use(x):
        return "ran"

    @flow(task_runner=dask_runner)
    def f():
        bad = use.submit(lock)
        good = use.submit(1)
        mapped = use.map([1, lock, 3])
        bad.wait()
        return bad.state.name, bad.state.message, good.result(), [s.name for s in mapped.states], mapped[1].state.message

    bad_name, bad_message, good, names, message = f()
    assert bad_name == "Failed" and "argument 'x'" in bad_message and "'use'" in bad_message
    assert good == "ran"
    assert names == ["Completed", "Failed", "Completed"]
    assert "argument 'x'" in message


def test_future_of_shut_down_runner_raises_clear_error(cluster):
    runner = DaskTaskRunner(address=cluster.scheduler_address)
    from daskflow.engine.core.context import FlowRunContext, flow_run_ctx

    token = flow_run_ctx.set(FlowRunContext(None, "x", runner, {}))  # type: ignore[arg-type]
    try:
        fut = inc.submit(1)
    finally:
        flow_run_ctx.reset(token)
    runner.shutdown()
    with pytest.raises(RunnerShutdown, match="shut down"):
        fut.result()


def test_remote_scheduler_runs_and_spreads_work(remote_cluster):
    @flow(task_runner=DaskTaskRunner(address=remote_cluster))
    def f():
        values = inc.map(range(1000)).result()
        workers = set(worker_address.map(range(8), chunksize=1).result())
        return values, workers

    values, workers = f()
    assert values == list(range(1, 1001))
    assert len(workers) >= 1 and all(w.startswith("tcp://127.0.0.1") for w in workers)


def test_threadpool_runner_without_dask():
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f():
        return inc.map(range(50)).result()

    assert f() == list(range(1, 51))


def _ledger_keeps(key, dask_scheduler=None):
    return key in dask_scheduler.plugins["daskflow-ledger"].kept


def test_the_ledger_keeps_a_fetched_result_only_while_an_unfetched_run_needs_it(cluster):
    # Kept, the scheduler can hand it back if Dask must compute it again for a queued
    # chunk (its worker died); once every chunk that used it is fetched, nothing needs it.
    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def f():
        from daskflow.runners.clients import shared_client

        client = shared_client(cluster.scheduler_address)  # the one the flow's runner uses
        a = inc.submit(1)
        b = inc.submit(a)
        c = inc.submit(b)  # b has a dependent: nothing fetches it before the test reads it
        assert a.result() == 2  # b not fetched yet: a is kept
        kept_a = client.run_on_scheduler(_ledger_keeps, a.chunk.key)
        x = inc.submit(10)
        y = inc.submit(x)
        assert y.result() == 12 and x.result() == 11  # y fetched first: x is needed by nobody
        kept_x = client.run_on_scheduler(_ledger_keeps, x.chunk.key)
        return kept_a, kept_x, c.result()

    assert f() == (True, False, 4)
