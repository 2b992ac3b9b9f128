"""Consuming a big ``.map()`` as it completes holds per-chunk envelopes, not per-run objects."""

import tracemalloc

import pytest

from daskflow import as_completed, flow, task
from daskflow.engine.tracking import tracker

N = 200_000


@task
def inc(x):
    return x + 1


@task
def boxed(x):
    return [x]


def _stream(futs, how):
    total = 0
    for f in (as_completed(futs) if how == "as_completed" else futs):
        total += f.result()
    return total


@pytest.mark.parametrize("how", ["as_completed", "iterate"])
def test_stream_holds_one_chunk_of_values_at_a_time(dask_runner, how):
    @flow(task_runner=dask_runner)
    def f():
        futs = inc.map(range(N))
        futs.wait()  # every envelope is on the client, every record written: what the stream allocates
        assert tracker.flush(30)  # is its own
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            total = _stream(futs, how)
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == N * (N + 1) // 2
        # Keeping every value (an int and a list slot each) and a future per run held 25-38 MB;
        # the stream holds one chunk's values (<= 10^4 runs, ~0.4 MB) while it reads it (the
        # client's event loop allocates some meanwhile: ~0.75 MB peaks seen).
        assert max(c.n for c in futs.chunks) <= 10_000
        assert peak - base < N * 36 / 4, peak - base
        assert held - base < N * 36 / 20, held - base
        assert all(c.result.values is None for c in futs.chunks if c.n > 1)

    f()


@pytest.mark.parametrize("how", ["as_completed", "iterate"])
def test_result_after_stream_is_the_value(runner, how):
    @flow(task_runner=runner)
    def f():
        futs = boxed.map(range(50_000))
        kept = list(futs)[::997]
        seen = sum(fut.result()[0] for fut in (as_completed(futs) if how == "as_completed" else futs))
        assert seen == sum(range(50_000))
        for fut in kept:  # read again after the stream released the chunk: unpickled again, equal
            assert fut.result() == [fut.chunk.start + fut.index]
            assert fut.result() is fut.result()  # cached again until a stream moves past it
        assert futs.result()[::997] == [[i] for i in range(0, 50_000, 997)]
        assert futs[49_999].result() == [49_999] and futs[0].state.result() == [0]

    f()


def test_as_completed_takes_map_futures_inside_a_list(dask_runner):
    @flow(task_runner=dask_runner)
    def f():
        a, b = inc.map(range(1000)), inc.map(range(1000, 1500))
        single = inc.submit(-1)
        got = [fut.result() for fut in as_completed([a, [single, b[3]], b])]
        return sorted(got)

    assert f() == sorted([*range(1, 1501), 0, 1004])
