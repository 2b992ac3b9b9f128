"""Owners: who runs are owned by, and when an owner counts as dead (tests/test_reliability.py kills real ones)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from daskflow import owners
from daskflow.store.runs import ChunkUpdate, FlowUpdate, open_run_store


def test_owner_alive_on_this_host_by_pid_and_start_time():
    me = owners.me()
    assert owners.is_alive(me, lease_until=None)
    assert not owners.is_alive(me._replace(started=me.started - 60), lease_until=None), "a reused pid"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not owners.is_alive(me._replace(pid=int(gone.stdout)), lease_until=time.time() + 60)


def test_owner_on_another_host_is_alive_while_its_lease_lasts():
    elsewhere = owners.Owner("another-host", os.getpid(), 1.0)
    assert owners.is_alive(elsewhere, lease_until=time.time() + 5)
    assert not owners.is_alive(elsewhere, lease_until=time.time() - 1)


def test_store_ends_only_the_runs_of_owners_whose_lease_expired():
    store = open_run_store()
    for host, until in (("expired-host", time.time() - 1), ("leased-host", time.time() + 60)):
        owner = owners.Owner(host, 4242, 1.0)
        fid = str(uuid.uuid4())
        ops = [FlowUpdate(fid, {"name": host, "state": "Running", "state_type": "RUNNING", "start": time.time(),
                                "owner": owner.key}),
               ChunkUpdate(uuid.uuid4().int, 0, {"task": "t", "n": 3, "flow_run_id": fid, "submitted": time.time(),
                                                 "live": ["PENDING", "Pending", time.time(), ""], "owner": owner.key})]
        store.apply(ops, lease=owners.Lease(owner, until))
    assert [o.host for o in store.end_dead_owners()] == ["expired-host"]
    assert store.end_dead_owners() == []
    flows = {f["name"]: f for f in store.flow_runs()}
    assert flows["expired-host"]["state"] == "Crashed" and flows["leased-host"]["state"] == "Running"
    assert "died: host expired-host pid 4242" in flows["expired-host"]["message"]
    crashed = store.task_runs(state="Crashed")
    assert len(crashed) == 3 and {r["flow_run_id"] for r in crashed} == {flows["expired-host"]["id"]}
    assert store.task_run(crashed[0]["id"])["history"][-1]["message"] == flows["expired-host"]["message"]
    assert len(store.task_runs(state="Pending")) == 3


def test_a_process_with_runs_in_flight_renews_its_lease():
    import threading

    import dask.config

    from daskflow import task
    from daskflow.engine.tracking import tracker
    from daskflow.runners import ThreadPoolTaskRunner
    from daskflow.store.runs import unpack

    release = threading.Event()

    @task
    def blocked():
        release.wait(30)

    store = open_run_store()
    key = owners.me().key

    def lease_until():
        raw = store.env.read(lambda txn: txn.get(key, db=store.env.db("owners")))
        return None if raw is None else unpack(raw)["lease_until"]

    with dask.config.set({"daskflow.owners.renew-seconds": 0.1}), ThreadPoolTaskRunner(1) as runner:
        from daskflow.runners import set_default_runner

        old = set_default_runner(runner)
        try:
            fut = blocked.submit()
            assert tracker.flush()
            first = lease_until()
            assert first is not None
            deadline = time.monotonic() + 10
            while (lease_until() or 0) <= first:
                assert time.monotonic() < deadline, "the lease was not renewed"
                time.sleep(0.05)
            release.set()
            fut.result()
        finally:
            set_default_runner(old)
