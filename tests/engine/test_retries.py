"""Retries, timeouts, hooks and run names, on every runner; counted with files."""

import asyncio
import time

import pytest

from daskflow import exponential_backoff, flow, task
from daskflow.exceptions import TaskRunTimeoutError


def count(path):
    with open(path, "a") as fh:
        fh.write("x")
    with open(path) as fh:
        return len(fh.read())


def test_retries_until_success_with_history(runner, tmp_path):
    counter = tmp_path / "n"

    @task(retries=3)
    def flaky():
        if count(counter) < 3:
            raise RuntimeError("not yet")
        return "ok"

    @flow(task_runner=runner)
    def f():
        fut = flaky.submit()
        return fut.result(), fut.run_count, [s.name for s in fut.history()]

    value, run_count, names = f()
    assert value == "ok" and run_count == 3
    assert names == ["Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry", "Retrying", "Completed"]


def test_retries_exhausted_fail_with_last_error(runner, tmp_path):
    counter = tmp_path / "n"

    @task(retries=2)
    def always(i):
        raise ValueError(f"attempt {count(counter)}")

    @flow(task_runner=runner)
    def f():
        states = always.map([1, 2], chunksize=2).states
        return [(s.name, s.message) for s in states]

    assert [name for name, _ in f()] == ["Failed", "Failed"]
    assert counter.read_text() == "x" * 6  # 2 runs x 3 attempts


def test_retry_condition_fn_stops_retries(runner, tmp_path):
    counter = tmp_path / "n"
    seen = []

    def only_value_errors(task, task_run, state):
        seen.append((task.name, task_run.run_count, state.name))
        return isinstance(state.data, ValueError)

    @task(retries=5, retry_condition_fn=only_value_errors)
    def picky():
        n = count(counter)
        raise (ValueError if n < 2 else KeyError)(n)

    state = picky(return_state=True)
    assert state.is_failed() and isinstance(state.data, KeyError)
    assert counter.read_text() == "xx"


def test_retry_delays_list_and_backoff():
    t = task(retries=4, retry_delay_seconds=[0.1, 0.2])(lambda: None)
    assert [t.retry_delay_for(i) for i in (1, 2, 3, 4)] == [0.1, 0.2, 0.2, 0.2]
    b = task(retries=3, retry_delay_seconds=exponential_backoff(1))(lambda: None)
    assert b.options.delays == (1.0, 2.0, 4.0)
    j = task(retries=1, retry_delay_seconds=10, retry_jitter_factor=0.5)(lambda: None)
    assert all(5 <= j.retry_delay_for(1) <= 15 for _ in range(50))


def test_retry_delay_is_waited(tmp_path):
    counter = tmp_path / "n"

    @task(retries=1, retry_delay_seconds=0.3)
    def once():
        if count(counter) == 1:
            raise RuntimeError("first")
        return "second"

    t0 = time.perf_counter()
    assert once() == "second"
    assert time.perf_counter() - t0 >= 0.3


def test_long_retry_delay_frees_the_worker_slot(dask_runner, tmp_path):
    # Two single-thread workers: while two runs wait 3 s to retry, other runs still execute.
    marker = tmp_path / "m"

    @task(retries=1, retry_delay_seconds=3)
    def slow_retry(i):
        if count(marker) <= 2:
            raise RuntimeError("retry me")
        return i

    @task
    def quick(i):
        return time.time()

    @flow(task_runner=dask_runner)
    def f():
        waits = slow_retry.map([1, 2], chunksize=1)
        t0 = time.time()
        quick_done = quick.map(range(4), chunksize=1, wait_for=[]).result()
        waits.wait()
        return t0, max(quick_done), [fut.run_count for fut in waits]

    t0, last_quick, run_counts = f()
    assert last_quick - t0 < 2.5, "quick runs had to wait for the sleeping retries"
    assert run_counts == [2, 2]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_timeout_ends_run_timed_out_at_deadline(runner, kind):
    if kind == "sync":
        @task(timeout_seconds=0.5)
        def sleepy():
            time.sleep(8)
    else:
        @task(timeout_seconds=0.5)
        async def sleepy():
            await asyncio.sleep(8)

    @flow(task_runner=runner)
    def f():
        t0 = time.perf_counter()
        fut = sleepy.submit()
        fut.wait()
        return fut.state.name, type(fut.state.data).__name__, time.perf_counter() - t0

    name, error, elapsed = f()
    assert name == "TimedOut" and error == "TaskRunTimeoutError"
    assert elapsed < 5.0  # ended at its deadline (0.5 s), not with the body (8 s): room for a loaded machine


def test_timeout_is_retried(tmp_path):
    counter = tmp_path / "n"

    @task(timeout_seconds=0.3, retries=1)
    def slow_then_fast():
        if count(counter) == 1:
            time.sleep(3)
        return "fast"

    state = slow_then_fast(return_state=True)
    assert state.result() == "fast"
    with pytest.raises(TaskRunTimeoutError):
        task(timeout_seconds=0.2)(lambda: time.sleep(2))()


def test_hooks_fire_on_their_states(runner, tmp_path):
    log = tmp_path / "hooks"

    def record(kind):
        def hook(task, task_run, state):
            with open(log, "a") as fh:
                fh.write(f"{kind}:{task.name}:{task_run.run_count}:{state.name}\n")
        return hook

    counter = tmp_path / "n"

    @task(retries=1, on_running=[record("running")], on_completion=[record("completion")],
          on_failure=[record("failure")])
    def flaky():
        if count(counter) == 1:
            raise RuntimeError("again")
        return 1

    @task(on_failure=[record("failure")])
    def broken():
        raise RuntimeError("no")

    @broken.on_completion
    def never(task, task_run, state):
        raise AssertionError("not called")

    @flow(task_runner=runner)
    def f():
        flaky.submit().wait()
        broken.submit().wait()

    f()
    assert log.read_text().splitlines() == [
        "running:flaky:1:Running", "running:flaky:2:Running", "completion:flaky:2:Completed",
        "failure:broken:1:Failed",
    ]


def test_hook_that_raises_does_not_change_state(caplog):
    def bad_hook(task, task_run, state):
        raise RuntimeError("hook bug")

    @task(on_completion=[bad_hook])
    def fine():
        return 5

    assert fine() == 5
    assert any("hook" in r.getMessage() for r in caplog.records)


def test_task_run_name_template_and_callable():
    names = []

    def grab(task, task_run, state):
        names.append(task_run.name)

    @task(task_run_name="load-{path}-{n}", on_completion=[grab])
    def load(path, n=2):
        return path

    @task(task_run_name=lambda: "custom", on_completion=[grab])
    def other():
        return 1

    load("a.csv")
    other()
    assert names == ["load-a.csv-2", "custom"]


def test_retries_timeouts_and_hooks_on_remote_scheduler(remote_cluster, tmp_path):
    from daskflow.runners.dask import DaskTaskRunner

    counter = tmp_path / "n"
    hooks = tmp_path / "hooks"

    def on_done(task, task_run, state):
        with open(hooks, "a") as fh:
            fh.write(f"{task_run.run_count}:{state.name}\n")

    @task(retries=2, on_completion=[on_done])
    def flaky(i):
        if count(counter) <= 2:
            raise RuntimeError("again")
        return i

    @task(timeout_seconds=0.5)
    def stuck():
        time.sleep(5)

    @flow(task_runner=DaskTaskRunner(address=remote_cluster))
    def f():
        fut = flaky.submit(7)
        late = stuck.submit()
        late.wait()
        return fut.result(), fut.run_count, late.state.name

    assert f() == (7, 3, "TimedOut")
    assert hooks.read_text() == "3:Completed\n"


@pytest.mark.parametrize("window", [None, 1], ids=["default window", "window of one chunk"])
def test_a_run_awaiting_its_retry_holds_up_neither_its_chunk_mates_nor_its_worker_slot(dask_runner, tmp_path, window):
    # Two single-thread workers; four chunks of 10 runs, two runs of each chunk fail once and
    # wait 1.5 s to retry. Every first attempt (chunk-mates after a waiting run, and the chunks
    # queued behind the first two) runs before any retry; the retried runs keep their history.
    # With a window of one chunk, a chunk whose only runs left await their retry steps aside,
    # so the next chunks are sent meanwhile (else the map paid the delay once per window).
    import dask.config

    log = tmp_path / "log"

    @task(retries=1, retry_delay_seconds=1.5)
    def flaky(i):
        mark = tmp_path / f"failed-{i}"
        with open(log, "a") as f:
            f.write(f"{i} {time.time()!r} {'retry' if mark.exists() else 'first'}\n")
        if i % 5 == 1 and not mark.exists():
            mark.write_text("x")
            raise RuntimeError(f"transient {i}")
        return i

    @flow(task_runner=dask_runner)
    def f():
        futs = flaky.map(range(40), chunksize=10)
        return futs.result(), [fut.run_count for fut in futs], [s.name for s in futs[1].history()]

    with dask.config.set({} if window is None else {"daskflow.map.window": window}):
        values, run_counts, names = f()
    assert values == list(range(40))
    assert run_counts == [2 if i % 5 == 1 else 1 for i in range(40)]
    assert names == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
    entries = [line.split() for line in log.read_text().splitlines()]
    firsts = [float(t) for _, t, kind in entries if kind == "first"]
    retries = [float(t) for _, t, kind in entries if kind == "retry"]
    assert len(firsts) == 40 and len(retries) == 8
    assert max(firsts) < min(retries), "a run waiting for its retry held up runs that had not started"


def test_a_retry_after_its_delay_runs_on_any_worker(dask_runner, cluster, tmp_path):
    # The body fails on the first worker it meets, every time. While the run waits out its
    # delay, the test fills that worker's one thread with a blocker: the retry, handed to the
    # scheduler when the delay has passed, goes to the other worker and completes there (a
    # retry kept on the chunk's worker would fail again, and the run would end Failed).
    from distributed import Client, Event

    mark = tmp_path / "first-worker"
    tag = tmp_path.name

    @task(retries=1, retry_delay_seconds=2)
    def picky():
        from distributed import Event, get_worker

        here = get_worker().address
        if not mark.exists():
            mark.write_text(here)
            Event(f"failed-{tag}").set()
            raise RuntimeError("the first attempt fails")
        if here == mark.read_text():
            raise RuntimeError(f"retried on the worker of the first attempt, {here}")
        Event(f"retried-{tag}").set()
        return here

    def block(started, release):
        from distributed import Event

        Event(started).set()
        Event(release).wait(60)

    with Client(cluster.scheduler_address, set_as_default=False) as client:
        failed, retried = Event(f"failed-{tag}", client=client), Event(f"retried-{tag}", client=client)
        started, release = Event(f"started-{tag}", client=client), Event(f"release-{tag}", client=client)

        @flow(task_runner=dask_runner)
        def f():
            fut = picky.submit()
            assert failed.wait(30), "the first attempt did not run"
            blocker = client.submit(block, started.name, release.name, workers=[mark.read_text()], pure=False)
            try:
                assert started.wait(30), "the blocker did not start on the first worker"
                assert retried.wait(30), "the retry did not run on the other worker"
            finally:
                release.set()
            blocker.result(timeout=30)
            return fut.result(), fut.run_count, [s.name for s in fut.history()]

        where, run_count, names = f()
    assert where != mark.read_text() and where in cluster.scheduler_info["workers"]
    assert run_count == 2
    assert names == ["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]
