"""Calls submitted in a burst reach the Dask scheduler as one graph (``runners.batching``)."""

import threading

import time

import dask
import pytest

from daskflow import flow, task
from daskflow.runners import batching
from daskflow.runners.dask import DaskTaskRunner

pytestmark = pytest.mark.skipif(not batching.available(), reason="this Dask lacks the graph-submission names")


def add(*xs):
    return sum(xs)


def first(xs):
    return xs[0]


t_add = task(add)


def graph_updates(client, since: float = 0.0) -> list[int]:
    """How many calls each graph this client sent since ``since`` (the scheduler's clock) held,
    from the scheduler's events: by time, not position (the event log is bounded: a session
    cluster's may be full, and then it only shifts)."""
    return [e["metrics"]["tasks"] for t, e in client.get_events(client.id) if t >= since
            and isinstance(e, dict) and e.get("action") == "update-graph" and e.get("status") == "OK"]


def test_a_burst_of_submit_calls_is_one_graph_per_batch_not_one_per_call(dask_runner):
    @flow(task_runner=dask_runner)
    def diamond():
        fans = []
        for r in range(20):
            root = t_add.submit(r, 1)
            fans.append(t_add.submit(*[t_add.submit(root, 1) for _ in range(5)]))
        return t_add.submit(*fans).result()

    client = dask_runner.client
    before = time.time()
    assert diamond() == sum(5 * (r + 2) for r in range(20))
    sent = graph_updates(client, before)
    assert sum(sent) == 20 * 7 + 1  # every call went, once
    assert len(sent) < 20  # in a few graphs, not 141 messages


def test_a_delay_of_zero_sends_every_call_alone(dask_runner):
    with dask.config.set({"daskflow.submit-batch.delay": 0}):
        runner = DaskTaskRunner(address=dask_runner.address)
        before = time.time()
        handles = [runner.submit_many(add, [i], keys=[f"add-zero-{i}"])[0] for i in range(10)]
        runner.wait(handles, 60)
        assert runner.gather(handles) == list(range(10))
        assert graph_updates(runner.client, before) == [1] * 10


def test_held_calls_go_on_their_own_without_anyone_waiting(dask_runner):
    runner = DaskTaskRunner(address=dask_runner.address)
    handle = runner.submit_many(add, [1], [2], keys=["add-timer"])[0]
    # Dask's own wait, not the runner's (which sends held calls first): only the timer sends it
    assert handle.result(timeout=30) == 3


def test_an_upstream_future_dropped_before_its_graph_is_sent_is_kept_until_then(dask_runner):
    runner = DaskTaskRunner(address=dask_runner.address)
    tails = []
    for i in range(30):
        head = runner.submit_many(add, [i], keys=[f"add-head-{i}"])[0]
        runner.flush()  # the head goes; its tail is held
        tails.append(runner.submit_many(first, [[head]], keys=[f"first-tail-{i}"])[0])
        del head  # the scheduler must not hear of its release before the graph naming it
    runner.wait(tails, 60)
    assert runner.gather(tails) == list(range(30))


def test_a_call_that_cannot_be_pickled_fails_alone_not_its_batch(dask_runner):
    runner = DaskTaskRunner(address=dask_runner.address)
    good = runner.submit_many(add, [1, 2], [10, 20], keys=["add-good-1", "add-good-2"])
    bad = runner.submit_many(add, [[threading.Lock()]], keys=["add-bad"])[0]
    runner.wait(good + [bad], 60)
    assert runner.gather(good) == [11, 22]
    err = runner.gather([bad])[0]
    assert isinstance(err, TypeError) and "add-bad" in str(err) and "could not be sent" in str(err)
    assert batching.available()  # one call's arguments are its own failure: the fast path stays on


def test_a_windowed_call_is_prepared_when_it_goes_and_a_failed_preparation_fails_it_alone(dask_runner):
    runner = DaskTaskRunner(address=dask_runner.address)
    prepared = []

    def prepare(x):
        prepared.append(x)
        if x == 5:
            raise ValueError("five will not pickle")
        return x

    handles = runner.submit_windowed(add, list(range(8)), keys=[f"add-win-{i}" for i in range(8)], window=2,
                                     prepare=prepare)
    assert prepared == [0, 1]  # the held calls wait unprepared
    runner.wait(handles, 60)
    assert sorted(prepared) == list(range(8))
    out = runner.gather(handles)
    assert out[:5] + out[6:] == [0, 1, 2, 3, 4, 6, 7]
    assert isinstance(out[5], TypeError) and "add-win-5" in str(out[5]) and "five will not pickle" in str(out[5])


def test_a_closed_client_refuses_a_call_at_once_not_holds_it(dask_runner):
    from distributed.client import ClosedClientError

    from daskflow.runners.clients import close_shared_client

    runner = DaskTaskRunner(address=dask_runner.address)
    runner.submit_many(add, [1], keys=["add-before-close"])
    close_shared_client(dask_runner.address)  # the next runner of this address makes a new client
    with pytest.raises(ClosedClientError):
        runner.submit_many(add, [1], keys=["add-after-close"])


def test_as_completed_starts_the_calls_held_for_one_graph(dask_runner):
    from daskflow import as_completed

    with dask.config.set({"daskflow.submit-batch.delay": "60s"}):  # only waiting can send them
        @flow(task_runner=DaskTaskRunner(address=dask_runner.address))
        def f():
            futures = [t_add.submit(i, 1) for i in range(5)]
            return sorted(fut.result() for fut in as_completed(futures, timeout=30))

        assert f() == [1, 2, 3, 4, 5]


def test_a_done_callback_starts_its_held_call(dask_runner):
    ended = threading.Event()
    with dask.config.set({"daskflow.submit-batch.delay": "60s"}):  # only a waiter can send it
        @flow(task_runner=DaskTaskRunner(address=dask_runner.address))
        def f():
            future = t_add.submit(1, 2)
            future.add_done_callback(lambda _: ended.set())
            assert ended.wait(30)
            return future.result()

        assert f() == 3
