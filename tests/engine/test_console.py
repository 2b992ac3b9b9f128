"""The run console: run names in log lines, a line per failure or retry, a summary for big maps, the bar's colour."""

from __future__ import annotations

import io
import logging
import threading
import time

import pytest
from rich.console import Console

from daskflow import flow, get_run_logger, runtime, task, unmapped
from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
from daskflow.engine.tracking import progress, tracker
from daskflow.exceptions import UpstreamFailed
from daskflow.runners import ThreadPoolTaskRunner


@task(retries=1)
def flaky(x):
    get_run_logger().info("working on %s", x)
    if x == 2:
        raise ValueError(f"bad {x}")
    return x


@task
def always_fails(x):
    raise KeyError(x)


@flow(name="console-flow", task_runner=ThreadPoolTaskRunner(2))
def pipeline(n):
    get_run_logger().info("flow says hi")
    return flaky.map(range(n)).wait()


@flow(name="big-map", task_runner=ThreadPoolTaskRunner(2))
def big(n):
    always_fails.map(range(n)).wait()


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="daskflow.runs")

    def read():
        assert tracker.flush()
        return [r.getMessage() for r in caplog.records if r.name == "daskflow.runs"]

    return read


def test_console_names_runs_and_reports_failures_and_retries(lines):
    pipeline(4)
    out = lines()
    assert "Flow run 'console-flow' - flow says hi" in out
    assert "Task run 'flaky-1' - working on 1" in out
    assert any(line.startswith("Task run 'flaky-2' - Finished in state AwaitingRetry('ValueError: bad 2")
               for line in out), out
    assert "Task run 'flaky-2' - Finished in state Failed('ValueError: bad 2')" in out
    assert "Task 'flaky' - 1 task runs retried (1 retries): 0 then completed, 1 did not" in out
    assert not any("Finished in state" in line and "flaky-2" not in line for line in out)  # nothing for successes


def test_console_summarises_failures_of_a_big_map(lines):
    big(200)
    failures = [line for line in lines() if "always_fails" in line]
    assert len(failures) < 30, failures  # not one line per element
    detailed = [line for line in failures if line.startswith("Task run 'always_fails-")]
    summaries = [line for line in failures if line.startswith("Task 'always_fails' - ")]
    assert len(detailed) == 1 and len(summaries) == 1, failures  # KeyError(#): one distinct error
    assert summaries[0].startswith("Task 'always_fails' - 200 task runs finished in state Failed with KeyError")
    assert "daskflow runs ls --task always_fails --state Failed" in summaries[0]


@task(retries=1)
def etl_step(x):
    if x % 20 == 7:
        raise ValueError(f"bad record {x}")  # 50 of 1,000 fail for good
    if x % 20 == 3 and runtime.task_run.run_count == 1:
        raise ConnectionError(f"transient {x}")  # 50 more fail once
    return x


@task
def downstream(x):
    return x


@flow(name="etl-console", task_runner=ThreadPoolTaskRunner(2))
def etl(n):
    rows = etl_step.map(range(n))
    return downstream.map(rows).result()


def test_a_1000_run_map_with_50_failures_prints_the_root_cause_first_and_at_most_30_lines(caplog):
    caplog.set_level(logging.INFO, logger="daskflow")
    with pytest.raises(UpstreamFailed):  # the flow returns the downstream results
        etl(1000)
    assert tracker.flush()
    out = [r.getMessage() for r in caplog.records if r.name.startswith("daskflow")]
    assert len("\n".join(out).splitlines()) <= 30, "\n".join(out)
    first_error = next(i for i, line in enumerate(out) if "Finished in state Failed('ValueError: bad record" in line)
    assert all(i > first_error for i, line in enumerate(out) if "NotReady" in line), out  # cause before consequence
    assert sum("AwaitingRetry" in line for line in out) == 1, out  # the first retry; the others counted
    assert "Task 'etl_step' - 100 task runs retried (100 retries): 50 then completed, 50 did not" in out
    assert any(line.startswith("Task 'etl_step' - 50 task runs finished in state Failed with ValueError") for line in out)
    assert any(line.startswith("Task 'downstream' - 50 task runs finished in state NotReady") for line in out)
    assert out[-1].startswith("Flow run 'etl-console' - Finished in state Failed")


@task
def takes_a_lock(x, lock):
    return x


@flow(name="unpicklable")
def with_a_lock(runner_address):
    return takes_a_lock.map(range(200), unmapped(threading.Lock()), chunksize=10).wait()


def test_an_unpicklable_arguments_error_is_printed_once(caplog, on_cluster):
    caplog.set_level(logging.INFO, logger="daskflow")
    with_a_lock(on_cluster.scheduler_address)
    assert tracker.flush()
    out = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("daskflow"))
    assert out.count("argument 'lock' cannot be serialized") == 1, out
    assert "Task 'takes_a_lock' - 200 task runs finished in state Failed with ParameterSerializationError" in out


def test_console_lines_clear_a_live_progress_bar_first(monkeypatch):
    """While the bar is live, a line goes through rich: bar erased, line printed, bar drawn again below."""
    monkeypatch.setattr(tracker.run_logger, "handlers", [])
    monkeypatch.setattr(tracker.run_logger, "propagate", False)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    tracker.console()  # the handler exists before the bar does, as in a script's second map
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system=None, width=120)
    runner = ThreadPoolTaskRunner(2)
    token = flow_run_ctx.set(FlowRunContext(None, "00000000-0000-0000-0000-000000000007", runner, {}))
    try:
        futs = slow_logger.map(range(40), chunksize=1)
        with progress.watching(futs.chunks, delay=0, console=console):
            futs.wait()
            assert tracker.flush()
    finally:
        flow_run_ctx.reset(token)
        runner.shutdown()
    raw = buf.getvalue()
    said = [line for line in raw.split("\n") if "Task run 'slow_logger-" in line]
    assert said, raw  # the lines went to the bar's console, not around it
    for line in said:
        text = line[line.index("|"):]  # after the time stamp: nothing of the bar on the same line
        assert "completed" not in text and "\x1b[" not in text, repr(line)


@task
def slow_logger(x):
    time.sleep(0.02)
    get_run_logger().info("row %s", x)
    return x


@task
def maybe_fail(x, fail):
    if fail and x == 1:
        raise ValueError(x)
    return x


@pytest.mark.parametrize("fail", [False, True])
def test_progress_bar_is_red_only_when_a_run_failed(fail):
    runner = ThreadPoolTaskRunner(2)
    token = flow_run_ctx.set(FlowRunContext(None, "00000000-0000-0000-0000-00000000000" + str(int(fail) + 4),
                                            runner, {}))
    try:
        futs = maybe_fail.map(range(6), fail=fail, chunksize=1)
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=True, color_system="standard", width=120)
        with progress.watching(futs.chunks, delay=0, console=console):
            futs.wait()
            deadline = time.monotonic() + 10
            while f"failed {int(fail)}" not in buf.getvalue() or "completed" not in buf.getvalue():
                assert time.monotonic() < deadline, buf.getvalue()
                time.sleep(0.02)  # polls the condition above, with a deadline
        red = "\x1b[31m"
        assert (red in buf.getvalue()) is fail
    finally:
        flow_run_ctx.reset(token)
        runner.shutdown()
