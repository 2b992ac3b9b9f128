"""Consuming a big ``.map()`` as it completes holds per-chunk envelopes, not per-run objects."""

import json
import tracemalloc

import dask
import pytest

from click.testing import CliRunner

from daskflow import as_completed, flow, task
from daskflow.cli import main
from daskflow.exceptions import MappingLengthMismatch
from daskflow.engine.tracking import tracker

N = 200_000
DASK_THREADS = [tracemalloc.Filter(False, f"*/{pkg}/*") for pkg in ("distributed", "tornado", "asyncio", "psutil")]


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
        with dask.config.set({"daskflow.map.max-chunksize": 10_000}):  # the bounds below are a chunk's
            futs = inc.map(range(N))
        futs.wait()  # every envelope is on the client, every record written: what the stream allocates
        assert tracker.flush(30)  # is its own
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            held_base = sum(t.size for t in tracemalloc.take_snapshot().filter_traces(DASK_THREADS).traces)
            total = _stream(futs, how)
            peak = tracemalloc.get_traced_memory()[1]
            # what stays allocated, less what Dask's event loop thread holds meanwhile (messages
            # in flight, its system monitor: up to ~0.4 MB seen on a busy machine)
            held = sum(t.size for t in tracemalloc.take_snapshot().filter_traces(DASK_THREADS).traces)
        finally:
            tracemalloc.stop()
        assert total == N * (N + 1) // 2
        # Keeping every value (an int and a list slot each) and a future per run held 25-38 MB;
        # the stream holds one chunk's values (<= 10^4 runs, ~0.4 MB) while it reads it (the
        # client's event loop allocates some meanwhile: ~0.75 MB peaks seen).
        assert max(c.n for c in futs.chunks) <= 10_000
        assert peak - base < N * 36 / 4, peak - base
        assert held - held_base < N * 36 / 20, held - held_base
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


# -- iter_chunks and reduce: the client lets each chunk go once consumed ---------------------


@task
def inc_or_fail(x):
    if x % 5000 == 7:
        raise ValueError(f"bad input {x}")
    return x + 1


def test_iter_chunks_yields_every_run_once_and_lets_values_go(runner):
    from daskflow.exceptions import MissingResult

    @flow(task_runner=runner)
    def f():
        futs = inc_or_fail.map(range(20_000))
        seen, total, failures = set(), 0, {}
        for part in futs.iter_chunks():
            seen.update(range(part.start, part.start + len(part.values)))
            total += sum(v for v in part.values if v is not None)
            failures.update(part.failures)
        assert seen == set(range(20_000))
        bad = {x for x in range(20_000) if x % 5000 == 7}
        assert set(failures) == bad and all(s.is_failed() for s in failures.values())
        assert total == sum(x + 1 for x in range(20_000) if x not in bad)
        # states stay answerable; values are gone, with an error saying who took them
        assert futs[8].state.is_completed() and futs[7].state.is_failed()
        with pytest.raises(MissingResult, match=r"iter_chunks\(\)"):
            futs[8].result()
        # what each chunk keeps is O(1): no per-run codes, end times or values
        uniform = [c.result for c in futs.chunks if not c.result.n_failed and c.n > 1]
        assert uniform and all(type(r.codes).__name__ == "UniformCodes" and len(r.ends) == 1 and r.values is None
                               for r in uniform)

    f()


def test_iter_chunks_and_reduce_over_more_chunks_than_are_watched_at_once(runner):
    from daskflow.engine.client import futures as futures_mod

    n = futures_mod.WATCHED * 3  # the chunks beyond the first WATCHED are watched as earlier ones are read

    @flow(task_runner=runner)
    def f():
        futs = inc.map(range(n), chunksize=1)
        starts = [part.start for part in futs.iter_chunks()]
        return sorted(starts), inc.map(range(n), chunksize=1).reduce(lambda a, b: a + b)

    starts, total = f()
    assert starts == list(range(n))
    assert total == sum(range(1, n + 1))


def test_iter_chunks_records_every_run_in_the_store(dask_runner):
    @flow(task_runner=dask_runner)
    def f():
        for _ in inc_or_fail.map(range(3000)).iter_chunks():
            pass

    f()
    assert tracker.flush(30)
    out = CliRunner().invoke(main, ["runs", "ls", "--state", "Failed", "-o", "json"])
    assert out.exit_code == 0, out.output
    assert [r["name"] for r in json.loads(out.output)] == ["inc_or_fail-7"]
    out = CliRunner().invoke(main, ["runs", "ls", "--limit", "5000", "-o", "json"])
    assert len(json.loads(out.output)) == 3000


def test_iter_chunks_lets_values_go_from_the_envelope_the_writer_holds(dask_runner):
    """The envelope a chunk was recorded with may wait in the tracker's queue while the reader
    moves on: once read, it keeps its states but not its values (a writer a few batches
    behind held every chunk's values meanwhile: the client's peak RSS a matter of luck)."""

    @flow(task_runner=dask_runner)
    def f():
        futs = inc.map(range(60_000))
        recorded, total = [], 0
        for part in futs.iter_chunks():
            chunk = next(c for c in futs.chunks if c.start == part.start)
            recorded.append(chunk.result)  # the envelope settle() handed the tracker
            total += sum(part.values)
        assert total == sum(range(1, 60_001))
        assert len(recorded) > 1 and all(r.values is None and r.blob is None for r in recorded)
        assert all(r.state(0).is_completed() for r in recorded)  # its states still answer (the writer's part)

    f()
    assert tracker.flush(30)


folds_here = 0


def add_counted(a, b):
    global folds_here
    folds_here += 1
    return a + b


@task
def block(i):
    import numpy as np

    return np.full(50_000, i, dtype=np.int64)  # 400 KB: over inline-bytes, stays on its worker


def test_reduce_folds_large_values_on_the_workers(dask_runner):
    global folds_here

    @flow(task_runner=dask_runner)
    def f():
        futs = block.map(range(24))
        total = futs.reduce(add_counted)
        assert int(total.sum()) == sum(range(24)) * 50_000
        # the chunks' folds ran where the values are: here only the per-chunk folds combine
        assert folds_here == len(futs.chunks) - 1 < 23

    folds_here = 0
    f()


def test_reduce_in_map_order_with_initial_and_failures(runner):
    @flow(task_runner=runner)
    def f():
        words = task(lambda x: str(x)).map(range(300), chunksize=7)
        assert words.reduce(lambda a, b: a + b, initial=">") == ">" + "".join(map(str, range(300)))
        with pytest.raises(ValueError, match="bad input 7"):
            inc_or_fail.map(range(100)).reduce(lambda a, b: a + b)
        with pytest.raises(TypeError, match="no runs and no initial"):
            inc.map([]).reduce(lambda a, b: a + b)
        assert inc.map([]).reduce(lambda a, b: a + b, initial=5) == 5

    f()


# -- MapStream: a .map() over an iterator reads it as it goes -------------------------------


def numbers(n, fail_at=None, seen=None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("the source broke")
        if seen is not None:
            seen.append(i)
        yield i


@task
def add(x, y):
    return x + y


def test_map_over_a_generator_reads_it_a_window_at_a_time(runner):
    from daskflow.engine.client.streams import MapStream

    @flow(task_runner=runner)
    def f():
        seen: list[int] = []
        stream = add.map(numbers(50_000, seen=seen), 1, chunksize=100)
        assert isinstance(stream, MapStream) and seen == []  # nothing read before it is read
        parts = stream.iter_chunks()
        first = next(parts)
        # a window of chunks is submitted (and one more once the first is taken), not the generator
        assert len(seen) <= (stream.window + 1) * 100 and len(stream._open) <= stream.window
        total = sum(first.values) + sum(sum(p.values) for p in parts)
        assert total == sum(range(1, 50_001)) and len(stream) == 50_000

    f()


def test_map_stream_reads_like_a_map(runner):
    @flow(task_runner=runner)
    def f():
        # sized arguments beside the iterator are sliced window by window; broadcasts stay whole
        assert add.map(numbers(3000), range(3000)).result() == [2 * i for i in range(3000)]
        assert sorted(fut.result() for fut in as_completed(add.map(numbers(500), 10))) == list(range(10, 510))
        assert [fut.result() for fut in add.map(numbers(300), 1)] == list(range(1, 301))
        assert add.map(iter(range(10_000)), 0).reduce(lambda a, b: a + b) == sum(range(10_000))
        with pytest.raises(MappingLengthMismatch, match=r"ended at different lengths \(x=100, y=50\)"):
            add.map(numbers(100), range(50)).result()
        with pytest.raises(TypeError, match="no length until it is read through"):
            len(add.map(numbers(10), 1))

    f()


def test_a_generator_that_raises_keeps_the_runs_before_it(runner):
    @flow(task_runner=runner)
    def f():
        stream = add.map(numbers(20_000, fail_at=7_000), 1)
        done = 0
        with pytest.raises(RuntimeError, match="the source broke") as info:
            for part in stream.iter_chunks():
                done += len(part.values)
        assert "raised at element 7000" in "".join(info.value.__notes__)
        assert done + sum(c.n for c in stream._open.values()) <= 7_000
        stream.wait()  # the runs of the elements read before the error run to the end
        return done

    f()
    assert tracker.flush(30)
    out = CliRunner().invoke(main, ["runs", "ls", "--limit", "100000", "-o", "json"])
    runs = json.loads(out.output)
    assert len(runs) == 7_000 and {r["state"] for r in runs} == {"Completed"}


def test_stream_nobody_read_runs_through_at_flow_end_and_a_stopped_one_stops(runner):
    import itertools

    @flow(task_runner=runner)
    def f():
        add.map(numbers(4000), 1)  # never read: the flow's end reads it through
        endless = add.map(itertools.count(), 0)
        for i, _ in enumerate(endless.iter_chunks()):
            if i == 2:
                break  # stopped: nothing more is submitted, the flow ends
        return endless

    with dask.config.set({"daskflow.map.max-chunksize": 10_000}):  # a window of ~10^5 runs read ahead
        endless = f()
    assert tracker.flush(30)
    out = CliRunner().invoke(main, ["runs", "ls", "--limit", "1000000", "-o", "json"])
    runs = json.loads(out.output)
    assert len([r for r in runs if r["state"] == "Completed"]) == 4000 + endless._offset
    assert endless._offset < 10**6
