"""Background runs on a real daskflow server and real task-worker subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys

import bg_tasks
import pytest
from background_procs import env_for, start_server, start_worker

import daskflow.background as bg
from daskflow import flow, unmapped
from daskflow.background import store
from daskflow.background.client import disconnect
from daskflow.exceptions import (
    CancelledRun,
    CrashedRun,
    NoBackgroundServer,
    ParameterSerializationError,
    ResultNotPersisted,
    UnknownRun,
)
from daskflow.runners import ThreadPoolTaskRunner

SERVED = ["bg_tasks:add", "bg_tasks:whoami", "bg_tasks:not_persisted", "bg_tasks:boom", "bg_tasks:flaky",
          "bg_tasks:inc", "bg_tasks:cached_square", "bg_tasks:chatty", "bg_tasks:chatty_long",
          "bg_tasks:total", "bg_tasks:aio_double", "bg_tasks:hog", "bg_tasks:flaky_later", "bg_tasks:gated", "bg_tasks:runtime_info"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server and two task workers (1 thread each) serving the SERVED tasks."""
    home = tmp_path_factory.mktemp("bg") / "home"
    proc, address = start_server(home)
    workers = [start_worker(home, address, *SERVED) for _ in range(2)]
    yield {"home": home, "address": address, "proc": proc, "workers": [w for w, _ in workers]}
    for w, _ in workers:
        w.stop()
    disconnect(address)
    assert proc.stop() == 0, "the server did not stop cleanly on SIGTERM"


@pytest.fixture
def bg_server(server, monkeypatch):
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", server["address"])
    return server


def test_delay_without_server_raises_how_to_start_one(monkeypatch):
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(NoBackgroundServer, match="daskflow server start.*DASKFLOW_SCHEDULER_ADDRESS"):
        bg_tasks.add.delay(1, 2)


def test_delay_to_an_unreachable_server_raises_how_to_start_one(monkeypatch):
    import dask.config

    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")  # nothing listens there
    with dask.config.set({"daskflow.background.connect-timeout": "1s"}):
        with pytest.raises(NoBackgroundServer, match="no daskflow server answers.*daskflow server start"):
            bg_tasks.add.delay(1, 2)


def test_delay_many_calls_all_land_in_order(bg_server):
    # enqueue cost is measured in benchmarks/bench_delay.py, not asserted here
    n = 500
    futures = bg.BackgroundFutures(bg_tasks.add.delay(i, 1) for i in range(n))
    assert len({f.task_run_id for f in futures}) == n
    assert futures.result(timeout=60) == [i + 1 for i in range(n)]


def test_runtime_in_a_background_run(bg_server):
    fut = bg_tasks.runtime_info.delay(7)
    got = fut.result(timeout=30)
    assert got == {"id": fut.task_run_id, "name": got["name"], "parameters": {"x": 7}, "run_count": 1,
                   "flow_run_id": None}
    assert got["name"] == f"runtime_info-{fut.task_run_id[:8]}"  # as `daskflow runs ls` names it


def test_delayed_runs_get_distinct_names_by_their_short_ids(bg_server):
    futs = [bg_tasks.runtime_info.delay(i) for i in range(3)]
    names = [f.result(timeout=30)["name"] for f in futs]
    assert names == [f"runtime_info-{f.task_run_id[:8]}" for f in futs] and len(set(names)) == 3

    def shown() -> list | None:
        recs = [_cli_json(bg_server["home"], "runs", "show", f.task_run_id) for f in futs]
        return recs if all(r and r["state"] == "Completed" for r in recs) else None

    _wait_for(shown, 30)
    assert [r["name"] for r in shown()] == names


def test_delay_runs_on_a_task_worker_with_the_full_lifecycle(bg_server):
    fut = bg_tasks.add.delay(1, y=2)
    assert fut.result(timeout=30) == 3
    rec = fut.record()
    assert [h["name"] for h in rec["history"]] == ["Scheduled", "Pending", "Running", "Completed"]
    assert rec["worker"].startswith("tcp://127.0.0.1:")
    assert rec["task_key"] == bg_tasks.add.task_key and rec["run_count"] == 1
    assert fut.state.is_completed() and fut.state.result() == 3
    assert bg.state(fut.task_run_id).name == "Completed"


def test_background_future_done_callback_fires_once_final(bg_server):
    import threading

    seen = []
    called = threading.Event()

    def note(fut):
        seen.append(fut.result())
        called.set()

    fut = bg_tasks.add.delay(20, 22)
    fut.add_done_callback(note)
    assert called.wait(30)
    late = threading.Event()
    fut.add_done_callback(lambda f: late.set())  # already final: called at once, in this thread
    assert late.is_set() and seen == [42]


def test_delay_bad_arguments_fail_at_once_naming_the_task(bg_server):
    with pytest.raises(TypeError, match="'add'"):
        bg_tasks.add.delay(1, 2, 3)
    import threading

    with pytest.raises(ParameterSerializationError, match="task 'add': argument 'y'"):
        bg_tasks.add.delay(1, threading.Lock())


def test_delay_failure_and_retries_behave_as_normal_runs(bg_server, tmp_path):
    failed = bg_tasks.boom.delay(7)
    with pytest.raises(ValueError, match="boom 7"):
        failed.result(timeout=30)
    rec = failed.record()
    assert rec["state"] == "Failed" and "ValueError: boom 7" in rec["error"]
    assert isinstance(failed.result(raise_on_failure=False), ValueError)

    retried = bg_tasks.flaky.delay(str(tmp_path / "count"))
    assert retried.result(timeout=30) == 2
    names = [h["name"] for h in retried.record()["history"]]
    assert names == ["Scheduled", "Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    assert retried.record()["run_count"] == 2
    # with a retry delay: the run holds its task worker's resource, so it is retried where it is
    later = bg_tasks.flaky_later.delay(str(tmp_path / "later"))
    assert later.result(timeout=30).startswith("daskflow-task-worker-")
    assert later.record()["run_count"] == 2


def test_delayed_runs_use_the_result_cache(bg_server, tmp_path):
    log = tmp_path / "executions"
    first = bg_tasks.cached_square.delay(7, str(log))
    assert first.result(timeout=30) == 49
    second = bg_tasks.cached_square.delay(7, str(log))
    assert second.result(timeout=30) == 49
    assert first.state.name == "Completed" and second.state.name == "Cached"
    assert log.read_text().count("ran") == 1


def _cli_json(home, *args: str):
    """``daskflow ... -o json`` on the server's host: the parsed output, or None if it failed."""
    import json

    res = subprocess.run([sys.executable, "-m", "daskflow", *args, "-o", "json"], env=env_for(home),
                         capture_output=True, text=True, timeout=60)
    return json.loads(res.stdout) if res.returncode == 0 else None


def _completed_record(home, run_id: str) -> dict:
    """``runs show`` of the run once it reads Completed (the server's run store is written in
    batches: eventually consistent)."""

    def show() -> dict | None:
        rec = _cli_json(home, "runs", "show", run_id)
        return rec if rec and rec["state"] == "Completed" else None

    _wait_for(show, 30)
    return show()


def test_background_runs_show_in_daskflow_runs_with_history_worker_and_logs(bg_server):
    fut = bg_tasks.chatty.delay(3)
    assert fut.result(timeout=30) == 3
    rec = _completed_record(bg_server["home"], fut.task_run_id)
    assert [h["name"] for h in rec["history"]] == ["Scheduled", "Pending", "Running", "Completed"]
    assert rec["worker"] == fut.record()["worker"] and rec["task_key"] == bg_tasks.chatty.task_key
    logs = _cli_json(bg_server["home"], "runs", "logs", fut.task_run_id)
    assert [r["message"] for r in logs] == ["hello 3"]


def test_background_run_records_cpu_time_and_peak_rss_increase(bg_server):
    fut = bg_tasks.hog.delay(64)
    assert fut.result(timeout=30) == 1.0
    res = _completed_record(bg_server["home"], fut.task_run_id)["resources"]
    assert res["resolution"] == "run"
    assert 0.14 <= res["cpu_seconds"] < res["wall_seconds"] + 0.01
    assert res["peak_rss_increase_bytes"] >= 48 * 2**20  # 64 MiB held while it ran


def test_result_of_a_task_that_does_not_persist_is_a_clear_error(bg_server):
    fut = bg_tasks.not_persisted.delay(1)
    with pytest.raises(ResultNotPersisted, match="persist_result=True"):
        fut.result(timeout=30)
    assert fut.state.name == "Completed"


def test_map_deferred_spreads_runs_over_task_workers(bg_server):
    futures = bg_tasks.whoami.map(range(16), deferred=True)
    assert len(futures) == 16
    workers = futures.result(timeout=60)
    assert len(set(workers)) == 2, "both task workers should have taken runs"
    assert bg_tasks.inc.map([1, 2, 3], deferred=True).result(timeout=30) == [2, 3, 4]
    assert bg_tasks.add.map([1, 2], unmapped(10), deferred=True).result(timeout=30) == [11, 12]


def test_delay_of_an_async_task(bg_server):
    assert bg_tasks.aio_double.delay(21).result(timeout=30) == 42


def test_delay_inside_a_flow_records_the_flow_run(bg_server):
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def enqueue():
        from daskflow.engine.core.context import current_flow_run_id

        return bg_tasks.add.delay(20, 22), current_flow_run_id()

    fut, flow_run_id = enqueue()
    assert fut.result(timeout=30) == 42
    assert fut.record()["flow_run_id"] == flow_run_id


def test_delay_from_a_process_that_exits_at_once_still_runs(bg_server):
    code = "import bg_tasks; print(bg_tasks.add.delay(40, 2).task_run_id)"
    out = subprocess.run([sys.executable, "-c", code], env=env_for(bg_server["home"], bg_server["address"]),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert bg.result(out.strip(), timeout=30) == 42


def test_runs_wait_scheduled_until_a_worker_serves_their_task(bg_server):
    fut = bg_tasks.lonely.delay(4)
    fut.wait(timeout=1.0)  # nobody serves `lonely`: the run must not finish
    assert fut.state.name == "Scheduled"
    serve = "import bg_tasks; from daskflow import serve; serve(bg_tasks.lonely, limit=2)"
    worker, address = start_worker(bg_server["home"], bg_server["address"], python=serve)
    try:
        assert fut.result(timeout=30) == 40
        assert fut.record()["worker"] == address
    finally:
        assert worker.stop() == 0, "a task worker stops cleanly on SIGTERM"


def test_result_by_run_id_from_a_later_process_without_distributed(bg_server):
    fut = bg_tasks.add.delay(5, 6)
    assert fut.result(timeout=30) == 11
    code = ("import sys, daskflow.background as b; "
            f"print(b.result({fut.task_run_id!r}), 'distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env_for(bg_server["home"]),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["11", "False"]


def test_result_of_an_unknown_run_id_is_a_clear_error(bg_server, monkeypatch):
    bogus = "00000000-0000-0000-0000-000000000001"
    with pytest.raises(UnknownRun, match=bogus):
        bg.result(bogus, timeout=0.5)
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS")
    monkeypatch.setenv("DASKFLOW_HOME", str(bg_server["home"]))
    with pytest.raises(UnknownRun, match=bogus):
        bg.result(bogus)


def test_a_plain_dask_scheduler_gets_the_plugin_on_first_delay(remote_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", remote_cluster)
    worker, _ = start_worker(tmp_path / "home", remote_cluster, "bg_tasks:inc")
    try:
        assert bg_tasks.inc.delay(41).result(timeout=30) == 42
    finally:
        worker.stop()  # the shared client stays: other tests of the session use this cluster


def test_killed_task_worker_run_is_taken_by_another_worker(tmp_path, monkeypatch):
    home = tmp_path / "srv"
    server, address = start_server(home)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    first, first_address = start_worker(home, address, "bg_tasks:stall_once")
    try:
        marker = tmp_path / "started"
        fut = bg_tasks.stall_once.delay(str(marker))
        _wait_for(lambda: marker.exists() and fut.state.name == "Running", 30)  # the body has started
        first.stop(signal.SIGKILL)
        second, second_address = start_worker(home, address, "bg_tasks:stall_once")
        try:
            fut.result(timeout=30)
            rec = fut.record()
            assert rec["worker"] == second_address != first_address
            names = [h["name"] for h in rec["history"]]
            assert names[:3] == ["Scheduled", "Pending", "Running"] and names[-1] == "Completed"
            assert any("worker was lost" in h["message"] for h in rec["history"])
        finally:
            second.stop()
    finally:
        disconnect(address)
        assert server.stop() == 0


def test_killed_task_worker_mid_chunk_loses_no_run_and_reruns_none_recorded_final(tmp_path, monkeypatch):
    from collections import Counter

    home = tmp_path / "srv"
    server, address = start_server(home)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    first, first_address = start_worker(home, address, "bg_tasks:chunk_mate")
    second = None
    try:
        n = 24
        futs = bg_tasks.chunk_mate.map(range(n), unmapped(str(tmp_path)), deferred=True)
        stalled = tmp_path / "stalled"
        _wait_for(stalled.exists, 30)
        stuck = int(stalled.read_text())
        executions = [line.split(" ", 1) for line in (tmp_path / "ran").read_text().splitlines()]
        chunk = dict((int(i), key) for i, key in executions)[stuck]
        mates = [int(i) for i, key in executions if key == chunk and int(i) != stuck]
        assert len(mates) == 2, "the stalled run is the third of its chunk"
        # the runs before it in the chunk are recorded final while the chunk is still running
        _wait_for(lambda: all(futs[j].state.is_completed() for j in mates), 30)
        recorded_final = [j for j in range(n) if futs[j].state.is_final()]
        assert set(mates) <= set(recorded_final) and stuck not in recorded_final
        first.stop(signal.SIGKILL)  # mid-chunk: two runs final, one running, the rest not started
        second, second_address = start_worker(home, address, "bg_tasks:chunk_mate")

        assert futs.result(timeout=60) == [2 * i for i in range(n)], "no run is lost"
        runs = Counter(int(line.split(" ", 1)[0]) for line in (tmp_path / "ran").read_text().splitlines())
        assert set(runs) == set(range(n))
        assert {j: runs[j] for j in recorded_final} == {j: 1 for j in recorded_final}, \
            "a run recorded final is never executed again"
        assert runs[stuck] == 2
        # one record (id, history, worker, result) per run, also for runs that shared a chunk
        records = {j: futs[j].record() for j in [*mates, stuck]}
        assert len({rec["id"] for rec in records.values()}) == 3
        for j in mates:
            names = [h["name"] for h in records[j]["history"]]
            assert names == ["Scheduled", "Pending", "Running", "Completed"]
            assert records[j]["worker"] == first_address
            assert bg.result(futs[j].task_run_id) == 2 * j
        names = [h["name"] for h in records[stuck]["history"]]
        assert names[:3] == ["Scheduled", "Pending", "Running"] and names[-1] == "Completed"
        assert names.count("Running") == 2
        assert any("worker was lost" in h["message"] for h in records[stuck]["history"])
        assert records[stuck]["worker"] == second_address
        after = [int(i) for i, key in (line.split(" ", 1) for line in (tmp_path / "ran").read_text().splitlines())
                 if key == chunk and int(i) not in (*mates, stuck)]  # the chunk's runs after the stalled one
        for j in after:
            assert runs[j] == 1 and futs[j].record()["worker"] == second_address
        assert not store.queued(store.open_store(home / "background"))
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()
        disconnect(address)
        assert server.stop() == 0


def test_run_dask_gives_up_on_ends_crashed_not_running(tmp_path, monkeypatch):
    home = tmp_path / "srv"
    server, address = start_server(home, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    worker, _ = start_worker(home, address, "bg_tasks:stall_once")
    try:
        fut = bg_tasks.stall_once.delay(str(tmp_path / "started"))
        _wait_for(lambda: fut.state.name == "Running", 30)
        worker.stop(signal.SIGKILL)
        fut.wait(timeout=30)
        assert fut.state.is_crashed()
        with pytest.raises(CrashedRun, match="KilledWorker|outside of the task's code"):
            fut.result()
        assert not store.queued(store.open_store(home / "background")), "a final run leaves the queue"
    finally:
        disconnect(address)
        assert server.stop() == 0


def test_a_run_that_kills_its_workers_crashes_alone_not_its_chunk_mates(tmp_path, monkeypatch):
    home = tmp_path / "srv"
    server, address = start_server(home, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    workers = [start_worker(home, address, "bg_tasks:poison")[0]]
    try:
        # The last run is the bad one: with one worker thread, runs go in submission order, so
        # when it kills its worker nothing else is on that worker (Dask counts a worker's death
        # against every task it holds; with allowed-failures 0, each of them would be given up).
        n = 16
        bad = n - 1
        futs = bg_tasks.poison.map(range(n), unmapped(bad), deferred=True)

        def settled() -> bool:
            if workers[-1].popen.poll() is not None:  # run `bad` killed it: the others need a worker
                assert len(workers) < 6, "run `bad` went out more often than its chunk and itself alone"
                workers.append(start_worker(home, address, "bg_tasks:poison")[0])
            return all(f.done() for f in futs)

        _wait_for(settled, 90)
        assert futs[bad].state.is_crashed()
        assert [f.result() for i, f in enumerate(futs) if i != bad] == [i for i in range(n) if i != bad]
        assert not store.queued(store.open_store(home / "background"))
    finally:
        for w in workers:
            w.stop()
        disconnect(address)
        assert server.stop() == 0


def test_server_restart_resubmits_unfinished_runs(tmp_path, monkeypatch):
    home = tmp_path / "srv"
    server, address = start_server(home)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    worker, _ = start_worker(home, address, "bg_tasks:inc")  # stays up across the restart
    lonely_worker = None
    try:
        done = bg_tasks.inc.delay(0)
        assert done.result(timeout=30) == 1
        waiting = [bg_tasks.lonely.delay(i) for i in range(1, 4)]  # nobody serves `lonely` yet
        queue_store = store.open_store(home / "background")
        _wait_for(lambda: len(store.queued(queue_store)) == 3, 30)
        server.stop(signal.SIGKILL)  # the server dies with three runs queued

        port = address.rsplit(":", 1)[1]
        server, address2 = start_server(home, int(port))
        assert address2 == address
        assert bg_tasks.inc.delay(5).result(timeout=30) == 6, "the task worker reconnects by itself"
        lonely_worker, _ = start_worker(home, address, "bg_tasks:lonely")
        assert [f.result(timeout=30) for f in waiting] == [10, 20, 30]
        assert any("server restart" in h["message"] for h in waiting[0].record()["history"])
        # a run whose completion was recorded is not executed again
        assert [h["name"] for h in done.record()["history"]].count("Running") == 1
        assert not store.queued(queue_store)
    finally:
        for w in (worker, lonely_worker):
            if w is not None:
                w.stop()
        disconnect(address)
        assert server.stop() == 0


def _wait_for(condition, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def test_background_logs_shipped_while_the_run_executes_reach_the_run_store(bg_server):
    fut = bg_tasks.chatty_long.delay(5)
    assert fut.result(timeout=30) == 5

    def messages() -> list | None:
        got = [r["message"] for r in _cli_json(bg_server["home"], "runs", "logs", fut.task_run_id) or ()]
        return got if len(got) == 2 else None

    _wait_for(messages, 30)  # the server's run store is written in batches: eventually consistent
    assert messages() == ["first 5", "second 5"]


def test_background_future_done_right_after_delay_is_false_not_unknown(bg_server):
    fut = bg_tasks.add.delay(2, 3)
    assert fut.done() in (False, True)  # no UnknownRun while the enqueue is on its way
    assert fut.result(timeout=30) == 5 and fut.done()


def test_map_deferred_rejects_wait_for_and_chunksize():
    with pytest.raises(TypeError, match="'inc'.*wait_for nor chunksize"):
        bg_tasks.inc.map([1, 2], deferred=True, chunksize=1)
    with pytest.raises(TypeError, match="'inc'.*wait_for nor chunksize"):
        bg_tasks.inc.map([1, 2], deferred=True, wait_for=[])


def test_delay_resolves_futures_nested_in_arguments(bg_server):
    from daskflow import task

    @task
    def double(x):
        return 2 * x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def enqueue():
        fut = double.submit(1)
        nested = bg_tasks.total.delay([fut, 3])              # a list holding a future
        mapped = bg_tasks.inc.map([fut, 5], deferred=True)   # a mapped list holding a future
        shifted = bg_tasks.add.map(double.map(range(3)), unmapped(1), deferred=True)
        return nested, mapped, shifted

    nested, mapped, shifted = enqueue()
    assert nested.result(timeout=30) == 5
    assert mapped.result(timeout=30) == [3, 6]
    assert shifted.result(timeout=30) == [1, 3, 5]


def test_background_writer_bad_op_loses_only_itself(tmp_path):
    from types import SimpleNamespace

    from daskflow.background.plugin import QueueWriter
    from daskflow.background.records import Enqueue

    env = store.open_store(tmp_path / "bg")
    writer = QueueWriter(SimpleNamespace(env=env))
    good = {"id": "00000000-0000-0000-0000-00000000000a", "task_key": "add-1", "task_name": "add", "task": b"",
            "args": b"", "flow_run_id": None, "submitted": 1.0, "key": "add-a"}
    bad = Enqueue({"id": None})  # a malformed enqueue: its write raises
    parts = writer._commit([Enqueue(good), bad])
    assert [e["id"] for submits, _, _ in parts for e in submits] == [good["id"]]
    assert good["id"] in store.read_records([good["id"]], env)


def test_wait_and_as_completed_take_background_futures_with_task_run_futures(bg_server):
    from daskflow import as_completed, task, wait

    @task
    def local(x):
        return x * 10

    background = bg_tasks.add.map(range(4), unmapped(1), deferred=True)
    single = bg_tasks.add.delay(5, 5)
    mapped = local.map(range(3))
    done, not_done = wait([background, single, mapped], timeout=60)
    assert not not_done and len(done) == 4 + 1 + 3
    assert all(f.state.is_completed() for f in done)

    seen = list(as_completed([bg_tasks.add.delay(2, 3), local.submit(7)], timeout=60))
    assert sorted(f.result() for f in seen) == [5, 70]


def test_reconcile_gives_the_run_store_the_final_states_it_missed(daskflow_home):
    import time
    import uuid

    from daskflow.engine.tracking import tracker
    from daskflow.store.runs import open_run_store

    env = store.open_store()
    now = time.time()
    lost, queued = str(uuid.uuid4()), str(uuid.uuid4())
    records = []
    for rid in (lost, queued):
        rec = store.new_record({"id": rid, "task_name": "inc", "task_key": "inc-0", "submitted": now})
        records.append(rec)
    records[0]["history"].append({"name": "Completed", "type": "COMPLETED", "timestamp": now, "message": ""})
    records[0].update(state="Completed", state_type="COMPLETED", end=now)
    env.write(lambda txn: store.write_records(env, txn, records))

    assert store.reconcile_run_store(env, requeued=[queued]) == 1
    assert tracker.flush()
    runs = open_run_store()
    assert runs.run_states([lost, queued]) == {lost: "Completed"}
    names = [h["name"] for h in runs.task_run(lost)["history"]]
    assert names[0] == "Scheduled" and names[-1] == "Completed"
    assert store.reconcile_run_store(env, requeued=[queued]) == 0


def test_cancel_a_queued_background_run_it_ends_cancelled_and_never_runs(bg_server, tmp_path):
    from distributed import Client

    log = tmp_path / "executions"
    fut = bg_tasks.counted.delay(str(log))  # nobody serves `counted` yet: it stays queued
    assert fut.cancel() is True  # right after .delay(): the server waits for the call to arrive
    fut.wait(timeout=30)
    assert fut.state.name == "Cancelled"
    with pytest.raises(CancelledRun):
        fut.result(timeout=30)
    assert fut.run_count == 0 and [s.name for s in fut.history()] == ["Scheduled", "Cancelled"]
    assert fut.cancel() is False  # final: nothing to cancel

    other = bg_tasks.counted.delay(str(tmp_path / "other"))  # not cancelled: the worker below runs it
    serve = "import bg_tasks; from daskflow import serve; serve(bg_tasks.counted, limit=1)"
    worker, _ = start_worker(bg_server["home"], bg_server["address"], python=serve)
    try:
        assert other.result(timeout=30) == "ran"
        # The cancelled run's chunk reaches that worker too: once Dask is done with it
        # (its key forgotten), it has run as a chunk with nothing to do.
        key = f"counted-{fut.task_run_id}"
        with Client(bg_server["address"], set_as_default=False) as client:
            _wait_for(lambda: not client.run_on_scheduler(_knows_key, key), 30)
    finally:
        assert worker.stop() == 0
    assert not log.exists(), "a cancelled run was executed"
    assert fut.record()["state"] == "Cancelled"

    def shown() -> dict | None:
        rec = _cli_json(bg_server["home"], "runs", "show", fut.task_run_id)
        return rec if rec and rec["state"] == "Cancelled" else None

    _wait_for(shown, 30)  # the server's run store is written in batches: eventually consistent
    assert shown()["run_count"] == 0


def _knows_key(key, dask_scheduler=None) -> bool:
    return key in dask_scheduler.tasks


def test_cancel_of_a_running_background_run_returns_false_and_the_run_completes(bg_server, tmp_path):
    started, go = tmp_path / "started", tmp_path / "go"
    fut = bg_tasks.gated.delay(str(started), str(go))
    _wait_for(started.exists, 30)
    try:
        assert fut.cancel() is False  # a task worker runs it: Dask cannot stop a running task
    finally:
        go.touch()
    assert fut.result(timeout=30) == "done"
    assert fut.state.name == "Completed" and fut.run_count == 1


def test_delay_of_unfinished_futures_returns_at_once_and_the_run_waits_for_them(bg_server, tmp_path):
    import threading
    import time

    from daskflow import task

    gate = threading.Event()
    go = tmp_path / "go"
    # a safety net, not synchronisation: a .delay() that blocks on its upstream returns only then
    opener = threading.Timer(5, lambda: (gate.set(), go.write_text("go")))
    opener.start()

    @task
    def held(x):
        assert gate.wait(60)
        return x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def enqueue():
        up = held.submit(4)
        bg_up = bg_tasks.gated.delay(str(tmp_path / "started"), str(go))
        t0 = time.monotonic()
        local = [bg_tasks.add.delay(up, i) for i in range(100)]
        nested = bg_tasks.total.delay([up, 3])
        mapped = bg_tasks.inc.map([up, 5], deferred=True)
        chained = bg_tasks.add.delay(bg_up, "!")
        took = time.monotonic() - t0
        pending = [f.state.name for f in (local[0], chained)]
        dropped = bg_tasks.add.delay(up, 0)
        assert dropped.cancel() and dropped.state.name == "Cancelled"
        gate.set()
        go.write_text("go")
        with pytest.raises(CancelledRun):
            dropped.result(timeout=5)
        return local, nested, mapped, chained, took, pending

    try:
        local, nested, mapped, chained, took, pending = enqueue()
    finally:
        opener.cancel()
    assert took < 2.0, f"103 .delay() calls on unfinished futures took {took:.1f}s"
    assert pending == ["Scheduled", "Scheduled"]
    assert bg.BackgroundFutures(local).result(timeout=60) == [4 + i for i in range(100)]
    assert nested.result(timeout=30) == 7
    assert mapped.result(timeout=30) == [5, 6]
    assert chained.result(timeout=30) == "done!"
    assert chained.record()["history"][0]["name"] == "Scheduled"


def test_delay_of_a_failed_upstream_returns_at_once_and_its_future_says_why(bg_server):
    from daskflow import task
    from daskflow.exceptions import UpstreamFailed

    @task
    def broken(x):
        raise ValueError("upstream broke")

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def enqueue():
        up = broken.submit(1)
        return bg_tasks.add.delay(up, 1), bg_tasks.add.delay(1, 1)

    bad, good = enqueue()
    with pytest.raises(UpstreamFailed, match="task 'add'.*upstream task run 'broken-.*upstream broke"):
        bad.result(timeout=30)
    assert bad.state.name == "NotReady" and bad.done()
    assert good.result(timeout=30) == 2
