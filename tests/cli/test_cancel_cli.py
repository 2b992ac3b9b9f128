"""`daskflow flow-runs cancel` from another process: a real flow subprocess, the CLI in a third.

The flow process prints its flow run id once its first run completed; the test then runs
the CLI (a subprocess) and reads, from the flow process's own output, the final state,
the hooks that fired and the states of its task runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

FLOW = textwrap.dedent("""
    import sys, threading, time
    from daskflow import flow, task
    from daskflow.runners import ThreadPoolTaskRunner
    from daskflow.runners.dask import DaskTaskRunner
    from daskflow.runtime import flow_run

    hooks = []

    @task
    def nap(i):
        time.sleep(1.0 if i else 0)  # 60 runs: 60 s on one thread, 30 s on two workers, if not cancelled
        return i

    address = sys.argv[2] if len(sys.argv) > 2 else None
    runner = DaskTaskRunner(address=address) if address else ThreadPoolTaskRunner(max_workers=1)

    @flow(task_runner=runner, on_cancellation=[lambda fl, run, state: hooks.append(state.name)])
    def pipeline(mode):
        futs = nap.map(range(60), chunksize=1)
        futs[0].result()
        print("started", flow_run.id, flush=True)
        if mode == "busy":
            while True:  # pure Python: interrupted where it stands
                sum(range(100))
        futs.result()  # a wait: ends when the runs not started are cancelled
        return "finished"

    if __name__ == "__main__":
        state = pipeline(sys.argv[1], return_state=True)
        try:
            state.result()
        except Exception as exc:
            print("raises", type(exc).__name__, flush=True)
        print("final", state.name, hooks, flush=True)
""")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "daskflow", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))


def start_flow(tmp_path, *args):
    script = tmp_path / "flow.py"
    script.write_text(FLOW)
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    line = proc.stdout.readline().split()
    assert line[:1] == ["started"], proc.stderr.read()
    return proc, line[1]


def finish(proc):
    out, err = proc.communicate(timeout=60)
    return out, err


def states_of(flow_run_id):
    rows = json.loads(cli("runs", "ls", "--flow-run", flow_run_id, "--limit", "500", "-o", "json").stdout)
    return [r["state"] for r in rows]


def _cancel_and_check(tmp_path, *args):
    proc, fid = start_flow(tmp_path, *args)
    try:
        t0 = time.monotonic()
        out = cli("flow-runs", "cancel", fid[:8], "-o", "json")
        took = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        rec = json.loads(out.stdout)
        assert rec["state"] == "Cancelled" and "cancelled by request" in rec["message"]
        flow_out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "raises CancelledRun" in flow_out, flow_out + err
    assert "final Cancelled ['Cancelled']" in flow_out, flow_out + err  # on_cancellation fired once
    states = states_of(fid)
    assert len(states) == 60 and "Running" not in states and "Pending" not in states
    assert states.count("Cancelled") >= 20 and states.count("Completed") >= 1, states
    return took


def test_cancel_busy_body_threads(tmp_path):
    took = _cancel_and_check(tmp_path, "busy")
    assert took < 20


def test_cancel_waiting_body_on_dask(tmp_path, cluster):
    took = _cancel_and_check(tmp_path, "wait", cluster.scheduler_address)
    assert took < 20


def test_cancel_refused_unknown_finished_foreign(tmp_path):
    from daskflow.owners import Lease, Owner
    from daskflow.store.runs import FlowUpdate, open_run_store

    out = cli("flow-runs", "cancel", "0123abcd")
    assert out.returncode == 1 and "no runs recorded" in out.stderr  # no store yet: nothing is created
    assert not (tmp_path / "home" / "cancel-requests").exists()

    store = open_run_store()
    far = Owner("another-host.example", 4242, 1.0)
    ids = {"done": "11111111-1111-4111-8111-111111111111", "foreign": "22222222-2222-4222-8222-222222222222"}
    store.apply([FlowUpdate(ids["done"], {"name": "done", "state": "Completed", "state_type": "COMPLETED"})])
    store.apply([FlowUpdate(ids["foreign"], {"name": "far", "state": "Running", "state_type": "RUNNING",
                                             "owner": far.key})], lease=Lease(far, time.time() + 600))
    for prefix, words in (("0123abcd", "no flow run"), ("11111111", "already Completed"),
                          ("22222222", "on host 'another-host.example'")):
        out = cli("flow-runs", "cancel", prefix)
        assert out.returncode == 1 and words in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "home" / "cancel-requests").exists()  # nothing changed
    assert open_run_store().flow_record("22222222")["state"] == "Running"


@pytest.mark.parametrize("kind", ["unknown", "flow task run"])
def test_runs_cancel_refuses_what_is_not_a_queued_background_run(tmp_path, kind):
    from daskflow import flow, task
    from daskflow.engine.tracking import tracker
    from daskflow.runners import ThreadPoolTaskRunner

    if kind == "unknown":
        out = cli("runs", "cancel", "0123abcd")
        assert out.returncode == 1 and "no" in out.stderr and "Traceback" not in out.stderr
        return

    @task
    def one():
        return 1

    @flow(task_runner=ThreadPoolTaskRunner(1))
    def small():
        return one.submit().task_run_id

    rid = small()
    assert tracker.flush()
    out = cli("runs", "cancel", rid[:10])
    assert out.returncode == 1 and "already Completed" in out.stderr, out.stderr


def test_runs_cancel_a_queued_background_run(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "runners"))
    import bg_tasks
    from background_procs import start_server, start_worker

    from daskflow.background.client import disconnect

    home = tmp_path / "home"
    proc, address = start_server(home)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    try:
        fut = bg_tasks.add.delay(1, 2)  # no task worker serves it: it stays Scheduled
        deadline = time.monotonic() + 30
        while cli("runs", "show", fut.task_run_id, "-o", "json").returncode != 0:  # recorded by the server
            assert time.monotonic() < deadline, "the server never recorded the run"
            time.sleep(0.2)
        out = cli("runs", "cancel", fut.task_run_id[:12])
        assert out.returncode == 0 and "cancelled" in out.stdout, out.stderr
        assert fut.state.name == "Cancelled"
        again = cli("runs", "cancel", fut.task_run_id[:12])
        assert again.returncode == 1 and "already Cancelled" in again.stderr, again.stderr

        worker, _ = start_worker(home, address, "bg_tasks:nap")
        try:
            taken = bg_tasks.nap.delay(1, 120)  # a task worker takes it: Running for 2 minutes
            deadline = time.monotonic() + 30
            while taken.state.name != "Running":
                assert time.monotonic() < deadline, taken.state
                time.sleep(0.2)
            out = cli("runs", "cancel", taken.task_run_id)
            assert out.returncode == 1 and "left to finish" in out.stderr, out.stderr
            assert taken.state.name == "Running"  # it was not touched
        finally:
            worker.stop(signal.SIGKILL)  # ours, by pid: the 2-minute run is not waited for
    finally:
        disconnect(address)
        assert proc.stop() == 0
