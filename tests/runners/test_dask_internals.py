"""The door to Dask's private names: detection, the switch, and the public fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import dask.config
import pytest
from distributed import Client, Worker

import daskflow
from daskflow.runners import batching, dask_internals
from daskflow.runners.dask import DaskTaskRunner

ENV = "DASK_DASKFLOW__DASK_INTERNALS"
SWITCHED_OFF_RUN = os.environ.get(ENV, "").lower() in ("false", "0")

# The core engine tests the suite runs again with every fast path off (about a minute here).
CORE_TESTS = ["tests/engine/test_tasks.py", "tests/engine/test_flows.py", "tests/engine/test_dependencies.py",
              "tests/engine/test_futures.py", "tests/runners/test_dask_runner.py",
              "tests/runners/test_dask_internals.py"]  # background runs: their own suite, ~50 s more


@pytest.fixture(autouse=True)
def fresh_detection():
    dask_internals.redetect()
    yield
    dask_internals.redetect()


@pytest.fixture
def client(cluster):
    with Client(cluster.scheduler_address, set_as_default=False) as c:
        yield c


@daskflow.task
def double(x: int) -> int:
    return 2 * x


@daskflow.task
def add(x: int, y: int) -> int:
    return x + y


def test_this_dask_has_every_fast_path():
    assert dask_internals.available() == frozenset(dask_internals.FEATURES)


def test_switch_off_reports_every_fast_path_unused():
    with dask.config.set({"daskflow.dask-internals": False}):
        assert not dask_internals.enabled()
        assert dask_internals.in_use() == dict.fromkeys(dask_internals.FEATURES, False)
        assert not batching.available()
    with dask.config.set({"daskflow.dask-internals": True}):
        assert dask_internals.in_use() == dict.fromkeys(dask_internals.FEATURES, True) or SWITCHED_OFF_RUN


def test_switch_is_read_from_the_environment():
    env = dict(os.environ, **{ENV: "False"})
    code = "from daskflow.runners import dask_internals as d; print(d.switched_on(), d.enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cluster_workers_follow_the_switch(client):
    here = dask_internals.in_use()
    there = client.run(dask_internals.in_use)
    assert len(there) == 2
    for reported in there.values():
        assert {k: reported[k] for k in ("worker-stream", "worker-task-state")} == \
               {k: here[k] for k in ("worker-stream", "worker-task-state")}
    if SWITCHED_OFF_RUN:  # the run of the core tests with the switch off: nothing private anywhere
        assert not any(here.values())
        assert not any(v for reported in there.values() for v in reported.values())


def test_flow_with_fast_paths_off_gives_right_values(cluster):
    @daskflow.flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def pipeline() -> tuple:
        one = double.submit(3)
        many = double.map([1, 2, 3])
        total = add.submit(one, many[2])
        return one.result(), many.result(), total.result()

    with dask.config.set({"daskflow.dask-internals": False}):
        assert not dask_internals.enabled()
        assert pipeline() == (6, [2, 4, 6], 12)


def test_a_dask_without_graph_to_futures_submits_call_by_call(cluster, monkeypatch):
    monkeypatch.delattr(Client, "_graph_to_futures")  # a Dask that renamed it (and cannot submit at all)
    assert "graph" not in dask_internals.available()
    assert not batching.available()
    with Client(cluster.scheduler_address, set_as_default=False) as c:
        assert not batching.GraphBuffer(c).holding


@pytest.mark.parametrize("cls, name, feature", [
    (Client, "_send_to_scheduler_safe", "client-stream"),
    (Worker, "batched_send", "worker-stream"),
])
def test_a_dask_without_a_stream_method_is_detected(monkeypatch, cls, name, feature):
    monkeypatch.delattr(cls, name)
    assert feature not in dask_internals.available()
    assert not dask_internals.enabled(feature)
    assert "graph" in dask_internals.available()  # the other paths stay


def test_a_dask_that_changed_the_worker_state_is_detected(monkeypatch):
    from distributed.worker_state_machine import WorkerState

    monkeypatch.delitem(WorkerState.__annotations__, "tasks")
    assert "worker-task-state" not in dask_internals.available()


def _catch_on_scheduler(cluster, op):
    """A handler on the session scheduler (in this process) that records its messages."""
    got, arrived = [], threading.Event()

    def handler(n=None, **_):
        got.append(n)
        arrived.set()

    async def register():
        dask_internals.add_stream_handler(cluster.scheduler, op, handler)

    cluster.sync(register)  # registered before anything is sent
    return got, arrived


@pytest.fixture
def fast_paths_on():
    with dask.config.set({"daskflow.dask-internals": True}):  # even in the run with them off
        yield


def test_client_send_falls_back_to_rpc_when_the_private_method_changes_at_run_time(cluster, fast_paths_on):
    op = f"daskflow-test-{uuid.uuid4().hex[:8]}"
    got, arrived = _catch_on_scheduler(cluster, op)
    assert dask_internals.enabled("client-stream")  # detected with the method as expected

    def _send_to_scheduler_safe():  # then this client's method takes no message any more
        raise AssertionError("not called with a message")

    async def send():
        for n in range(3):
            dask_internals.send_to_scheduler(c, {"op": op, "n": n})
        await dask_internals.sent(c)

    with Client(cluster.scheduler_address, set_as_default=False) as c:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(c, "_send_to_scheduler_safe", _send_to_scheduler_safe)
            c.sync(send)
    assert arrived.wait(30)
    assert got == [0, 1, 2]  # every message, in order
    assert not dask_internals.enabled("client-stream")


def test_worker_send_falls_back_to_rpc_when_batched_send_goes_at_run_time(cluster, client):
    op = f"daskflow-test-{uuid.uuid4().hex[:8]}"
    got, arrived = _catch_on_scheduler(cluster, op)
    address = next(iter(client.scheduler_info()["workers"]))

    async def on_worker(dask_worker):
        import dask.config
        from distributed import Worker
        from distributed.worker_state_machine import BaseWorker

        from daskflow.runners import dask_internals as door

        door.redetect()
        saved = Worker.batched_send, BaseWorker.batched_send
        with dask.config.set({"daskflow.dask-internals": True}):  # on, even in the run with it off
            assert door.enabled("worker-stream")  # detected with the method present
            del Worker.batched_send, BaseWorker.batched_send  # then this Dask loses it while the worker runs
            try:
                door.worker_send(dask_worker, {"op": op, "n": 7})
                await door.sent(dask_worker)
                return door.in_use()
            finally:
                Worker.batched_send, BaseWorker.batched_send = saved
                door.redetect()

    there = client.run(on_worker, workers=[address])[address]
    assert arrived.wait(30)
    assert got == [7]
    assert there["worker-stream"] is False and there["worker-task-state"] is True


def test_worker_task_annotations_unknown_without_the_fast_path():
    with dask.config.set({"daskflow.dask-internals": False}):
        assert dask_internals.worker_task_annotations(object(), "k") is None  # the ledger is asked instead


@pytest.mark.timeout(900)  # a whole pytest run of the core files in a subprocess (about a minute quiet)
@pytest.mark.skipif(SWITCHED_OFF_RUN, reason="this is the run with the fast paths off")
def test_core_engine_tests_pass_with_every_fast_path_off(tmp_path):
    import xml.etree.ElementTree as ET

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **{ENV: "False"}, PYTHONPATH=root)
    report = tmp_path / "off.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           f"--junitxml={report}", *CORE_TESTS],
                          cwd=root, env=env, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == 0, counts
    assert counts["tests"] - counts["skipped"] >= 60, counts  # the core tests ran (~70), not skipped
    ran = {case.get("name") for case in suite.iter("testcase") if case.find("skipped") is None}
    assert "test_cluster_workers_follow_the_switch" in ran  # and saw no private path in use anywhere
