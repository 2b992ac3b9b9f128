"""Tasks and runs behave as Prefect 3's: binding, identity, returned states, hooks, options."""

import asyncio
import logging

import pytest

from daskflow import flow, get_run_logger, task
from daskflow.cache import DEFAULT, INPUTS, NO_CACHE
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.states import Completed, Failed, State

# -- binding in classes -------------------------------------------------------------------


class Scaler:
    factor = 3

    def __init__(self, k):
        self.k = k

    @task
    def scale(self, x):
        return self.k * x

    @classmethod
    @task
    def by_class_outer(cls, x):
        return cls.factor * x

    @task
    @classmethod
    def by_class_inner(cls, x):
        return cls.factor * x + 1

    @staticmethod
    @task
    def static_outer(x):
        return -x

    @task
    @staticmethod
    def static_inner(x):
        return -x - 1


def test_task_on_methods_binds_as_python_does():
    s = Scaler(2)
    assert s.scale(5) == 10
    assert Scaler.by_class_outer(2) == 6 and s.by_class_outer(2) == 6
    assert Scaler.by_class_inner(2) == 7 and s.by_class_inner(2) == 7
    assert Scaler.static_outer(4) == -4 and s.static_inner(4) == -5
    assert Scaler.scale(s, 1) == 2  # through the class, self passed by hand


def test_bound_task_submits_and_maps():
    s = Scaler(10)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f():
        return s.scale.submit(2).result(), s.scale.map([1, 2]).result()

    assert f() == (20, [10, 20])


# -- identity -------------------------------------------------------------------------------


@task
def identity(x):
    return x


@pytest.mark.parametrize("value", [[1, 2, 3], {"a": [1]}, (object(), 2), {1, 2}, [[object()]], object()])
def test_direct_call_passes_arguments_by_identity(value):
    assert identity(value) is value

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return identity(value) is value

    assert f() is True


# -- returned states ------------------------------------------------------------------------


def test_body_returning_completed_state_gives_its_data():
    @task
    def t():
        return Completed(data=3)

    assert t() == 3


def test_body_returning_failed_state_fails_and_is_retried():
    calls = []

    @task(retries=2)
    def t():
        calls.append(1)
        return Failed(message="refused")

    state = t(return_state=True)
    assert state.is_failed() and len(calls) == 3
    assert "refused" in str(state.result(raise_on_failure=False))
    with pytest.raises(Exception, match="refused"):
        t()


def test_fast_path_body_returning_failed_state():
    @task
    def t(x):
        return Failed(message=f"no {x}") if x else x

    assert t(0) == 0
    assert t(1, return_state=True).is_failed()
    states = t.map([0, 1], return_state=True)
    assert [s.is_failed() for s in states] == [False, True]


# -- hooks ----------------------------------------------------------------------------------


def test_async_task_hooks_are_awaited():
    seen = []

    async def done(tsk, run, state):
        await asyncio.sleep(0)
        seen.append(("completion", state.result()))

    async def failed(tsk, run, state):
        await asyncio.sleep(0)
        seen.append(("failure", run.name))

    @task(on_completion=[done], on_failure=[failed], task_run_name="bad-{x}")
    def t(x):
        if x < 0:
            raise ValueError(x)
        return x

    t(2)
    t(-1, return_state=True)
    assert seen == [("completion", 2), ("failure", "bad--1")]


def test_async_hooks_awaited_inside_a_running_loop():
    seen = []

    async def done(tsk, run, state):
        seen.append(await state.result())  # async code: awaitable, as in Prefect

    @task(on_completion=[done])
    async def t(x):
        return x

    async def main():
        return await t(4)

    assert asyncio.run(main()) == 4 and seen == [4]


def test_hooks_receive_the_state_return_state_returns():
    received = []

    @task(on_completion=[lambda tsk, run, s: received.append(s)], on_failure=[lambda tsk, run, s: received.append(s)])
    def t(x):
        if x:
            raise ValueError("x")
        return x

    ok = t(0, return_state=True)
    bad = t(1, return_state=True)
    assert received[0] is ok and received[1] is bad

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        return t.submit(0, return_state=True)

    state = f(return_state=True).data
    assert received[2] is state


# -- return_state on submit and map ---------------------------------------------------------


def test_submit_and_map_take_return_state():
    @task
    def half(x):
        if x % 2:
            raise ValueError("odd")
        return x // 2

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f():
        one = half.submit(4, return_state=True)
        many = half.map([2, 3], return_state=True)
        return one, many

    one, many = f()
    assert isinstance(one, State) and one.result() == 2
    assert [s.type.value for s in many] == ["COMPLETED", "FAILED"]


# -- definition-time checks and option attributes -------------------------------------------


def test_task_options_checked_at_definition():
    with pytest.raises(TypeError, match="list of hooks"):
        task(on_completion=lambda *a: None)(lambda: None)
    with pytest.raises(TypeError, match="callable"):
        task(on_failure=["not callable"])(lambda: None)
    with pytest.raises(TypeError, match="task_run_name"):
        task(task_run_name=12)(lambda: None)
    with pytest.raises(ValueError, match="50"):
        task(retries=51, retry_delay_seconds=[1] * 51)(lambda: None)
    task(retries=50, retry_delay_seconds=[1] * 50)(lambda: None)


def test_task_run_name_callable_returning_non_string_fails_the_run():
    @task(task_run_name=lambda: 42)
    def t():
        return 1

    state = t(return_state=True)
    assert state.is_failed()
    with pytest.raises(TypeError, match="string is required"):
        state.result()


def test_task_option_attributes_report_prefect_defaults():
    plain = task(lambda: None)
    assert plain.cache_policy is DEFAULT and plain.persist_result is None
    assert not plain.caches  # caching stays opt-in
    assert task(cache_policy=INPUTS)(lambda: None).persist_result is True
    assert task(persist_result=False)(lambda: None).cache_policy is NO_CACHE
    tagged = task(tags=["a", "b"])(lambda: None)
    assert isinstance(tagged.tags, set) and tagged.tags == {"a", "b"}


# -- log records ----------------------------------------------------------------------------


def test_run_log_records_carry_prefect_fields():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logging.getLogger("daskflow.task_runs").addHandler(handler)

    @task(task_run_name="hello-{x}")
    def t(x):
        get_run_logger().info("hi")
        return x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def pipeline():
        return t(1, return_state=True)

    try:
        state = pipeline()
    finally:
        logging.getLogger("daskflow.task_runs").removeHandler(handler)
    (rec,) = records
    assert rec.task_run_id == state.task_run_id and rec.task_run_name == "hello-1"
    assert rec.task_name == "t" and rec.flow_name == "pipeline" and rec.flow_run_id
