"""Large values stay on the workers: the client holds states, and values only when asked for."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from daskflow import flow, task

HERE = pathlib.Path(__file__).resolve().parent


def test_a_pipeline_of_large_arrays_leaves_the_client_small(tmp_path):
    # 12 arrays of 25 MiB per stage (300 MiB a stage): a client that received every result
    # holds two stages at once (600 MiB and more); one that holds states peaks near its own
    # size (~70 MiB). The child measures its own peak (VmHWM), not ru_maxrss, which Linux
    # carries over exec from this big pytest process.
    env = dict(os.environ, DASKFLOW_HOME=str(tmp_path / "home"), PYTHONPATH=str(HERE.parents[1]))
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    out = subprocess.run([sys.executable, str(HERE / "data_pipeline.py"), "12", "25"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["value"] == sum(2.0 * i * (25 * 2**20 // 8) for i in range(12))
    assert got["peak_rss_mib"] < 300, got


@task
def array(i: int) -> np.ndarray:
    return np.full(2**17, float(i))  # 1 MiB


@task
def first(a: np.ndarray) -> float:
    return float(a[0])


def test_waiting_reads_states_and_result_brings_values(on_cluster):
    @flow
    def pipeline():
        arrays = array.map(range(5))
        arrays.wait()
        held = [c.result.values for c in arrays.chunks]
        states = [f.state.name for f in arrays]
        downstream = first.map(arrays).result()  # worker to worker
        still = [c.result.values for c in arrays.chunks]
        values = arrays.result()
        return held, states, downstream, still, values

    held, states, downstream, still, values = pipeline()
    assert held == [None] * len(held) and still == held  # the client held no array until asked
    assert states == ["Completed"] * 5
    assert downstream == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [float(v[0]) for v in values] == downstream and all(v.nbytes == 2**20 for v in values)


def test_small_values_still_come_with_their_states(on_cluster):
    @flow
    def pipeline():
        futs = first.map([np.zeros(4)] * 3)
        futs.wait()
        return [c.result.values is not None or c.result.blob is not None for c in futs.chunks]

    assert all(pipeline())


def test_a_cached_rerun_of_large_values_leaves_them_on_the_workers(on_cluster, tmp_path):
    from daskflow import unmapped
    from daskflow.cache import INPUTS

    counter = tmp_path / "count"
    counter.mkdir()

    @task(cache_policy=INPUTS - "counter")
    def cached_array(i: int, counter: str) -> np.ndarray:
        (pathlib.Path(counter) / f"{i}-{os.getpid()}-{os.urandom(4).hex()}").touch()
        return np.full(2**17, float(i))

    @flow
    def pipeline():
        arrays = cached_array.map(range(4), unmapped(str(counter)))
        arrays.wait()
        held = [c.result.values for c in arrays.chunks]
        return held, [f.state.name for f in arrays], first.map(arrays).result()

    held, names, firsts = pipeline()
    assert set(names) == {"Completed"} and firsts == [0.0, 1.0, 2.0, 3.0]
    held, names, firsts = pipeline()
    assert names == ["Cached"] * 4 and firsts == [0.0, 1.0, 2.0, 3.0]
    assert held == [None] * len(held)  # read from the cache on the workers, not through this process
    assert len(os.listdir(counter)) == 4


def test_a_summary_that_comes_before_its_chunk_is_watched_is_used_not_the_values(on_cluster):
    # A short chunk can end, and its end event reach the client, while the submitting thread
    # still waits for the GIL between submitting and watching it; the summary was dropped and a
    # reader then gathered the chunk's values. The event is now kept for ``watch``.
    from daskflow.engine.client.chunks import Chunk, Eager
    from daskflow.engine.tracking.events import ChunkEnded

    @flow
    def pipeline():
        arrays = array.map(range(2))
        arrays.wait()
        return arrays.chunks[0]

    done = pipeline()
    assert done.result.elsewhere and done.result.values is None
    eager, queued = Eager(), []
    eager._queue = queued.extend  # observe what the fetcher would be handed, without a fetcher thread
    msg = ChunkEnded(done.base, done.start, 0.0, None, [], summary=done.result.to_summary_bytes())
    eager.on_ended([msg])  # the event first ...
    again = Chunk(done.task, done.base, done.start, done.n, done.values_handle, done.runner)
    eager.watch([again])  # ... then the chunk
    assert queued == [again] and not eager.watched
    assert eager.summary_of(again).elsewhere  # recorded from the summary: no values travel
    other = ChunkEnded(done.base + 1, 0, 0.0, None, [], summary=b"s")
    eager.early.seconds = -1.0  # everything kept is stale: another client's events do not pile up
    eager.on_ended([other])
    eager.on_ended([ChunkEnded(done.base + 2, 0, 0.0, None, [], summary=b"s")])
    assert list(eager.early) == [(done.base + 2, 0)]
