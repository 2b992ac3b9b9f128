"""The run console: run names in log lines, a line per failure or retry, a summary for big maps, the bar's colour."""

from __future__ import annotations

import io
import logging
import time

import pytest
from rich.console import Console

from daskflow import flow, get_run_logger, task
from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
from daskflow.engine.tracking import progress, tracker
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
    assert not any("Finished in state" in line and "flaky-2" not in line for line in out)  # nothing for successes


def test_console_summarises_failures_of_a_big_map(lines):
    big(200)
    failures = [line for line in lines() if "always_fails" in line]
    assert len(failures) < 30, failures  # not one line per element
    detailed = [line for line in failures if line.startswith("Task run 'always_fails-")]
    summaries = [line for line in failures if line.startswith("Task 'always_fails' - ")]
    assert detailed and summaries
    counted = len(detailed) + sum(int(line.split(" - ")[1].split()[0]) for line in summaries)
    assert counted == 200
    assert "daskflow runs ls --task always_fails --state Failed" in summaries[0]


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
