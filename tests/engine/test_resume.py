"""Resuming a failed flow run: kept values, ``flow.retry`` and ``daskflow flow-runs retry``.

Executions are counted by files the bodies write (they run in worker processes); failures
are real exceptions, and a real subprocess running a flow is killed by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from daskflow import flow, task, unmapped
from daskflow.cache import INPUTS
from daskflow.cli import main
from daskflow.engine.tracking import tracker
from daskflow.exceptions import CannotRetry
from daskflow.runners import ThreadPoolTaskRunner


def _mark(folder: str, name: object) -> None:
    with open(os.path.join(folder, f"{name}-{uuid.uuid4().hex}"), "w"):
        pass


def _executed(folder) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(folder))


@task
def step(x: int, counter: str, broken: str) -> int:
    _mark(counter, x)
    if os.path.exists(broken) and x % 10 == 3:
        raise ValueError(f"element {x} is broken")
    return x * 2


@task
def plus_one(x: int, counter: str) -> int:
    _mark(counter, 1000 + x)
    return x + 1


@task
def add_all(xs: list[int]) -> int:
    return sum(xs)


def _pipeline(task_runner=None):
    @flow(task_runner=task_runner)
    def pipeline(n: int, counter: str, broken: str) -> int:
        doubled = step.map(range(n), unmapped(counter), unmapped(broken))
        more = plus_one.map(doubled, unmapped(counter))
        single = plus_one.submit(-1, counter)
        return add_all(more) + single.result()

    return pipeline


@pytest.fixture
def dirs(tmp_path):
    counter = tmp_path / "counter"
    counter.mkdir()
    return str(counter), str(tmp_path / "broken")


def _cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _states(flow_run_id: str) -> dict[str, int]:
    rows = json.loads(_cli("runs", "ls", "--flow-run", flow_run_id, "--limit", "1000", "-o", "json").output)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return counts


@pytest.mark.parametrize("kind", ["threads", "dask"])
def test_retry_runs_only_what_did_not_complete(kind, dirs, dask_runner):
    counter, broken = dirs
    pipeline = _pipeline(ThreadPoolTaskRunner(4) if kind == "threads" else dask_runner)
    open(broken, "w").close()
    first = pipeline(30, counter, broken, return_state=True)
    assert first.is_failed()
    tracker.flush()
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    assert sorted(_executed(counter)) == sorted([*range(30), *(1000 + 2 * x for x in range(30) if x % 10 != 3), 999])
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    os.unlink(broken)

    assert pipeline.retry(flow_run_id) == sum(2 * x + 1 for x in range(30)) + 0
    # only the three failed elements ran again, and their downstream runs
    assert _executed(counter) == [3, 13, 23, 1006, 1026, 1046]
    tracker.flush()
    record = json.loads(_cli("flow-runs", "show", flow_run_id, "-o", "json").output)
    assert record["state"] == "Completed" and record["attempt"] == 2
    assert [(r["attempt"], r["previous_state"], r["state"], r["reused"]) for r in record["retries"]] == [
        (2, "Failed", "Completed", 27 + 27 + 1)]
    assert _states(flow_run_id)["Cached"] == 55  # runs ls shows the reused runs


def test_retry_of_a_script_flow_by_the_cli_after_sigkill_and_ctrl_c(tmp_path, on_cluster):
    """A real subprocess runs a script's flow; it is killed by pid mid-run, then retried by the CLI."""
    script = tmp_path / "etl.py"
    script.write_text(textwrap.dedent('''
        import os, time
        from daskflow import flow, task
        from daskflow.runners import ThreadPoolTaskRunner
        from daskflow.runtime import flow_run

        @task
        def work(x):
            COUNTER, RELEASE, ABORT = os.environ["COUNTER"], os.environ["RELEASE"], os.environ["ABORT"]
            if x >= 10:  # the second half waits: until released, aborted (after Ctrl-C), or the process dies
                while not os.path.exists(RELEASE):
                    if os.path.exists(ABORT):
                        raise RuntimeError("aborted")
                    time.sleep(0.01)
            open(os.path.join(COUNTER, f"{x}-{time.time_ns()}"), "w").close()
            return x * x

        @flow(task_runner=ThreadPoolTaskRunner(4))
        def etl(n: int):
            print(flow_run.id, flush=True)
            return sum(work.map(range(n), chunksize=1).result())

        if __name__ == "__main__":
            etl(20)
    '''))
    from daskflow.cache.kept import get_kept_store, load_kept

    for sig in (signal.SIGKILL, signal.SIGINT):
        counter, release = tmp_path / f"counter-{sig}", tmp_path / f"release-{sig}"
        counter.mkdir()
        abort = tmp_path / f"abort-{sig}"
        env = dict(os.environ, COUNTER=str(counter), RELEASE=str(release), ABORT=str(abort))
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, cwd=tmp_path,
                                text=True)
        try:
            flow_run_id = proc.stdout.readline().strip()
            store = get_kept_store(os.environ["DASKFLOW_HOME"])
            deadline = time.monotonic() + 30
            # wait until the first half is kept and the flow run is recorded as running
            while len(load_kept(store, flow_run_id).calls.get("work#0", {})) < 10 or not _recorded(flow_run_id):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            os.kill(proc.pid, sig)
            abort.touch()  # after Ctrl-C the process waits for its running task threads: they give up
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        release.touch()
        before = set(_executed(counter))
        assert before == set(range(10))
        env_cli = {"COUNTER": str(counter), "RELEASE": str(release), "ABORT": str(tmp_path / "never")}
        result = CliRunner(env=env_cli).invoke(main, ["flow-runs", "retry", flow_run_id])
        assert result.exit_code == 0, result.output
        assert "Completed" in result.output
        assert _executed(counter) == sorted([*range(10), *range(10, 20)])  # the kept half did not run again
        tracker.flush()
        record = json.loads(_cli("flow-runs", "show", flow_run_id, "-o", "json").output)
        previous = "Crashed" if sig == signal.SIGKILL else "Cancelled"
        assert record["retries"][0]["previous_state"] == previous
        assert record["retries"][0]["reused"] == 10


def _recorded(flow_run_id: str) -> bool:
    from daskflow.store import open_run_store

    try:
        return any(r["id"] == flow_run_id for r in open_run_store(create=False).flow_runs())
    except LookupError:  # no run store yet
        return False


def test_retry_of_an_unknown_flow_run_runs_nothing(dirs):
    counter, broken = dirs
    pipeline = _pipeline(ThreadPoolTaskRunner(2))
    with pytest.raises(CannotRetry, match="no flow run"):
        pipeline.retry(str(uuid.uuid4()))
    with pytest.raises(CannotRetry, match="no flow run 'nonsense'"):
        pipeline.retry("nonsense")
    result = CliRunner().invoke(main, ["flow-runs", "retry", str(uuid.uuid4())])
    assert result.exit_code == 1 and "no record of its entrypoint" in result.output
    assert _executed(counter) == []


def test_retry_of_a_running_flow_run_is_refused(tmp_path):
    started, release = threading.Event(), threading.Event()

    @task
    def wait_here() -> int:
        started.set()
        release.wait(30)
        return 1

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def slow() -> int:
        return wait_here()

    holder = threading.Thread(target=slow)
    holder.start()
    try:
        assert started.wait(30)
        tracker.flush()
        flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
        with pytest.raises(CannotRetry, match="still running"):
            slow.retry(flow_run_id)
    finally:
        release.set()
        holder.join()


def test_retry_whose_code_cannot_be_imported_runs_nothing(tmp_path, dirs):
    counter, broken = dirs
    script = tmp_path / "gone.py"
    script.write_text("from daskflow import flow\nfrom daskflow.runners import ThreadPoolTaskRunner\n\n"
                      "@flow(task_runner=ThreadPoolTaskRunner(1))\ndef gone(x: int):\n    return x\n\n"
                      "if __name__ == '__main__':\n    gone(1)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, str(script)], check=True, env=env, cwd=tmp_path)
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    script.unlink()
    result = CliRunner().invoke(main, ["flow-runs", "retry", flow_run_id])
    assert result.exit_code == 1
    assert "cannot import the flow" in result.output and "gone.py" in result.output
    result = CliRunner().invoke(main, ["flow-runs", "retry", flow_run_id, "--entrypoint", "no_such_module:gone"])
    assert result.exit_code == 1 and "No module named 'no_such_module'" in result.output
    result = CliRunner().invoke(main, ["flow-runs", "retry", flow_run_id, "--entrypoint", "nonsense"])
    assert result.exit_code == 1 and "not an entrypoint" in result.output


def test_unserializable_parameters_make_a_flow_run_not_retryable():
    @flow(task_runner=ThreadPoolTaskRunner(2))
    def with_lock(lock: object) -> int:
        return 1

    state = with_lock(threading.Lock(), return_state=True)
    assert state.is_completed()  # the flow run itself is not disturbed
    tracker.flush()
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    with pytest.raises(CannotRetry, match="parameter 'lock' cannot be serialized"):
        with_lock.retry(flow_run_id)


@task
def maybe_fail(x: int, counter: str, broken: str) -> int:
    if os.path.exists(broken) and x % 100 == 7:
        raise ValueError(x)
    _mark(counter, x)
    return x


@pytest.mark.parametrize("chunksize", [125, 500])  # kept ranges split off / chunks that fill in kept runs
def test_resume_of_a_map_with_one_percent_failed_executes_exactly_those(chunksize, dirs, dask_runner):
    """The benchmark's claim at a test's size: 1,000 runs, 1% failed, spread over every chunk."""
    counter, broken = dirs

    @flow(task_runner=dask_runner)
    def big(n: int, counter: str, broken: str) -> list:
        return maybe_fail.map(range(n), unmapped(counter), unmapped(broken), chunksize=chunksize).result()

    open(broken, "w").close()
    assert big(1000, counter, broken, return_state=True).is_failed()
    tracker.flush()
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    os.unlink(broken)
    assert big.retry(flow_run_id) == list(range(1000))
    assert _executed(counter) == list(range(7, 1000, 100))  # exactly the 10 failed bodies


def test_subflow_runs_are_kept_and_reused(dirs):
    counter, broken = dirs

    @flow
    def inner(n: int, counter: str, broken: str) -> list:
        return step.map(range(n), unmapped(counter), unmapped(broken)).result()

    @flow(task_runner=ThreadPoolTaskRunner(4))
    def outer(counter: str, broken: str) -> int:
        first = inner(5, counter, broken)
        second = inner(15, counter, broken)
        return sum(first) + sum(second)

    open(broken, "w").close()
    assert outer(counter, broken, return_state=True).is_failed()
    tracker.flush()
    flow_run_id = [r for r in json.loads(_cli("flow-runs", "ls", "-o", "json").output) if r["name"] == "outer"][0]["id"]
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    os.unlink(broken)
    assert outer.retry(flow_run_id) == 2 * sum(range(5)) + 2 * sum(range(15))
    # the first subflow run failed (element 3), so the second never started: it runs whole
    assert _executed(counter) == sorted([3, *range(15)])


def test_keep_zero_keeps_nothing(dirs, daskflow_home):
    import dask.config

    counter, broken = dirs
    pipeline = _pipeline(ThreadPoolTaskRunner(2))
    open(broken, "w").close()
    with dask.config.set({"daskflow.results.keep": 0}):
        assert pipeline(12, counter, broken, return_state=True).is_failed()
    tracker.flush()
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    assert not (daskflow_home / "kept").exists()  # no value, no parameters written
    with pytest.raises(CannotRetry, match="no record of its parameters"):
        pipeline.retry(flow_run_id)


def test_direct_calls_of_a_task_with_its_own_result_storage_are_kept_there(dirs, tmp_path):
    import dask.config

    counter, broken = dirs
    shared, key = tmp_path / "shared", tmp_path / "shared.key"
    key.write_bytes(os.urandom(32))
    stored = step.with_options(name="stored_step", result_storage=f"file://{shared}")

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def calls(counter: str, broken: str) -> int:  # the two tasks' direct calls interleave
        return sum(step(x, counter, broken) + stored(x + 100, counter, broken) for x in range(4))

    open(broken, "w").close()
    with dask.config.set({"daskflow.results.secret-file": str(key)}):
        assert calls(counter, broken, return_state=True).is_failed()  # step(3) fails; stored(103) never starts
        tracker.flush()
        assert any("kept" in str(p) for p in shared.rglob("*") if p.is_file())  # stored's values: in its storage
        flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
        for name in os.listdir(counter):
            os.unlink(os.path.join(counter, name))
        os.unlink(broken)
        assert calls.retry(flow_run_id) == sum(2 * x + 2 * (x + 100) for x in range(4))
    assert _executed(counter) == [3, 103]  # both tasks' earlier calls were kept, each where it keeps


def test_direct_calls_are_kept_in_batches_and_reused(dirs):
    counter, broken = dirs

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def calls(counter: str, broken: str) -> int:
        return sum(step(x, counter, broken) for x in range(6))  # direct calls: run here, one by one

    open(broken, "w").close()
    assert calls(counter, broken, return_state=True).is_failed()  # call 3 fails; 4 and 5 never start
    tracker.flush()
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    os.unlink(broken)
    assert calls.retry(flow_run_id) == 2 * sum(range(6))
    assert _executed(counter) == [3, 4, 5]  # calls 0-2 were kept (one record for the three)


def test_direct_calls_kept_in_bursts_keep_their_numbers_across_failures_other_tasks_and_submits(dirs):
    """Direct calls are kept by bursts of one task (one name and number for many calls): a failed
    call, a call of another task and a ``.submit()`` of the same task in the middle each end a
    burst, and more calls than one batch (256) are written in several records; a retry runs
    exactly the calls that failed."""
    counter, broken = dirs

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def bursts(counter: str, broken: str) -> int:
        states = []
        for x in range(300):
            states.append(step(x, counter, broken, return_state=True))  # x % 10 == 3 fails
            if x % 7 == 0:
                states.append(plus_one(x, counter, return_state=True))
            if x == 150:  # takes the next number of ``step`` from the middle of a burst
                states.append(step.submit(1000, counter, broken).state)
        return sum(s.result() for s in states)  # raises while calls failed: the flow run fails

    open(broken, "w").close()
    assert bursts(counter, broken, return_state=True).is_failed()
    tracker.flush()
    flow_run_id = json.loads(_cli("flow-runs", "ls", "-o", "json").output)[0]["id"]
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    os.unlink(broken)
    expected = sum(2 * x for x in range(300)) + sum(x + 1 for x in range(0, 300, 7)) + 2000
    assert bursts.retry(flow_run_id) == expected
    assert _executed(counter) == list(range(3, 300, 10))  # only the calls that failed ran again


@task(cache_policy=INPUTS)
def array_part(x: int, counter: str):
    _mark(counter, x)
    return np.full(25_000, float(x))  # 200 kB: a record kept as a reference to the cache


@task
def sum_or_fail(arrays: list, broken: str) -> float:
    if os.path.exists(broken):
        raise ValueError("broken")
    return float(sum(a.sum() for a in arrays))


def _kept_bytes(home, flow_run_id: str) -> int:
    from daskflow.cache.kept import KeptStore, flow_prefix

    prefix = flow_prefix(flow_run_id)
    return sum(len(record) for key, record in KeptStore(home).iterate() if bytes(key).startswith(prefix))


@pytest.mark.parametrize("cache_gone", [False, True])
def test_cached_values_are_kept_as_references_and_a_retry_reads_them_from_the_cache(cache_gone, dirs, daskflow_home,
                                                                                    dask_runner):
    """A cached array is written once (the kept value refers to its cache record); a rerun
    whose runs are Cached keeps only their keys; a retry reads the values from the cache, or,
    when the cache entries went, runs them again: a miss, never a wrong value."""
    from daskflow.cache.store import get_store

    counter, broken = dirs

    @flow(task_runner=dask_runner)
    def arrays(n: int, counter: str, broken: str) -> float:
        return sum_or_fail(array_part.map(range(n), unmapped(counter)).result(), broken)

    want = float(sum(x * 25_000 for x in range(6)))
    open(broken, "w").close()
    assert arrays(6, counter, broken, return_state=True).is_failed()
    assert arrays(6, counter, broken, return_state=True).is_failed()  # a rerun: every array_part run Cached
    tracker.flush()
    runs = json.loads(_cli("flow-runs", "ls", "-o", "json").output)
    first, rerun = runs[1]["id"], runs[0]["id"]
    assert _executed(counter) == list(range(6))  # the rerun executed no body
    for flow_run_id in (first, rerun):  # 6 arrays of 200 kB: kept as six keys, not 1.2 MB again
        assert 0 < _kept_bytes(daskflow_home, flow_run_id) < 4_000
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    os.unlink(broken)
    if cache_gone:
        assert get_store(str(daskflow_home)).clear() >= 6
    assert arrays.retry(first) == want
    assert _executed(counter) == (list(range(6)) if cache_gone else [])
