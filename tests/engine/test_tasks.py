import asyncio
import subprocess
import sys
from types import SimpleNamespace

import pytest

from daskflow import flow, task
from daskflow.engine.api.tasks import Task, compute_task_key
from daskflow.exceptions import ReservedArgumentError
from daskflow.runners import ThreadPoolTaskRunner


@task
def double(x):
    return 2 * x


@task(name="renamed", retries=2)
def named(x, y=3):
    return x + y


@task
async def async_double(x):
    await asyncio.sleep(0)
    return 2 * x


def test_task_call_returns_value_outside_flow():
    assert double(21) == 42
    assert named(1) == 4 and named(1, y=10) == 11


def test_task_bare_and_with_options_decorators():
    assert isinstance(double, Task) and double.name == "double"
    assert named.name == "renamed" and named.retries == 2
    assert double.fn(5) == 10


def test_task_with_options_copies():
    t = named.with_options(name="other", retries=5)
    assert (t.name, t.retries) == ("other", 5)
    assert (named.name, named.retries) == ("renamed", 2)
    assert t(1) == 4
    with pytest.raises(TypeError, match="unknown option"):
        named.with_options(retires=1)


def test_task_async_call_from_sync_and_async():
    assert async_double(4) == 8

    async def main():
        return await async_double(5)

    assert asyncio.run(main()) == 10


def test_task_call_inside_flow_and_inside_task():
    @task
    def outer(x):
        return double(x) + 1

    @flow(task_runner=ThreadPoolTaskRunner())
    def pipeline(x):
        return outer(x)

    assert outer(2) == 5
    assert pipeline(3) == 7


def test_task_call_raises_original_exception_and_return_state_fails():
    class Boom(Exception):
        pass

    @task
    def bad():
        raise Boom("no")

    with pytest.raises(Boom, match="no"):
        bad()
    state = bad(return_state=True)
    assert state.is_failed() and state.name == "Failed" and isinstance(state.data, Boom)
    ok = double(2, return_state=True)
    assert ok.is_completed() and ok.result() == 4


def test_task_key_golden_values():
    # Pinned: a change here changes every task key (and so every cache key) users have.
    assert compute_task_key("double", _fake("etl.steps", "double")) == "double-06ace358"
    assert compute_task_key("load-csv", _fake("__main__", "load")) == "load-csv-b9b3bd1d"
    assert double.task_key == compute_task_key("double", double.fn)


def _fake(module, qualname):
    return SimpleNamespace(__module__=module, __qualname__=qualname)


def test_task_key_differs_for_same_name_other_function():
    def a():
        pass

    def b():
        pass

    assert task(name="same")(a).task_key != task(name="same")(b).task_key
    assert task(name="same")(a).task_key.startswith("same-")


def test_task_key_is_stable_across_processes():
    code = (
        "from daskflow import task\n"
        "def double(x): return 2 * x\n"
        "print(task(double).task_key)"
    )
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(keys) == 1
    assert keys.pop().strip() == compute_task_key("double", _fake("__main__", "double"))


def test_task_rejects_non_callable_and_reserved_names():
    with pytest.raises(TypeError, match="needs a callable"):
        task(42)
    with pytest.raises(ReservedArgumentError, match="return_state"):
        @task
        def f(return_state):
            pass
    with pytest.raises(ReservedArgumentError, match="wait_for"):
        @task
        def g(x, wait_for=None):
            pass


def test_task_bad_arguments_name_the_task():
    with pytest.raises(TypeError, match="task 'double'"):
        double(1, 2)


def test_task_bad_settings_fail_at_decoration():
    with pytest.raises(ValueError, match="task 'f'.*retries"):
        @task(retries=-1)
        def f():
            pass
    with pytest.raises(ValueError, match="'g'"):
        @task(retries=1, retry_delay_seconds=[-1])
        def g():
            pass
    with pytest.raises(TypeError, match="'h'"):
        @task(retries=1, retry_delay_seconds="soon")
        def h():
            pass
    with pytest.raises(ValueError, match="jitter"):
        @task(retry_jitter_factor=-0.5)
        def j():
            pass
