import threading

import pytest

from daskflow import as_completed, flow, task, unmapped, wait
from daskflow.exceptions import MappingLengthMismatch, MappingMissingIterable


@task
def inc(x):
    return x + 1


@task
def add(x, y):
    return x + y


@task
def gate(event_name):
    # Blocks until the test's event is set; only used with the thread runner.
    EVENTS[event_name].wait(30)
    return event_name


EVENTS: dict[str, threading.Event] = {}


def test_submit_future_api(runner):
    @flow(task_runner=runner)
    def f():
        fut = inc.submit(1)
        assert fut.result(timeout=30) == 2
        assert fut.state.is_completed() and fut.state.name == "Completed"
        assert len(fut.task_run_id) == 36
        fut.wait(5)
        seen = []
        done = threading.Event()
        fut.add_done_callback(lambda f: (seen.append(f.result()), done.set()))
        assert done.wait(10) and seen == [2]
        return "ok"

    assert f() == "ok"


def test_map_futures_result_and_wait(runner):
    @flow(task_runner=runner)
    def f():
        futs = inc.map(range(100))
        futs.wait()
        assert len(futs) == 100 and futs[5].result() == 6 and futs[-1].result() == 100
        assert [x.result() for x in futs[:3]] == [1, 2, 3]
        return futs.result()

    assert f() == list(range(1, 101))


def test_map_rules_broadcast_and_strings(runner):
    @flow(task_runner=runner)
    def f():
        a = add.map([1, 2, 3], unmapped(10)).result()
        b = add.map([1, 2], 5).result()  # non-iterable is broadcast
        c = add.map(["a", "b"], "xy").result()  # strings are not split
        d = add.map([[1], [2]], unmapped([0])).result()
        return a, b, c, d

    assert f() == ([11, 12, 13], [6, 7], ["axy", "bxy"], [[1, 0], [2, 0]])


def test_map_over_future_resolving_to_list(runner):
    @task
    def make(n):
        return list(range(n))

    @flow(task_runner=runner)
    def f():
        return inc.map(make.submit(4)).result()

    assert f() == [1, 2, 3, 4]


def test_map_length_mismatch_names_parameters():
    with pytest.raises(MappingLengthMismatch, match=r"x=3, y=2") as info:
        add.map([1, 2, 3], [1, 2])
    assert isinstance(info.value, ValueError) and "add" in str(info.value)


def test_map_without_iterable_is_type_error():
    with pytest.raises(MappingMissingIterable, match="add") as info:
        add.map(1, 2)
    assert isinstance(info.value, TypeError)


def test_wait_returns_done_and_not_done():
    from daskflow.runners import ThreadPoolTaskRunner

    EVENTS["slow"] = threading.Event()

    @flow(task_runner=ThreadPoolTaskRunner(4))
    def f():
        fast = inc.submit(1)
        slow = gate.submit("slow")
        fast.wait(10)
        done, not_done = wait([fast, slow], timeout=0.2)
        EVENTS["slow"].set()
        return done == {fast}, not_done == {slow}, slow.result()

    assert f() == (True, True, "slow")


def test_as_completed_yields_in_completion_order():
    from daskflow.runners import ThreadPoolTaskRunner

    EVENTS["first"] = threading.Event()
    EVENTS["second"] = threading.Event()

    @flow(task_runner=ThreadPoolTaskRunner(4))
    def f():
        a = gate.submit("first")
        b = gate.submit("second")
        order = []
        EVENTS["second"].set()
        for fut in as_completed([a, b], timeout=30):
            order.append(fut.result())
            EVENTS["first"].set()
        return order

    assert f() == ["second", "first"]


def test_map_of_zero_elements():
    from daskflow.runners import ThreadPoolTaskRunner

    @flow(task_runner=ThreadPoolTaskRunner())
    def f():
        return inc.map([]).result()

    assert f() == []
