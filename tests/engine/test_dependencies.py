import pytest

from daskflow import allow_failure, flow, quote, task
from daskflow.exceptions import UnfinishedRun


@task
def inc(x):
    return x + 1


@task
def total(xs):
    return sum(xs)


@task
def fail(msg="boom"):
    raise ValueError(msg)


@task
def describe(x):
    return f"got {type(x).__name__}: {x}"


def test_futures_in_containers_are_resolved(runner):
    @task
    def combine(items, mapping, pair):
        return sum(items) + mapping["k"] + pair[0]

    @flow(task_runner=runner)
    def f():
        a, b = inc.submit(1), inc.submit(2)
        return combine.submit([a, b], {"k": a}, (b, 0)).result()

    assert f() == 2 + 3 + 2 + 3


def test_wait_for_orders_without_data(runner, tmp_path):
    log = tmp_path / "order.txt"

    @task
    def write(tag):
        with open(log, "a") as fh:
            fh.write(tag)
        return tag

    @flow(task_runner=runner)
    def f():
        first = write.submit("a")
        second = write.submit("b", wait_for=[first])
        return second.result()

    assert f() == "b"
    assert log.read_text() == "ab"


def test_downstream_of_failed_upstream_is_not_ready(runner):
    states = {}

    @flow(task_runner=runner)
    def f():
        bad = fail.submit()
        down = inc.submit(bad)
        waited = inc.submit(1, wait_for=[bad])
        states.update(bad=bad.task_run_id, down=down.state, waited=waited.state)
        down.wait()
        waited.wait()
        states.update(down=down.state, waited=waited.state)
        with pytest.raises(UnfinishedRun):
            down.result()

    f()
    for key in ("down", "waited"):
        state = states[key]
        assert state.name == "NotReady" and state.is_final() and not state.is_completed()
        assert states["bad"] in state.message
        with pytest.raises(UnfinishedRun):
            state.result()


def test_allow_failure_passes_exception(runner):
    @flow(task_runner=runner)
    def f():
        bad = fail.submit("kaput")
        return describe.submit(allow_failure(bad)).result()

    assert f() == "got ValueError: kaput"


def test_quote_passes_value_untouched(runner):
    @flow(task_runner=runner)
    def f():
        return describe.submit(quote([1, 2])).result()

    assert f() == "got list: [1, 2]"


def test_map_over_map_with_failures_isolates_elements(runner):
    @task
    def maybe(x):
        if x == 3:
            raise ValueError("three")
        return x

    @flow(task_runner=runner)
    def f():
        first = maybe.map(range(6))
        second = inc.map(first)
        return [s.name for s in second.states], first[3].state.name

    names, up = f()
    assert up == "Failed"
    assert names == ["Completed"] * 3 + ["NotReady"] + ["Completed"] * 2


def test_direct_call_with_future_argument(runner):
    @flow(task_runner=runner)
    def f():
        return inc(inc.submit(1))

    assert f() == 3


def test_reduce_over_map(runner):
    @flow(task_runner=runner)
    def f():
        return total.submit(inc.map(range(10))).result()

    # a MapFutures passed whole to .submit() is a list of futures: resolved element-wise
    assert f() == sum(range(1, 11))
