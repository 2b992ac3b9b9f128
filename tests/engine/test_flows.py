import asyncio
import logging

import pytest

from daskflow import flow, task
from daskflow.runners import ThreadPoolTaskRunner


@task
def inc(x):
    return x + 1


@task
def fail():
    raise ValueError("flow-task-failure")


def test_flow_returns_value_and_state():
    @flow(task_runner=ThreadPoolTaskRunner())
    def f(x):
        return inc(x)

    assert f(1) == 2
    state = f(1, return_state=True)
    assert state.is_completed() and state.result() == 2


def test_flow_waits_for_every_submitted_run(tmp_path):
    marker = tmp_path / "ran"

    @task
    def touch():
        marker.write_text("yes")

    @flow(task_runner=ThreadPoolTaskRunner())
    def f():
        touch.submit()  # never awaited by the body

    f()
    assert marker.read_text() == "yes"


def test_flow_state_follows_returned_failed_future():
    @flow(task_runner=ThreadPoolTaskRunner())
    def f():
        return fail.submit()

    state = f(return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="flow-task-failure"):
        f()


def test_flow_returns_states_of_returned_futures():
    @flow(task_runner=ThreadPoolTaskRunner())
    def f():
        return {"one": inc.submit(0), "many": inc.map([1, 2])}

    out = f()
    assert out["one"].is_completed() and out["one"].result() == 1
    assert [s.result() for s in out["many"]] == [2, 3]


def test_flow_warns_once_about_unresolved_failures(caplog):
    @flow(task_runner=ThreadPoolTaskRunner())
    def f():
        fail.submit()
        fail.submit()
        resolved = fail.submit()
        resolved.wait()
        return resolved.state.name

    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert f() == "Failed"
    warnings = [r for r in caplog.records if "never resolved" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 failed task run(s)" in warnings[0].getMessage()


def test_flow_body_exception_fails_flow_and_reraises():
    @flow(task_runner=ThreadPoolTaskRunner())
    def f():
        raise KeyError("flow-body")

    with pytest.raises(KeyError):
        f()
    assert f(return_state=True).is_failed()


def test_subflows_share_parent_runner_and_tasks_call_flows():
    runners = []

    @flow
    def child(x):
        from daskflow.engine.core.context import flow_run_ctx

        runners.append(flow_run_ctx.get().runner)
        return inc.submit(x).result()

    @task
    def calls_flow(x):
        return child(x) * 10

    @flow(task_runner=ThreadPoolTaskRunner())
    def parent():
        from daskflow.engine.core.context import flow_run_ctx

        runners.append(flow_run_ctx.get().runner)
        return child(1), calls_flow(2)

    assert parent() == (2, 30)
    assert runners[0] is runners[1] is runners[2]


def test_async_flow_with_async_tasks():
    @task
    async def slow_double(x):
        await asyncio.sleep(0.05)
        return 2 * x

    @flow(task_runner=ThreadPoolTaskRunner())
    async def f():
        results = await asyncio.gather(*(slow_double(i) for i in range(10)))
        return list(results)

    assert asyncio.run(f()) == [2 * i for i in range(10)]


def test_flow_on_dask_cluster(on_cluster):
    @flow
    def f(n):
        return sum(inc.map(range(n)).result())

    assert f(100) == sum(range(1, 101))


def test_submit_outside_flow_uses_default_runner(on_cluster):
    fut = inc.submit(41)
    assert fut.result(timeout=60) == 42
    assert inc.map([1, 2]).result() == [2, 3]
