"""Failures of a big chunk reach the store from the worker's end message, before anyone fetches the chunk."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

from ui_procs import env_for, get_json, start_ui, stop_ui

from daskflow import allow_failure, flow, task


@task
def odd(i: int) -> int:
    if i >= 5_000:
        raise ValueError(f"bad {i}")
    return i


@task
def hold(values: list, event_name: str) -> int:
    from distributed import Event

    Event(event_name).wait(120)  # released by the test once it has read the store
    return len(values)


def _cli(home, *args: str) -> object:
    out = subprocess.run([sys.executable, "-m", "daskflow", *args, "-o", "json"], env=env_for(home),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _state(home, run_id: str) -> str | None:
    """The run's state in the store, None while the store or the run is not written yet."""
    out = subprocess.run([sys.executable, "-m", "daskflow", "runs", "show", run_id, "-o", "json"],
                         env=env_for(home), capture_output=True, text=True, timeout=60)
    if out.returncode and ("no runs recorded" in out.stderr or "no task run" in out.stderr.lower()):
        return None
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["state"]


def test_failures_past_10000_runs_of_one_chunk_are_in_the_store_while_the_flow_runs(on_cluster, daskflow_home):
    # 15,000 failed runs in one chunk: more than the 10,000 [index, code] pairs the end message once carried.
    # The chunk stays unfetched while `hold` (its dependent) waits: only the end message can tell the store.
    from distributed import Client, Event

    release = f"release-{uuid.uuid4().hex}"
    seen: dict = {}

    @flow
    def big() -> int:
        futs = odd.map(range(20_000), chunksize=20_000)
        seen["last"] = futs[19_999].task_run_id
        return hold.submit(allow_failure(futs), release).result()

    done = threading.Thread(target=lambda: seen.setdefault("result", big()), daemon=True)
    done.start()
    client = Client(on_cluster.scheduler_address)
    try:
        deadline = time.monotonic() + 60
        while "last" not in seen or _state(daskflow_home, seen["last"]) != "Failed":
            assert time.monotonic() < deadline, "run 19,999 never read Failed in the store"
            time.sleep(0.2)  # polling a store written by another thread, with a deadline
        assert done.is_alive()  # the flow still runs: nobody fetched the chunk
        failed = _cli(daskflow_home, "runs", "ls", "--state", "Failed", "--task", "odd", "--limit", "20000")
        assert len(failed) == 15_000
        assert {"odd-10000", "odd-19999"} <= {r["name"] for r in failed}
        ui = start_ui(daskflow_home)
        try:
            assert get_json(f"{ui.base}/api/runs/{seen['last']}")["state"] == "Failed"
            page = get_json(f"{ui.base}/api/runs?state=Failed&task=odd&limit=1000")
            assert len(page) == 1000 and {r["state"] for r in page} == {"Failed"}
        finally:
            stop_ui(ui)
        assert done.is_alive()
    finally:
        Event(release, client=client).set()
        done.join(60)
        client.close()
    assert seen["result"] == 20_000
