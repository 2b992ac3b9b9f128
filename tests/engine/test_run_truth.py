"""A run's run_count and history: futures and `daskflow runs show` tell the same story.

One rule decides both (``daskflow.codes.run_count_of``), as in Prefect: a cache hit never
enters Running (run_count 0, Pending -> Cached); a run that started and was lost with
its worker counts its attempt and ends Crashed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from daskflow import flow, task
from daskflow.cache import INPUTS
from daskflow.engine.tracking import tracker
from daskflow.runners.dask import DaskTaskRunner


@task
def ok(x):
    return x + 1


@task(cache_policy=INPUTS)
def cached(x):
    return x * 2


@task(retries=2, retry_delay_seconds=0)
def always_fails(x):
    raise ValueError(f"bad {x}")


@task
def dies_when_told(go: str):
    while not os.path.exists(go):  # the client has seen this run Running: now die
        time.sleep(0.01)
    os._exit(1)


def runs_show(run_id: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "daskflow", "runs", "show", run_id, "-o", "json"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def story(future) -> tuple[int, list[str]]:
    return future.run_count, [s.name for s in future.history()]


def stored_story(run_id: str) -> tuple[int, list[str]]:
    record = runs_show(run_id)
    return record["run_count"], [h["name"] for h in record["history"]]


@pytest.mark.parametrize("case", ["completed", "cached", "failed-after-retries"])
def test_future_and_run_store_agree(cluster, case):
    runner = DaskTaskRunner(address=cluster.scheduler_address)

    @flow(task_runner=runner)
    def pipeline():
        if case == "completed":
            fut = ok.submit(1)
        elif case == "cached":
            cached.submit(21).wait()
            fut = cached.submit(21)
        else:
            fut = always_fails.submit(3)
        fut.wait()
        return fut.task_run_id, fut.state.name, story(fut)

    run_id, state, seen = pipeline()
    expected = {
        "completed": ("Completed", (1, ["Pending", "Running", "Completed"])),
        "cached": ("Cached", (0, ["Pending", "Cached"])),
        "failed-after-retries": ("Failed", (3, ["Pending", "Running", "AwaitingRetry", "Retrying",
                                                "AwaitingRetry", "Retrying", "Failed"])),
    }[case]
    assert (state, seen) == expected
    assert tracker.flush()
    assert stored_story(run_id) == seen


def test_run_lost_with_its_worker_counts_its_attempt_in_both_views(tmp_path):
    # A cluster of its own (the session cluster's workers are not killed): one worker, and
    # Dask gives a run up at the first worker death.
    import dask.config
    from distributed import LocalCluster

    from daskflow.runners.clients import close_shared_client

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lc = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0")
    runner = DaskTaskRunner(address=lc.scheduler_address)
    go = tmp_path / "go"

    @flow(task_runner=runner)
    def pipeline():
        fut = dies_when_told.submit(str(go))
        deadline = time.monotonic() + 60
        while fut.state.name != "Running" and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        fut.wait(120)
        return fut.task_run_id, fut.state.name, story(fut)

    try:
        run_id, state, seen = pipeline()
    finally:
        close_shared_client(lc.scheduler_address)
        lc.close()
    assert state == "Crashed"
    assert seen == (1, ["Pending", "Running", "Crashed"])
    assert tracker.flush()
    assert stored_story(run_id) == seen


def test_background_run_retried_once_counts_2_in_its_future_the_cli_and_the_api(tmp_path, monkeypatch):
    # A real daskflow server and task worker (subprocesses): the server's host keeps the
    # run store, so `runs show` and the UI read the server's home.
    root = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "runners"))
    monkeypatch.syspath_prepend(str(root / "ui"))
    import bg_tasks
    from background_procs import env_for, start_server, start_worker
    from ui_procs import get_json, start_ui, stop_ui

    from daskflow.background.client import disconnect

    home = tmp_path / "srv"
    server, address = start_server(home)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    worker = None
    try:
        worker, _ = start_worker(home, address, "bg_tasks:flaky")
        fut = bg_tasks.flaky.delay(str(tmp_path / "attempts"))  # the first attempt fails, the retry completes
        assert fut.result(timeout=60) == 2
        seen = story(fut)
        assert seen == (2, ["Scheduled", "Pending", "Running", "AwaitingRetry", "Retrying", "Completed"])

        def stored() -> dict | None:  # the server writes its run store in batches: eventually consistent
            out = subprocess.run([sys.executable, "-m", "daskflow", "runs", "show", fut.task_run_id, "-o", "json"],
                                 capture_output=True, text=True, env=env_for(home), timeout=60)
            record = json.loads(out.stdout) if out.returncode == 0 else None
            return record if record and record["state"] == "Completed" else None

        deadline = time.monotonic() + 60
        while (record := stored()) is None:
            assert time.monotonic() < deadline, "the run store never showed the run Completed"
        assert (record["run_count"], [h["name"] for h in record["history"]]) == seen
        ui = start_ui(home)
        try:
            assert get_json(ui.base + f"/api/runs/{fut.task_run_id}") == record
        finally:
            stop_ui(ui)
    finally:
        if worker is not None:
            worker.stop()
        disconnect(address)
        assert server.stop() == 0


def test_submitted_runs_have_distinct_names_map_elements_keep_their_index(cluster):
    runner = DaskTaskRunner(address=cluster.scheduler_address)

    @flow(task_runner=runner)
    def pipeline():
        first = cached.submit(5)
        first.wait()
        subs = [ok.submit(i) for i in range(3)] + [first, cached.submit(5)]  # the last one from the cache
        mapped = ok.map(range(3))
        for f in [*subs, *mapped]:
            f.wait()
        return [f.task_run_id for f in subs], [f.task_run_id for f in mapped], subs[-1].state.name

    sub_ids, map_ids, last = pipeline()
    assert last == "Cached"
    assert tracker.flush()
    sub_names = [runs_show(rid)["name"] for rid in sub_ids]
    assert len(set(sub_names)) == 5, sub_names
    assert all(n.startswith(("ok-", "cached-")) for n in sub_names)
    assert [runs_show(rid)["name"] for rid in map_ids] == ["ok-0", "ok-1", "ok-2"]
