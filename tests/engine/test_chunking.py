"""Chunked .map(): sizes, alignment of map-over-map, per-run isolation."""

import time

import dask.config

from daskflow import flow, task
from daskflow.engine.client import chunking
from daskflow.runners import ThreadPoolTaskRunner


@task
def inc(x):
    return x + 1


@task
def where(i):
    from distributed import get_worker

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.05:  # busy: keeps the worker thread occupied
        pass
    return get_worker().address


def test_plan_grows_then_caps_for_unmeasured_task():
    t = task(name="fresh-task")(lambda x: x)
    bounds = chunking.plan(t, 1000, ThreadPoolTaskRunner(2))
    sizes = [hi - lo for lo, hi in bounds]
    assert sizes[:5] == [1, 2, 4, 8, 16]
    assert max(sizes) == 125  # 1000 / (4 x 2 threads)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_plan_uses_measured_time_per_run():
    t = task(name="measured")(lambda x: x)
    chunking._seconds_per_run[t.task_key] = 0.2
    sizes = [hi - lo for lo, hi in chunking.plan(t, 32, ThreadPoolTaskRunner(2))]
    assert sizes[0] == 4 and sizes[-1] == 1  # a quarter of a share of what is left, down to 1 run
    chunking._seconds_per_run[t.task_key] = 1e-6
    with dask.config.set({"daskflow.map.max-chunksize": 5000}):
        sizes = {hi - lo for lo, hi in chunking.plan(t, 100_000, ThreadPoolTaskRunner(2))}
    assert sizes == {5000}


def test_on_many_threads_chunks_get_longer():
    t = task(name="measured-many")(lambda x: x)
    chunking._seconds_per_run[t.task_key] = 0.01
    smallest = {n: min(hi - lo for lo, hi in chunking.plan(t, 100_000, ThreadPoolTaskRunner(n))[:-1])
                for n in (2, 8, 64)}
    assert smallest[2] == smallest[8] == 20  # 0.2 s of 10 ms runs
    sizes = [hi - lo for lo, hi in chunking.plan(t, 100_000, ThreadPoolTaskRunner(64))]
    assert 160 in sizes  # 64 threads / 40 chunks a second: 1.6 s chunks before the last round
    assert smallest[64] == 40  # whose chunks go down to a quarter of that
    with dask.config.set({"daskflow.map.max-chunks-per-second": None}):
        assert min(hi - lo for lo, hi in chunking.plan(t, 100_000, ThreadPoolTaskRunner(64))[:-1]) == 20


def test_measured_heavy_runs_are_cut_by_guided_self_scheduling():
    """Chunks of 10 ms runs on 32 threads: the first a quarter of an even share, each then a
    quarter share of what is left, down to the time target; few chunks, also from an estimate
    six times too high (a warm-up on a busy machine measured 60 ms)."""
    t = task(name="measured-guided")(lambda x: x)
    chunking._seconds_per_run[t.task_key] = 0.01
    bounds = chunking.plan(t, 100_000, ThreadPoolTaskRunner(32))
    sizes = [hi - lo for lo, hi in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == 100_000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert sizes[0] == 782  # ceil(100,000 / (4 x 32))
    assert sizes[1] == 776  # ceil(99,218 / 128)
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))  # never growing: the end evens out
    target = sizes.index(80)  # the time target: 0.8 s on 32 threads, down to the last round
    last = next(i for i, size in enumerate(sizes) if size < 80)
    assert 100_000 - sum(sizes[:last]) < 32 * 80  # the last round: less left than a chunk a thread
    assert last - target > 50 and set(sizes[target:last]) == {80}
    assert set(sizes[-20:-1]) == {20}  # down to 0.2 s (a quarter of the target, map.chunk-seconds)
    assert 350 < len(bounds) < 500  # uniform 0.8 s chunks would be 1,250
    chunking._seconds_per_run[t.task_key] = 0.06
    assert len(chunking.plan(t, 100_000, ThreadPoolTaskRunner(32))) < 1000  # uniform: 7,693 chunks


def test_time_per_run_is_the_median_of_recent_chunks_weighted_by_runs():
    """The late-ending chunks of a warm-up (the ones a busy process delayed most) do not set
    the estimate; a chunk of many runs outweighs many one-run chunks."""
    from array import array

    from daskflow.engine.core.envelope import ChunkResult

    t = task(name="observed")(lambda x: x)

    def ended(n: int, per_run: float) -> ChunkResult:
        res = ChunkResult(t.name, 0, 0, n, bytearray(n), [None] * n)
        res.started = 100.0
        res.ends = array("d", [100.0 + per_run * (i + 1) for i in range(n)])
        return res

    for per_run in [0.010] * 20 + [0.060] * 5:  # the slowest end last
        chunking.observe(t, ended(1, per_run))
    assert abs(chunking._seconds_per_run[t.task_key] - 0.010) < 1e-9
    for _ in range(30):
        chunking.observe(t, ended(1, 0.060))
    chunking.observe(t, ended(40, 0.012))  # 40 runs against 31 one-run chunks
    assert abs(chunking._seconds_per_run[t.task_key] - 0.012) < 1e-9


def test_time_per_run_is_measured_from_the_first_run_not_the_chunks_setup():
    from array import array

    from daskflow.engine.core.envelope import ChunkResult

    t = task(name="observed-setup")(lambda x: x)
    for _ in range(3):  # one-run chunks whose setup (before their run loop) took 10 ms
        res = ChunkResult(t.name, 0, 0, 1, bytearray(1), [None])
        res.started, res.first, res.ends = 100.0, 100.010, array("d", [100.022])
        chunking.observe(t, res)
    assert abs(chunking._seconds_per_run[t.task_key] - 0.012) < 1e-9  # not 22 ms


def test_measured_chunks_take_at_most_max_chunk_seconds():
    t = task(name="measured-longest")(lambda x: x)
    chunking._seconds_per_run[t.task_key] = 0.01
    sizes = [hi - lo for lo, hi in chunking.plan(t, 100_000, ThreadPoolTaskRunner(2))]
    assert max(sizes) == 1000  # 10 s of 10 ms runs, not the guided share of 12,500
    with dask.config.set({"daskflow.map.max-chunk-seconds": None}):
        # then the first chunk is the guided share: a quarter of an even share per thread
        assert max(hi - lo for lo, hi in chunking.plan(t, 100_000, ThreadPoolTaskRunner(2))) == 100_000 // (4 * 2)


def test_explicit_chunksize():
    bounds = chunking.plan(inc, 10, ThreadPoolTaskRunner(2), chunksize=4)
    assert bounds == [(0, 4), (4, 8), (8, 10)]


def test_every_element_is_its_own_run(runner):
    @task
    def maybe(x):
        if x % 7 == 3:
            raise ValueError(x)
        return x

    @flow(task_runner=runner)
    def f():
        futs = maybe.map(range(50), chunksize=25)
        states = futs.states
        ids = {fut.task_run_id for fut in futs}
        return [s.name for s in states], len(ids), len(futs.chunks)

    names, unique_ids, chunks = f()
    assert chunks == 2 and unique_ids == 50
    assert names == ["Failed" if x % 7 == 3 else "Completed" for x in range(50)]


def test_map_over_map_lines_up_chunks_without_client_round_trip(dask_runner):
    @flow(task_runner=dask_runner)
    def f():
        first = inc.map(range(1000))
        second = inc.map(first)
        values = second.result()
        fetched_upstream = [c.result is not None for c in first.chunks]
        bounds = ([(c.start, c.n) for c in first.chunks], [(c.start, c.n) for c in second.chunks])
        return values, fetched_upstream, bounds

    values, fetched, (b1, b2) = f()
    assert values == [x + 2 for x in range(1000)]
    assert b1 == b2
    # Chunks that finished before the downstream map was submitted were fetched at once (and
    # sent by value); the rest went worker to worker.
    assert not all(fetched), "the downstream map read upstream values through the client"


def test_heavy_elements_spread_over_all_workers(dask_runner):
    @flow(task_runner=dask_runner)
    def f():
        return where.map(range(16)).result()

    assert len(set(f())) == 2


def test_adaptive_size_after_measurement(dask_runner):
    @task
    def tiny(x):
        return x

    @flow(task_runner=dask_runner)
    def f():
        tiny.map(range(20_000)).result()  # measures
        return len(tiny.map(range(20_000)).chunks)

    # measured at well under a microsecond per run: the cap (n / (4 x 2 threads)) applies
    assert f() == 8


def test_the_last_round_on_many_threads_ends_together():
    """The last round of a guided plan is cut into a thread's share of what is left: the
    threads run out of work within a fraction of the time target of each other, where chunks
    of the target (1.6 s at 64 threads) left some idle for up to that long (greedy threads
    taking chunks in order, as Dask's queue hands them out)."""
    import heapq

    t = task(name="measured-tail")(lambda x: x)
    chunking._seconds_per_run[t.task_key] = 0.01

    def spread(bounds: list[tuple[int, int]]) -> float:
        free = [0.0] * 64
        for lo, hi in bounds:
            heapq.heappush(free, heapq.heappop(free) + (hi - lo) * 0.01)
        return max(free) - min(free)

    fine = chunking.plan(t, 100_000, ThreadPoolTaskRunner(64))
    with dask.config.set({"daskflow.map.chunk-seconds": 1.6}):  # no finer last round: the time target throughout
        coarse = chunking.plan(t, 100_000, ThreadPoolTaskRunner(64))
    assert min(hi - lo for lo, hi in coarse[:-1]) == 160
    assert spread(fine) <= 0.45 < 0.8 <= spread(coarse)
    assert len(fine) - len(coarse) < 64 * 2  # a few more chunks, all in the last round
