"""Mapping and futures behave as Prefect 3's."""

import threading

import pytest

from daskflow import allow_failure, as_completed, flow, quote, task, unmapped, wait
from daskflow.engine.client.futures import DoneAndNotDoneFutures
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.states import Completed, Failed, State


def threads_flow(fn):
    return flow(task_runner=ThreadPoolTaskRunner(max_workers=2))(fn)


@task
def pair(x, ys=(1, 2, 3)):
    return x, ys


def test_iterable_defaults_are_not_mapped():
    @threads_flow
    def f():
        return pair.map([1, 2]).result()

    assert f() == [(1, (1, 2, 3)), (2, (1, 2, 3))]


def test_iterables_in_kwargs_are_mapped():
    @task
    def kw(**kwargs):
        return sorted(kwargs.items())

    @threads_flow
    def f():
        return kw.map(a=[1, 2], b=unmapped([9]), c="s").result()

    assert f() == [[("a", 1), ("b", [9]), ("c", "s")], [("a", 2), ("b", [9]), ("c", "s")]]


def test_allow_failure_around_an_iterable_is_iterated():
    @task
    def maybe(x):
        if x == 1:
            raise ValueError("one")
        return x

    @task
    def seen(x):
        return "failed" if isinstance(x, ValueError) else x

    @threads_flow
    def f():
        ups = maybe.map([0, 1, 2])
        return seen.map(allow_failure(ups)).result()

    assert f() == [0, "failed", 2]


def test_quote_around_an_iterable_is_iterated_and_each_element_stays_quoted():
    @task
    def kind(x):
        return type(x).__name__

    @threads_flow
    def f():
        fut = pair.submit(0)
        return kind.map(quote([fut, fut])).result()

    assert f() == ["TaskRunFuture", "TaskRunFuture"]  # futures inside a quote are not resolved


def test_a_state_can_be_mapped_over():
    @threads_flow
    def f():
        return pair.map(Completed(data=[5, 6]), unmapped(None)).result()

    assert f() == [(5, None), (6, None)]


def test_quote_unquote():
    assert quote([1]).unquote() == [1]


def test_wait_returns_done_and_not_done():
    gate = threading.Event()

    @task
    def blocked():
        gate.wait(10)

    @threads_flow
    def f():
        quick = pair.submit(1)
        slow = blocked.submit()
        quick.wait()
        result = wait([quick, slow], timeout=0.05)
        gate.set()
        done, not_done = result
        return (isinstance(result, DoneAndNotDoneFutures), result.done == {quick}, result.not_done == {slow},
                done is result.done)

    assert f() == (True, True, True, True)


def test_wait_and_as_completed_reject_negative_timeouts():
    with pytest.raises(ValueError, match="timeout"):
        wait([], timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        list(as_completed([], timeout=-1))


def test_as_completed_timeout_names_unfinished_count():
    gate = threading.Event()

    @task
    def blocked():
        gate.wait(10)

    @threads_flow
    def f():
        futs = [pair.submit(1), blocked.submit()]
        futs[0].wait()
        try:
            with pytest.raises(TimeoutError, match=r"1 \(of 2\) futures unfinished"):
                for _ in as_completed(futs, timeout=0.1):
                    pass
        finally:
            gate.set()

    f()


def test_failed_state_result_without_raising_returns_its_data():
    assert Failed(data="why").result(raise_on_failure=False) == "why"
    err = KeyError("k")
    assert Failed(data=err).result(raise_on_failure=False) is err


def test_state_equality_as_prefect():
    a = Completed(data=[1])
    b = State(a.type, a.name, data=[1], timestamp=a.timestamp)
    assert a == b and a is not b
    assert a != State(a.type, a.name, data=[2], timestamp=a.timestamp)
    assert a != Completed(data=[1], message="other")
