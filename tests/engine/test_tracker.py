"""The state tracker: histories, live Running, Crashed on worker loss, logs from workers."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskflow import flow, get_run_logger, task
from daskflow.engine.tracking import tracker
from daskflow.exceptions import MissingContextError
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.store.runs import open_run_store

GATES: dict[str, threading.Event] = {}
ATTEMPTS: dict[int, int] = {}


def until(predicate, timeout=30.0):
    """Poll a condition the test does not control the timing of (not a sleep-as-sync)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@task(retries=1)
def flaky(x, marker):
    # fails the first attempt of odd elements; the marker file counts attempts across processes
    path = f"{marker}-{x}"
    first = not os.path.exists(path)
    open(path, "a").close()
    if x % 2 and first:
        raise ValueError(f"first attempt of {x}")
    if x == 4:
        raise KeyError("always")
    return x


def test_tracker_store_histories_match_future_history(runner, tmp_path):
    @flow(task_runner=runner)
    def f():
        futs = flaky.map(range(6), marker=str(tmp_path / "m"))
        futs.wait()
        return [(fut.task_run_id, [s.name for s in fut.history()]) for fut in futs]

    expected = f()
    assert tracker.flush()
    store = open_run_store()
    for rid, names in expected:
        rec = store.task_run(rid)
        assert [h["name"] for h in rec["history"]] == names, rid
    assert expected[1][1] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert store.task_run(expected[4][0])["state"] == "Failed"
    assert "KeyError" in store.task_run(expected[4][0])["traceback"]
    assert store.task_run(expected[1][0])["run_count"] == 2


@task
def wait_gate(name):
    GATES[name].wait(30)
    return name


@task
def wait_dask_event(name):
    from distributed import Event

    Event(name).wait(60)
    return name


def test_tracker_running_visible_while_run_blocks_threads():
    GATES["run1"] = threading.Event()
    runner = ThreadPoolTaskRunner(2)
    with runner:
        from daskflow.engine.core.context import FlowRunContext, flow_run_ctx

        token = flow_run_ctx.set(FlowRunContext(None, "00000000-0000-0000-0000-000000000001", runner, {}))
        try:
            fut = wait_gate.submit("run1")
            until(lambda: fut.state.name == "Running")
            assert tracker.flush()
            assert open_run_store().task_run(fut.task_run_id)["state"] == "Running"
            GATES["run1"].set()
            assert fut.result() == "run1"
        finally:
            flow_run_ctx.reset(token)
    assert tracker.flush()
    assert open_run_store().task_run(fut.task_run_id)["state"] == "Completed"


def test_tracker_running_visible_while_run_blocks_dask(dask_runner):
    from distributed import Client, Event

    client = Client(dask_runner.address, set_as_default=False)
    gate = Event("gate-running", client=client)

    @flow(task_runner=dask_runner)
    def f():
        fut = wait_dask_event.submit("gate-running")
        until(lambda: fut.state.name == "Running")
        tracker.flush()
        seen = open_run_store().task_run(fut.task_run_id)
        gate.set()
        return seen, fut.result(), fut.task_run_id

    try:
        seen, value, rid = f()
    finally:
        client.close()
    assert seen["state"] == "Running" and seen["worker"].startswith("tcp://")
    assert value == "gate-running"
    tracker.flush()
    assert open_run_store().task_run(rid)["state"] == "Completed"


def test_tracker_crashed_mirrored_on_worker_loss():
    # A private one-worker cluster that gives up at the first death: the session cluster's
    # workers stay up for the other tests, and nothing waits for restarts.
    import dask.config
    from distributed import LocalCluster

    from daskflow.runners.dask import DaskTaskRunner

    @task
    def die():
        os._exit(1)

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0")
    try:
        @flow(task_runner=DaskTaskRunner(address=lc.scheduler_address))
        def f():
            fut = die.submit()
            fut.wait(120)
            return fut.task_run_id, fut.state.name

        rid, name = f()
    finally:
        from daskflow.runners.clients import close_shared_client

        close_shared_client(lc.scheduler_address)
        lc.close()
    assert name == "Crashed"
    assert tracker.flush()
    rec = open_run_store().task_run(rid)
    assert rec["state"] == "Crashed"
    assert "KilledWorker" in rec["error"]
    assert [h["name"] for h in rec["history"]][-1] == "Crashed"


@task
def chatty(x):
    get_run_logger().info("element %s says hi", x)
    return x


@task(log_prints=True)
def printer(x):
    print("printed", x)
    return x


def _check_logs(rid, expected):
    assert tracker.flush()
    records = open_run_store().logs(rid)
    assert [r["message"] for r in records] == [expected]


def test_logs_from_local_cluster_worker_reach_store(dask_runner):
    @flow(task_runner=dask_runner)
    def f():
        futs = chatty.map(range(3))
        p = printer.submit(7)
        futs.wait()
        p.wait()
        return [x.task_run_id for x in futs], p.task_run_id

    ids, pid = f()
    _check_logs(ids[2], "element 2 says hi")
    _check_logs(pid, "printed 7")


def test_logs_from_remote_cluster_reach_store(remote_cluster):
    from daskflow.runners.dask import DaskTaskRunner

    @flow(task_runner=DaskTaskRunner(address=remote_cluster))
    def f():
        futs = chatty.map(range(4))
        futs.wait()
        return [x.task_run_id for x in futs]

    ids = f()
    _check_logs(ids[3], "element 3 says hi")
    assert open_run_store().task_run(ids[3])["worker"].startswith("tcp://127.0.0.1")


def test_logs_flow_logger_and_log_prints_in_flow():
    @flow(task_runner=ThreadPoolTaskRunner(1), log_prints=True)
    def f():
        get_run_logger().warning("from the flow")
        print("flow print")
        from daskflow.engine.core.context import flow_run_ctx

        return flow_run_ctx.get().flow_run_id

    fid = f()
    assert tracker.flush()
    records = open_run_store().logs(fid)
    assert [(r["level"], r["message"]) for r in records] == [(30, "from the flow"), (20, "flow print")]


def test_get_run_logger_outside_run_raises():
    with pytest.raises(MissingContextError, match="outside of a task run or flow run"):
        get_run_logger()


def test_tracker_flow_run_record_counts_per_state(runner, tmp_path):
    @flow(task_runner=runner)
    def pipeline(n):
        return flaky.map(range(n), marker=str(tmp_path / "m"), ).wait()

    pipeline(6)
    assert tracker.flush()
    store = open_run_store()
    [rec] = store.flow_runs()
    assert rec["name"] == "pipeline" and rec["parameters"] == {"n": 6} and rec["state"] == "Completed"
    shown = store.flow_run(rec["id"][:8])
    assert shown["counts"] == {"Completed": 5, "Failed": 1}
    assert len(shown["slowest"]) == 5


def test_tracker_off_records_nothing():
    import dask.config

    @task
    def inc(x):
        return x + 1

    with dask.config.set({"daskflow.tracking": False}):
        @flow(task_runner=ThreadPoolTaskRunner(2))
        def f():
            return inc.map(range(10)).result()

        assert f() == list(range(1, 11))
        assert tracker.flush()
    assert open_run_store().task_runs() == []


def test_record_states_api_records_background_style_runs():
    from daskflow.ids import new_run_base, run_id

    rid = run_id(new_run_base())
    t0 = time.time()
    tracker.record_states([(rid, "Scheduled", t0, "queued")], task_name="email", task_key="email-0000")
    assert tracker.flush()
    store = open_run_store()
    assert store.task_run(rid[:10])["state"] == "Scheduled"
    tracker.record_states([(rid, "Pending", t0 + 1, ""), (rid, "Running", t0 + 2, "")], task_name="email",
                          worker="tcp://127.0.0.1:1")
    tracker.record_states([(rid, "Completed", t0 + 3, "")], task_name="email")
    assert tracker.flush()
    rec = store.task_run(rid)
    assert [h["name"] for h in rec["history"]] == ["Scheduled", "Pending", "Running", "Completed"]
    assert rec["state"] == "Completed" and rec["start"] == t0 + 2 and rec["end"] == t0 + 3


def test_tracker_many_direct_calls_each_recorded_in_few_records():
    @task
    def direct(x):
        if x % 7 == 3:
            raise ValueError(f"bad {x}")
        if x == 5:
            get_run_logger().info("five")
        return x

    t0 = time.time()
    states = [direct(x, return_state=True) for x in range(300)]
    assert tracker.flush()
    store = open_run_store()
    rows = store.task_runs(task="direct", limit=None)
    assert len(rows) == 300 and len({r["id"] for r in rows}) == 300
    by_state = {}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
        assert t0 <= r["submitted"] <= r["start"] <= r["end"]
    assert by_state == {"Failed": sum(1 for s in states if s.is_failed()), "Completed": 300 - by_state["Failed"]}
    # bursts of direct calls share records (batched by the writer), yet each run is found by id
    chunks = store.env.read(lambda txn: txn.stat(store._db["chunks"])["entries"])
    assert chunks < 300
    failed = [r for r in rows if r["state"] == "Failed"]
    shown = store.task_run(failed[0]["id"])
    assert shown["error"].startswith("ValueError: bad") and "ValueError" in shown["traceback"]
    assert [h["name"] for h in shown["history"]] == ["Pending", "Running", "Failed"]
    [five] = [r for r in rows if r["state"] == "Completed" and "five" in
              [m["message"] for m in store.logs(r["id"])]]
    assert store.task_run(five["id"][:13])["state"] == "Completed"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 1)), st.integers(-5, 10**6), st.booleans(),
                          st.sampled_from([0, 1, 3])), min_size=2, max_size=40))
def test_a_burst_of_plain_direct_calls_is_one_record_with_their_folded_resources(calls):
    """The writer folds a loop of plain direct calls (``DirectCallDone``) into one chunk record:
    codes, times, and their resources as a chunk's (CPU summed, the largest memory increase,
    the last RSS, heavy calls listed), however resources were measured call by call."""
    from array import array

    from daskflow.engine.tracking.records import DirectCallDone, to_store_ops

    base, start = 7, 100
    run = [DirectCallDone("t", "t-1", "fr", 10.0 + k, base, start + k, code, 20.0 + k, 15.0 + k, cpu,
                          mem, 1000 + k, heavy) for k, (cpu, mem, heavy, code) in enumerate(calls)]
    [op], logs = to_store_ops(run)
    assert logs == [] and op.new and (op.base, op.start) == (base, start)
    f = op.fields
    assert f["n"] == len(calls) and f["codes"] == bytes(c[3] for c in calls)
    assert array("d", f["ends"]).tolist() == [20.0 + k for k in range(len(calls))]
    assert array("d", f["starts"]).tolist() == [15.0 + k for k in range(len(calls))]
    assert array("d", f["submits"]).tolist() == [10.0 + k for k in range(len(calls))]
    assert (f["started"], f["submitted"], f["task"], f["flow_run_id"]) == (15.0, 10.0, "t", "fr")
    measured = [(k, cpu, mem, heavy) for k, (cpu, mem, heavy, _) in enumerate(calls) if cpu is not None]
    if not measured:
        assert "res" not in f
        return
    res = f["res"]
    assert res["cpu"] == pytest.approx(sum(cpu for _, cpu, _, _ in measured))
    assert res["mem"] == max(0, *(mem for _, _, mem, _ in measured))
    assert res["rss"] == 1000 + measured[-1][0]
    assert res.get("runs", []) == [[k, cpu, mem] for k, cpu, mem, heavy in measured if heavy]


def test_plain_direct_calls_that_do_not_continue_one_another_are_not_one_record():
    from daskflow.engine.tracking.records import DirectCallDone, to_store_ops

    run = [DirectCallDone("t", "t-1", "fr", 1.0, 7, 100 + k, 1, 2.0, 1.5) for k in range(3)]
    run.append(DirectCallDone("u", "u-1", "fr", 1.0, 7, 103, 1, 2.0, 1.5))  # another task
    run.append(DirectCallDone("t", "t-1", "fr", 1.0, 7, 105, 1, 2.0, 1.5))  # not the next index
    ops, _ = to_store_ops(run)
    assert [(op.start, op.fields["n"], op.fields["task"]) for op in ops] == [(100, 3, "t"), (103, 1, "u"),
                                                                           (105, 1, "t")]


@task(task_run_name="load-{day}")
def named_load(day):
    if day == "tue":
        raise ValueError("no data")
    return day


def test_tracker_stores_task_run_names(runner):
    @flow(task_runner=runner)
    def f():
        futures = named_load.map(["mon", "tue"])
        futures.wait()
        direct = named_load("wed", return_state=True).is_completed()
        return [fut.task_run_id for fut in futures], direct

    ids, direct = f()
    assert direct
    assert tracker.flush()
    store = open_run_store()
    assert [store.task_run(i)["name"] for i in ids] == ["load-mon", "load-tue"]
    assert store.task_run(ids[1])["state"] == "Failed"
    assert "load-wed" in {row["name"] for row in store.task_runs(task="named_load")}


def test_tracker_records_runs_answered_by_the_cache_as_cached(runner):
    from daskflow.cache import INPUTS

    @task(cache_policy=INPUTS)
    def square(x):
        return x * x

    @flow(task_runner=runner)
    def f():
        futures = square.map(range(6))
        return [fut.task_run_id for fut in futures], futures.result()

    f()
    ids, values = f()  # every element is a hit on the client: nothing is submitted
    assert values == [x * x for x in range(6)]
    assert tracker.flush()
    store = open_run_store()
    assert [store.task_run(i)["state"] for i in ids] == ["Cached"] * 6


@task
def plus(x):
    return x + 1


def test_runs_whose_futures_are_gone_are_recorded_not_fetched_at_flow_end(dask_runner):
    # Nobody can read such a run's value any more, and its worker's end event recorded it:
    # the end of the flow does not gather it (on a graph of .submit() calls, that gather
    # cost about as much as running the graph). A future still held is fetched as before.
    seen = {}

    @flow(task_runner=dask_runner)
    def chain():
        f = plus.submit(0)
        seen["first"] = f.chunk
        for _ in range(20):
            f = plus.submit(f)  # the first future is gone after this
        seen["held"] = plus.submit(100)
        value = f.result()
        first = seen["first"]
        until(lambda: tracker.ended_completed(first.base, first.start))
        return value

    assert chain() == 21
    assert seen["first"].result is None, "fetched although nobody could read it"
    assert seen["held"].result() == 101  # a future held past the flow still reads its value
    assert tracker.flush()
    runs = open_run_store().task_runs(task="plus", limit=None)
    assert len(runs) == 22 and {r["state"] for r in runs} == {"Completed"}


def test_tracker_final_counts_live_as_long_as_the_chunks_futures():
    import gc

    held = []

    @task
    def inc(x):
        return x + 1

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def mapped():
        futs = inc.map(range(200))
        held.append(futs)
        return sum(futs.result())

    assert mapped() == sum(range(1, 201))
    assert tracker.flush()
    store = open_run_store()
    keys = [(int.from_bytes(c["base"], "big"), c["start"]) for c in store.flow_chunks(store.flow_runs(1)[0]["id"])]
    assert sum(c["n"] for c in store.flow_chunks(store.flow_runs(1)[0]["id"])) == 200
    assert tracker.progress_counts(keys)[0] == 200  # someone holds the futures: their counts are there
    held.clear()
    gc.collect()
    assert tracker.progress_counts(keys) == (0, 0, 0, 0)  # gone with the client's records of the chunks


def test_a_start_message_before_its_chunk_is_registered_is_applied_when_it_is():
    # A worker can report a chunk's start before the submitting thread registered the chunk;
    # the message waits (``EarlyMessages``) and the registration applies it.
    from daskflow.engine.client.chunks import Chunk
    from daskflow.ids import new_run_base
    from daskflow.engine.tracking.events import ChunkStarted

    @task
    def one(x):
        return x

    chunk = Chunk(one, new_run_base(), 0, 1, None, None)
    tracker.on_message(ChunkStarted(chunk.base, chunk.start, time.time(), "tcp://127.0.0.1:1"))
    assert tracker.live_state(chunk.base, chunk.start) is None  # not registered: nothing to show yet
    tracker.chunks_submitted([chunk], None)
    state = tracker.live_state(chunk.base, chunk.start)
    assert state is not None and state.name == "Running"


def test_early_messages_keep_order_per_chunk_and_drop_what_waited_too_long():
    from daskflow.engine.core.early import EarlyMessages

    early = EarlyMessages(seconds=60.0)
    early.keep((1, 0), "started")
    early.keep((2, 0), "other")
    early.keep((1, 0), "ended")
    assert early.take((1, 0)) == ["started", "ended"] and early.take((1, 0)) == []
    early.seconds = -1.0  # everything kept is stale now: another client's messages do not pile up
    early.keep((3, 0), "new")
    assert list(early) == [(3, 0)]
