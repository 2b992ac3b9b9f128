"""Flows behave as Prefect 3's: the return-value rule, async flows, options and hooks."""

import asyncio

import pytest

from daskflow import flow, task
from daskflow.exceptions import FailedRun, FlowRunTimeoutError
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.states import Cancelled, Completed, Crashed, Failed, State


@task
def echo(x):
    return x


@task
def explode():
    raise ValueError("exploded")


def threads_flow(**options):
    return flow(task_runner=ThreadPoolTaskRunner(max_workers=2), **options)


# -- the return-value rule ----------------------------------------------------------------


def test_flow_returned_future_becomes_its_state_and_fails_the_flow():
    @threads_flow()
    def f():
        return explode.submit()

    state = f(return_state=True)
    assert state.is_failed()
    inner = state.result(raise_on_failure=False)
    assert isinstance(inner, State) and inner.is_failed()
    with pytest.raises(ValueError, match="exploded"):
        f()


def test_flow_returned_completed_future_gives_the_caller_a_state():
    @threads_flow()
    def f():
        return echo.submit(5)

    out = f()
    assert isinstance(out, State) and out.is_completed() and out.result() == 5


def test_flow_returning_failed_state_and_string_completes():
    @threads_flow()
    def f():
        return explode(return_state=True), "still fine"

    state = f(return_state=True)
    assert state.is_completed()
    failed, text = f()
    assert failed.is_failed() and text == "still fine"


def test_flow_returning_only_states_fails_if_any_failed():
    @threads_flow()
    def f():
        return [echo(1, return_state=True), explode(return_state=True), echo(2, return_state=True)]

    state = f(return_state=True)
    assert state.is_failed() and state.message == "1/3 states failed."
    assert [s.type.value for s in f()] == ["COMPLETED", "FAILED", "COMPLETED"]  # the value itself, unraised


def test_flow_returning_map_futures_fails_on_a_failed_element():
    @task
    def maybe(x):
        if x == 2:
            raise ValueError("two")
        return x

    @threads_flow()
    def f():
        return maybe.map([1, 2, 3])

    state = f(return_state=True)
    assert state.is_failed()
    assert all(isinstance(s, State) for s in state.data)


def test_flow_returning_a_manual_state_takes_it_as_final():
    @threads_flow()
    def failed():
        return Failed(message="by hand", data="hello!")

    state = failed(return_state=True)
    assert state.is_failed() and state.message == "by hand"
    assert state.result(raise_on_failure=False) == "hello!"
    with pytest.raises(FailedRun, match="hello!"):
        failed()

    @threads_flow()
    def completed():
        return Completed(data=42)

    assert completed() == 42


def test_flow_any_other_value_completes():
    @threads_flow()
    def f():
        return {"x": [1, 2]}

    assert f() == {"x": [1, 2]}
    assert f(return_state=True).is_completed()


# -- async flows ----------------------------------------------------------------------------


def test_async_flow_call_returns_a_coroutine_from_sync_code():
    @threads_flow()
    async def f(x):
        return x + 1

    coro = f(1)
    assert asyncio.iscoroutine(coro)
    assert asyncio.run(coro) == 2


def test_async_subflow_is_awaited_by_its_parent():
    @flow
    async def child(x):
        await asyncio.sleep(0)
        return x * 10

    @threads_flow()
    async def parent():
        return await child(2) + await child(3)

    assert asyncio.run(parent()) == 50


# -- options --------------------------------------------------------------------------------


def test_flow_run_name_template_and_callable():
    names = []

    def remember(flow, flow_run, state):
        names.append(flow_run.name)

    @threads_flow(flow_run_name="load-{day}", on_completion=[remember])
    def templated(day):
        return day

    @threads_flow(flow_run_name=lambda: "from-callable", on_completion=[remember])
    def called():
        return 1

    templated("mon")
    called()
    assert names == ["load-mon", "from-callable"]


def test_flow_retries_rerun_a_body_that_raised():
    attempts = []

    @threads_flow(retries=2, retry_delay_seconds=0)
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "done"

    assert flaky() == "done" and len(attempts) == 3


def test_flow_out_of_retries_fails():
    @threads_flow(retries=1)
    def always():
        raise RuntimeError("never")

    state = always(return_state=True)
    assert state.is_failed()


def test_flow_timeout_fails_it_timed_out():
    import threading

    release = threading.Event()

    @threads_flow(timeout_seconds=0.2)
    def stuck():
        release.wait(10)

    try:
        state = stuck(return_state=True)
    finally:
        release.set()
    assert state.is_failed() and state.name == "TimedOut"
    assert isinstance(state.result(raise_on_failure=False), FlowRunTimeoutError)


def test_async_flow_timeout():
    @threads_flow(timeout_seconds=0.1)
    async def stuck():
        await asyncio.sleep(10)

    state = asyncio.run(stuck(return_state=True))
    assert state.name == "TimedOut"


def test_flow_version_and_description():
    @threads_flow(version="1.2", description="explains itself")
    def f():
        """docstring"""

    @threads_flow()
    def g():
        """the docstring"""

    assert f.version == "1.2" and f.description == "explains itself"
    assert g.description == "the docstring"
    assert f.with_options(version="2").version == "2"


def test_flow_options_are_checked_at_definition():
    with pytest.raises(TypeError, match="list of hooks"):
        flow(on_completion=lambda *a: None)(lambda: None)
    with pytest.raises(TypeError, match="callable"):
        flow(on_failure=[1])(lambda: None)
    with pytest.raises(ValueError, match="retries"):
        flow(retries=-1)(lambda: None)
    with pytest.raises(TypeError, match="flow_run_name"):
        flow(flow_run_name=3)(lambda: None)


# -- hooks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("returned, hook", [
    (lambda: 1, "on_completion"),
    (lambda: Failed(message="no"), "on_failure"),
    (lambda: Cancelled(message="stop"), "on_cancellation"),
    (lambda: Crashed(message="gone"), "on_crashed"),
])
def test_flow_final_state_fires_its_hook(returned, hook):
    fired = []

    @threads_flow(**{hook: [lambda fl, run, state: fired.append((fl.name, run.flow_name, state.type.value))]})
    def f():
        return returned()

    state = f(return_state=True)
    assert fired == [("f", "f", state.type.value)]


def test_flow_hooks_as_decorators_and_on_running_and_async_hooks():
    seen = []

    @threads_flow()
    def f(x):
        if x < 0:
            raise ValueError("negative")
        return x

    @f.on_running
    def running(fl, run, state):
        seen.append(("running", state.is_running(), run.parameters))

    @f.on_completion
    async def completed(fl, run, state):
        await asyncio.sleep(0)
        seen.append(("completed", state.result()))

    @f.on_failure
    def failed(fl, run, state):
        seen.append(("failed", type(state.result(raise_on_failure=False)).__name__))

    f(1)
    f(-1, return_state=True)
    assert seen == [("running", True, {"x": 1}), ("completed", 1), ("running", True, {"x": -1}),
                    ("failed", "ValueError")]


def test_a_raising_hook_does_not_change_the_flow_state():
    def broken(fl, run, state):
        raise RuntimeError("hook bug")

    @threads_flow(on_completion=[broken])
    def f():
        return 7

    assert f() == 7


def test_flow_with_var_args_and_var_kwargs():
    @threads_flow()
    def f(a, *args, scale=1, **kwargs):
        return (a + sum(args)) * scale, sorted(kwargs)

    assert f(1, 2, 3, scale=2, x=1, y=2) == (12, ["x", "y"])
