"""Cancellation, Ctrl-C and worker loss."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

from daskflow import flow, task
from daskflow.runners import ThreadPoolTaskRunner

GATES: dict[str, threading.Event] = {}


@task
def blocked(name):
    GATES[name].wait(30)
    return name


@task
def dask_blocked(name):
    from distributed import Event

    Event(name).wait(60)
    return name


def test_cancel_pending_run_threads():
    GATES["c1"] = threading.Event()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def f():
        first = blocked.submit("c1")
        second = blocked.submit("c1")
        cancelled = second.cancel()
        GATES["c1"].set()
        return cancelled, first.result(), second.state.name

    assert f() == (True, "c1", "Cancelled")


def test_cancel_pending_run_dask(dask_runner):
    from distributed import Client, Event

    client = Client(dask_runner.address or "", set_as_default=False)
    gate = Event("gate-cancel", client=client)

    @flow(task_runner=dask_runner)
    def f():
        busy = dask_blocked.map(["gate-cancel"] * 2, chunksize=1)
        waiting = dask_blocked.submit("gate-cancel")
        cancelled = waiting.cancel()
        gate.set()
        busy.wait()
        return cancelled, waiting.state.name, waiting.run_count

    try:
        assert f() == (True, "Cancelled", 0)
    finally:
        client.close()


def test_ctrl_c_cancels_pending_runs(tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(textwrap.dedent("""
        import sys, threading
        from daskflow import flow, task
        from daskflow.runners import ThreadPoolTaskRunner

        started = threading.Event()
        futures = []

        @task
        def block(i):
            started.set()
            threading.Event().wait(60)

        @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
        def f():
            futures.extend(block.map(range(5), chunksize=1))
            started.wait(30)
            print("started", flush=True)
            threading.Event().wait(60)

        try:
            f()
        except KeyboardInterrupt:
            print(",".join(fut.state.name for fut in futures), flush=True)
            import os; os._exit(0)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    names = out.strip().split(",")
    assert names == ["Cancelled"] * 5, names


def test_worker_death_ends_crashed():
    # A cluster of its own (the session cluster's workers are not killed): Dask gives the
    # run up at the first worker death.
    import dask.config
    from distributed import LocalCluster

    from daskflow.runners.clients import close_shared_client
    from daskflow.runners.dask import DaskTaskRunner

    @task
    def die():
        os._exit(1)

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0")

    @flow(task_runner=DaskTaskRunner(address=lc.scheduler_address))
    def f():
        fut = die.submit()
        fut.wait(120)
        return fut.state.name, fut.state.message

    try:
        name, message = f()
        assert name == "Crashed"
        assert "memory limit" in message and "KilledWorker" in message
    finally:
        close_shared_client(lc.scheduler_address)
        lc.close()
