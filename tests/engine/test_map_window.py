"""A sized ``.map()`` goes through a window: the scheduler never holds the whole map.

Observed from the scheduler itself (the session LocalCluster's scheduler runs in this
process): a plugin counts, at every transition of the map's keys, how many of them the
scheduler holds and how many of those are not finished.
"""

import time

import dask
import pytest
from distributed import Client, Event
from distributed.diagnostics.plugin import SchedulerPlugin

from daskflow import as_completed, flow, task
from daskflow.runners import batching

pytestmark = pytest.mark.skipif(not batching.available(), reason="windows need the graph-submission names")

WORKERS = 2  # the session cluster: 2 workers x 1 thread; default window 2 per thread
UNFINISHED = ("waiting", "queued", "processing", "no-worker")  # sent, not finished (not being released)


def pause(x):
    time.sleep(0.2)  # the length of chunk the planner cuts (daskflow.map.chunk-seconds)
    return x


def quick(x):
    return x


def add(xs):
    return sum(xs)


def gated(name):
    Event(name).wait(60)
    return name


t_pause = task(pause, name="window-probe")
t_quick = task(quick, name="window-probe")  # the same keys' prefix: what the probe counts
t_add = task(add)
t_gated = task(gated, name="window-gated")


class MapOnScheduler(SchedulerPlugin):
    """The most keys of a task the scheduler held at once, and the most of them unfinished."""

    def __init__(self, scheduler, prefix: str) -> None:
        self.scheduler, self.prefix = scheduler, prefix
        self.held = self.unfinished = 0
        self.name = f"peak-{prefix}"

    def transition(self, key, start, finish, *args, **kwargs):
        if not (isinstance(key, str) and key.startswith(self.prefix)):
            return
        mine = [ts for k, ts in self.scheduler.tasks.items() if isinstance(k, str) and k.startswith(self.prefix)]
        self.held = max(self.held, len(mine))
        self.unfinished = max(self.unfinished, sum(ts.state in UNFINISHED for ts in mine))


def observed_map(cluster, runner, n: int, t=t_pause) -> MapOnScheduler:
    probe = MapOnScheduler(cluster.scheduler, "window-probe-")
    cluster.scheduler.add_plugin(probe)

    @flow(task_runner=runner)
    def fan_out():
        return t.map(range(n), chunksize=1).result()

    try:
        assert fan_out() == list(range(n))
    finally:
        cluster.scheduler.remove_plugin(name=probe.name)
    return probe


def test_a_map_of_many_chunks_never_has_more_than_4_per_worker_on_the_scheduler(cluster, dask_runner):
    probe = observed_map(cluster, dask_runner, 12)
    assert 1 <= probe.unfinished <= 2 * WORKERS  # the window: sent and unfinished
    assert probe.held <= 4 * WORKERS  # with those finished and not yet read (released as read)


def test_without_a_window_the_scheduler_holds_the_whole_map(cluster, dask_runner):
    with dask.config.set({"daskflow.map.window": 0}):  # what the probe sees without the window
        probe = observed_map(cluster, dask_runner, 12, t_quick)
    assert probe.held == 12


def test_chunks_that_need_held_chunks_wait_for_them(dask_runner):
    @flow(task_runner=dask_runner)
    def chained():
        first = t_pause.map(range(6), chunksize=1)
        second = t_pause.map(first, chunksize=1)  # chunk i needs chunk i of ``first``, maybe still held
        total = t_add.submit(second)  # needs every chunk of both
        ended = sorted(f.result() for f in as_completed(second))
        return ended, total.result()

    assert chained() == (list(range(6)), sum(range(6)))


def test_a_held_chunk_cancelled_never_runs(dask_runner):
    client = Client(dask_runner.address, set_as_default=False)
    gate = Event("gate-window", client=client)

    @flow(task_runner=dask_runner)
    def cancel_the_tail():
        futs = t_gated.map(["gate-window"] * 12, chunksize=1)  # 4 sent, 8 held
        cancelled = [futs[i].cancel() for i in range(8, 12)]
        gate.set()
        futs.wait()
        return cancelled, [f.state for f in futs], [f.run_count for f in futs[8:]]

    try:
        cancelled, states, counts = cancel_the_tail()
    finally:
        client.close()
    assert cancelled == [True] * 4
    assert [s.name for s in states] == ["Completed"] * 8 + ["Cancelled"] * 4, [s.message for s in states]
    assert counts == [0] * 4
