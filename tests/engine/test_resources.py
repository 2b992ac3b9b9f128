"""Per-run resources: CPU time and peak RSS increase, per run for heavy runs, per chunk for light ones."""

from __future__ import annotations

import time

import dask.config
import numpy as np

from daskflow import flow, task
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.store import queries
from daskflow.store.runs import open_run_store

MiB = 2**20


@task
def grow(mib):
    block = np.ones(mib * MiB // 8)  # writes every page: resident
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.15:  # CPU time of this thread, sampled meanwhile
        pass
    return float(block[0])


@task
def inc(x):
    return x + 1


def _resources(run_id):
    return open_run_store().task_run(run_id)["resources"]


def test_heavy_runs_are_measured_alone_and_light_runs_by_their_chunk(runner):
    @flow(task_runner=runner)
    def measured():
        big = grow.map([1, 64], chunksize=2)
        small = inc.map(range(50), chunksize=50)
        big.wait()
        small.wait()
        return [f.task_run_id for f in big], [f.task_run_id for f in small]

    big, small = measured()
    assert tracker.flush()
    first, second = _resources(big[0]), _resources(big[1])
    assert first["resolution"] == second["resolution"] == "run"
    assert 0.14 <= second["cpu_seconds"] < second["wall_seconds"] + 0.01
    assert second["peak_rss_increase_bytes"] >= 48 * MiB  # 64 MiB held while it ran
    assert first["peak_rss_increase_bytes"] < 32 * MiB  # its own 1 MiB, not its chunk-mate's 64
    light = _resources(small[7])
    assert light["resolution"] == "chunk" and light["chunk_runs"] == 50
    assert light["cpu_seconds"] is not None and light["worker_rss_bytes"] > 0
    flow_run_id = open_run_store().task_run(big[0])["flow_run_id"]
    by_task = {m["task"]: m for m in queries.task_metrics(open_run_store(), flow_run_id)}
    assert by_task["grow"]["cpu_max"] >= 0.14 and by_task["grow"]["mem_max"] >= 48 * MiB
    assert by_task["inc"]["cpu_p50"] is not None and by_task["inc"]["mem_p95"] is not None


def test_resources_off_records_wall_time_only():
    @flow(task_runner=ThreadPoolTaskRunner(2))
    def unmeasured():
        return [f.task_run_id for f in inc.map(range(4))]

    with dask.config.set({"daskflow.resources": False}):
        ids = unmeasured()
    assert tracker.flush()
    res = _resources(ids[0])
    assert res["resolution"] is None and res["wall_seconds"] >= 0



def test_direct_calls_record_cpu_time_and_peak_rss_increase():
    """``t(x)`` inside a flow: a heavy call is measured alone, light calls by their folded record."""

    @task
    def bad():
        raise ValueError("no")

    @flow(task_runner=ThreadPoolTaskRunner(1))
    def direct():
        grow(64)
        assert bad(return_state=True).is_failed()  # a call with more to record than "Completed"
        return [inc(i) for i in range(20)]

    assert direct() == list(range(1, 21))
    assert tracker.flush()
    store = open_run_store()
    [heavy] = store.task_runs(task="grow")
    res = _resources(heavy["id"])
    assert res["resolution"] == "run"
    assert 0.14 <= res["cpu_seconds"] < res["wall_seconds"] + 0.01
    assert res["peak_rss_increase_bytes"] >= 48 * MiB  # 64 MiB held while it ran
    light = [_resources(r["id"]) for r in store.task_runs(task="inc")]
    assert len(light) == 20 and {r["resolution"] for r in light} == {"chunk"}
    assert all(r["cpu_seconds"] > 0 and r["peak_rss_increase_bytes"] is not None and r["worker_rss_bytes"] > 0
               for r in light)
    [failed] = store.task_runs(task="bad")
    assert _resources(failed["id"])["cpu_seconds"] > 0
    by_task = {m["task"]: m for m in queries.task_metrics(store, heavy["flow_run_id"])}
    assert by_task["grow"]["cpu_max"] >= 0.14 and by_task["grow"]["mem_max"] >= 48 * MiB


def test_light_direct_calls_read_the_cpu_clock_once_a_millisecond_and_their_sum_stays_exact():
    """The clock is a system call worth a trivial call's budget: a burst of light calls of one
    task reads it about once a millisecond, and the readings still add up to the burst's CPU."""
    from daskflow.engine.worker import resources

    def spin(seconds):  # a light call's body: CPU, well under HEAVY_SECONDS
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass

    def heavy_call(what):  # a heavy call always reads: it brackets the burst
        watch = resources.call_started(time.time())
        resources.call_ended(watch, time.time(), resources.HEAVY_SECONDS, what)
        return watch

    a, b = object(), object()
    first = heavy_call(b).cpu_at
    readings = total = 0
    for i in range(400):
        watch = resources.call_started(time.time())
        spin(0.00005)
        resources.call_ended(watch, time.time(), 0.00005, a)
        readings += watch.cpu > 0
        total += watch.cpu
    last = heavy_call(b)  # another task's heavy call: it reads, and takes what the burst left unread
    assert last.heavy and last.cpu > 0
    total += last.cpu
    assert 1 <= readings < 200  # ~20 ms of calls: about one reading a millisecond, the first call's among them
    # the readings add up to the thread's CPU between the brackets, less what the caller's own
    # pauses between calls took (here a few statements a call)
    assert last.cpu_at - first - 0.002 <= total <= last.cpu_at - first + 1e-9


def test_heavy_runs_shorter_than_a_sampling_period_keep_the_gil_and_longer_ones_read_rss_afresh(monkeypatch):
    """A fresh RSS reading is a system call that gives the GIL away: after a 10 ms run the
    thread waits for it once more (64 one-thread workers in one process: runs ~1 ms longer).
    A heavy run shorter than ``FRESH_SECONDS`` takes the sampler's latest reading; a longer
    one, or one that follows it, still sees the memory it took."""
    import threading

    from daskflow.engine.worker import resources

    me, fresh, real = threading.get_ident(), [], resources.rss

    def counting() -> int:  # the sampler's own thread reads too: count this thread's readings only
        if threading.get_ident() == me:
            fresh.append(1)
        return real()

    monkeypatch.setattr(resources, "rss", counting)
    meter = resources.Meter()
    fresh.clear()  # (a meter starting an idle sampler takes one reading)
    for i in range(5):
        time.sleep(0.01)
        meter.heavy(i, 0.01)
    assert fresh == []
    block = np.ones(32 * MiB // 8)  # writes every page: resident
    meter.heavy(5, resources.FRESH_SECONDS)
    assert len(fresh) == 1
    out = meter.finish()
    assert [run[0] for run in out["runs"]] == [0, 1, 2, 3, 4, 5]
    assert out["runs"][5][2] >= 24 * MiB and float(block[0]) == 1.0
    # a record a heavy run: none of them a container the GC keeps walking (a list a run, 6,400 a
    # second at 64 workers, kept in envelopes and Dask's event log, made full collections of
    # 0.1-0.2 s come every few seconds)
    import gc

    gc.collect()
    assert not any(gc.is_tracked(run) for run in out["runs"])
