"""Caching through the engine, proven by counting executions (files, across processes)."""

import datetime
import os
import threading
import uuid
import warnings

import pytest

from daskflow import flow, task, unmapped
from daskflow.cache import DEFAULT, FLOW_PARAMETERS, INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE
from daskflow.cache.store import CacheWarning
from daskflow.runners.dask import DaskTaskRunner


def _mark(counter, x):
    with open(os.path.join(counter, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass


def executed(counter):
    return len(os.listdir(counter))


@pytest.fixture
def counter(tmp_path):
    d = tmp_path / "count"
    d.mkdir()
    return str(d)


@task(cache_policy=INPUTS - "counter")
def square(x, counter):
    _mark(counter, x)
    return x * x


class CountingRunner(DaskTaskRunner):
    """A real DaskTaskRunner that counts the Dask tasks it submits."""

    submitted = 0

    def duplicate(self):
        return CountingRunner(self.address)

    def submit_many(self, fn, *iterables, keys):
        CountingRunner.submitted += len(keys)
        return super().submit_many(fn, *iterables, keys=keys)

    def submit_windowed(self, fn, *iterables, keys, window, prepare=None):  # a map of more chunks than its window
        CountingRunner.submitted += len(keys)
        return super().submit_windowed(fn, *iterables, keys=keys, window=window, prepare=prepare)


def test_cache_map_rerun_on_client_submits_no_dask_work(cluster, counter):
    runner = CountingRunner(address=cluster.scheduler_address)

    @flow(task_runner=runner)
    def pipeline(n):
        futures = square.map(range(n), unmapped(counter))
        prefilled = all(c.handle is None and c.result is not None for c in futures.chunks)
        values = futures.result()
        state = futures[5].state
        return values, prefilled, (state.type.name, state.name), futures[5].run_count

    CountingRunner.submitted = 0
    first, prefilled, state, _ = pipeline(300)
    assert executed(counter) == 300 and CountingRunner.submitted > 1 and not prefilled
    assert state == ("COMPLETED", "Completed")
    CountingRunner.submitted = 0
    again, prefilled, state, run_count = pipeline(300)
    assert again == first == [x * x for x in range(300)]
    assert executed(counter) == 300  # no body ran again
    assert CountingRunner.submitted == 0 and prefilled  # no Dask task, not even an empty one
    assert state == ("COMPLETED", "Cached") and run_count == 0


def test_cache_partial_hits_submit_only_misses(cluster, counter):
    runner = CountingRunner(address=cluster.scheduler_address)

    @flow(task_runner=runner)
    def pipeline(xs):
        return square.map(xs, unmapped(counter), chunksize=10).result()

    pipeline(list(range(0, 50)))
    CountingRunner.submitted = 0
    assert pipeline(list(range(25, 75))) == [x * x for x in range(25, 75)]
    assert executed(counter) == 75
    assert CountingRunner.submitted == 3  # the 25 new elements, in chunks of <= 10


def test_cache_worker_lookup_when_inputs_are_futures(runner, counter):
    @task
    def ident(x):
        return x

    @flow(task_runner=runner)
    def pipeline():
        return square.map(ident.map(range(20)), unmapped(counter)).result()

    assert pipeline() == [x * x for x in range(20)]
    assert pipeline() == [x * x for x in range(20)]
    assert executed(counter) == 20


def test_cache_submit_and_inline_share_keys(runner, counter):
    @flow(task_runner=runner)
    def pipeline():
        return square.submit(7, counter).result(), square(7, counter), square(8, counter)

    assert pipeline() == (49, 49, 64)
    state = square(7, counter, return_state=True)
    assert state.name == "Cached"
    assert executed(counter) == 2


def test_cache_every_policy(counter):
    @task(cache_policy=TASK_SOURCE)
    def by_source(x, counter):
        _mark(counter, x)
        return x

    by_source(1, counter)
    assert by_source(2, counter) == 1  # inputs are not part of the key
    assert executed(counter) == 1

    @task(cache_policy=NO_CACHE)
    def never(x, counter):
        _mark(counter, x)

    never(1, counter), never(1, counter)
    assert executed(counter) == 3

    @task(cache_policy=FLOW_PARAMETERS)
    def by_params(counter):
        _mark(counter, "p")

    @flow
    def f(p, counter):
        by_params(counter)
        by_params(counter)

    f(1, counter), f(1, counter), f(2, counter)
    assert executed(counter) == 5  # one per distinct flow parameters

    @task(cache_policy=DEFAULT - "counter")
    def per_flow_run(x, counter):
        _mark(counter, x)

    @flow
    def g(counter):
        per_flow_run(1, counter)
        per_flow_run(1, counter)

    g(counter), g(counter)
    assert executed(counter) == 7  # RUN_ID: one per flow run

    @task(cache_policy=RUN_ID)
    def outside(counter):
        _mark(counter, "o")

    outside(counter), outside(counter)
    assert executed(counter) == 9  # RUN_ID outside a flow never hits


def test_cache_task_source_change_misses(counter):
    def make(body):
        ns = {}
        exec(f"def f(x, counter):\n    mark(counter, x)\n    return {body}\n", {"mark": _mark}, ns)
        return task(name="edited", cache_policy=TASK_SOURCE + INPUTS - "counter")(ns["f"])

    assert make("x + 1")(1, counter) == 2
    assert make("x + 2")(1, counter) == 3  # same name and inputs, new source
    assert executed(counter) == 2


def test_cache_key_fn_and_none(counter):
    @task(cache_key_fn=lambda ctx, params: None if params["x"] < 0 else f"k{params['x'] % 2}")
    def parity(x, counter):
        _mark(counter, x)
        return x

    assert [parity(x, counter) for x in (1, 3, 2, -1, -1)] == [1, 1, 2, -1, -1]
    assert executed(counter) == 4  # 3 hit 1's key; -1 is never cached


def test_cache_expiration(counter):
    @task(cache_policy=INPUTS - "counter", cache_expiration=datetime.timedelta(seconds=-1))
    def expired(x, counter):
        _mark(counter, x)

    @task(cache_policy=INPUTS - "counter", cache_expiration=datetime.timedelta(hours=1))
    def fresh(x, counter):
        _mark(counter, x)

    expired(1, counter), expired(1, counter), fresh(1, counter), fresh(1, counter)
    assert executed(counter) == 3


def test_cache_refresh_cache_reruns_and_overwrites(counter, tmp_path):
    value = tmp_path / "value"
    value.write_text("a")

    @task(name="reader", cache_policy=INPUTS - "counter")
    def read(path, counter):
        _mark(counter, 0)
        return open(path).read()

    assert read(str(value), counter) == "a"
    value.write_text("b")
    assert read(str(value), counter) == "a"
    assert read.with_options(refresh_cache=True)(str(value), counter) == "b"
    assert read(str(value), counter) == "b"
    assert executed(counter) == 2


def test_cache_unhashable_input_runs_uncached_with_one_warning(counter):
    from daskflow.runners import ThreadPoolTaskRunner

    lock = threading.Lock()

    @task(cache_policy=INPUTS - "counter")
    def locked(x, lock, counter):
        _mark(counter, x)
        return x

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def pipeline():
        return locked.map(range(30), unmapped(lock), unmapped(counter)).result()

    with pytest.warns(CacheWarning) as record:
        assert pipeline() == list(range(30))
    with pytest.warns(CacheWarning):  # the rerun is uncached again, and says so again
        assert pipeline() == list(range(30))
    assert executed(counter) == 60  # nothing cached
    messages = [str(w.message) for w in record if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1
    assert "'locked'" in messages[0] and "'lock'" in messages[0] and "NO_CACHE" in messages[0]


def test_cache_damaged_entry_reruns_and_heals(counter, daskflow_home):
    from daskflow.cache.store import get_store

    square(3, counter)
    store = get_store(daskflow_home)
    [(key, record)] = list(store.iterate())
    store.put_many([(key, record[:-3])])
    with pytest.warns(CacheWarning, match="damaged"):
        assert square(3, counter) == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert square(3, counter) == 9
    assert executed(counter) == 2


def test_cache_hook_only_tasks_keep_results_and_noncaching_tasks_stay_fast():
    @task
    def plain(x):
        return x

    assert plain.fast_path and not plain.managed
    assert task(cache_policy=INPUTS)(lambda x: x).managed


def test_cache_async_task_awaited_in_a_running_loop(counter):
    import asyncio

    @task(cache_policy=INPUTS - "counter")
    async def fetch(x, counter):
        _mark(counter, x)
        return x + 1

    async def main():
        a = await fetch(1, counter)
        state = await fetch(1, counter, return_state=True)
        return a, state.name

    assert asyncio.run(main()) == (2, "Cached")
    assert executed(counter) == 1


@task(cache_policy=INPUTS - "counter", result_serializer="json")
def picky(x, counter):
    _mark(counter, x)
    if x == 3:
        raise ValueError("three")
    return {x} if x == 5 else x * 10  # a set has no JSON form: not cached


def test_cache_plain_map_failures_and_unserializable_results_stay_uncached(runner, counter):
    @flow(task_runner=runner)
    def pipeline():
        futures = picky.map(range(8), unmapped(counter))
        futures.wait()
        return [s.name for s in futures.states]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # emitted where the chunk ran (a worker)
        assert pipeline() == ["Completed"] * 3 + ["Failed"] + ["Completed"] * 4
    assert executed(counter) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        states = pipeline()
    assert states == ["Cached"] * 3 + ["Failed", "Cached", "Completed", "Cached", "Cached"]
    assert executed(counter) == 10  # only the failed run and the uncacheable one ran again


def test_fully_cached_rerun_on_the_default_runner_starts_no_cluster(tmp_path):
    # A flow without a task_runner gets the embedded LocalCluster, started lazily: a rerun
    # whose every run is in the cache plans its chunks, submits nothing and starts nothing
    # (so it does not even import distributed).
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "rerun.py"
    script.write_text(textwrap.dedent("""
        import sys
        from daskflow import flow, task
        from daskflow.cache import INPUTS

        @task(cache_policy=INPUTS)
        def sq(x):
            return x * x

        @flow
        def pipeline(n):
            return sum(sq.map(range(n)).result())

        if __name__ == "__main__":
            print(pipeline(1000), "distributed" in sys.modules)
    """))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    runs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
            for _ in range(2)]
    outs = [r.stdout.split() for r in runs]
    assert outs[0] == ["332833500", "True"], runs[0].stderr[-2000:]
    assert outs[1] == ["332833500", "False"], runs[1].stderr[-2000:]
