"""The progress display: drawn from the tracker's counts, only for waits longer than the delay."""

from __future__ import annotations

import io
import threading

from rich.console import Console

from daskflow import task
from daskflow.engine.core.context import FlowRunContext, flow_run_ctx
from daskflow.engine.tracking import progress
from daskflow.runners import ThreadPoolTaskRunner

GATE = threading.Event()


@task
def gated(x):
    GATE.wait(30)
    if x == 3:
        raise ValueError(x)
    return x


def _console(buf):
    return Console(file=buf, force_terminal=True, width=120)


def test_progress_shows_counts_while_waiting():
    runner = ThreadPoolTaskRunner(2)
    token = flow_run_ctx.set(FlowRunContext(None, "00000000-0000-0000-0000-000000000002", runner, {}))
    try:
        GATE.clear()
        futs = gated.map(range(8), chunksize=2)
        buf = io.StringIO()
        with progress.watching(futs.chunks, delay=0, console=_console(buf)):
            GATE.set()
            futs.wait()
            # keep the display up until it has drawn the final counts
            import time

            deadline = time.monotonic() + 10
            while "completed 7" not in buf.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
        out = buf.getvalue()
        assert "gated" in out and "completed 7" in out and "failed 1" in out
    finally:
        flow_run_ctx.reset(token)
        runner.shutdown()


def test_progress_silent_for_short_waits():
    runner = ThreadPoolTaskRunner(2)
    token = flow_run_ctx.set(FlowRunContext(None, "00000000-0000-0000-0000-000000000003", runner, {}))
    try:
        GATE.set()
        futs = gated.map(range(4), chunksize=1)
        buf = io.StringIO()
        with progress.watching(futs.chunks, delay=5, console=_console(buf)):
            futs.wait()
        assert buf.getvalue() == ""
    finally:
        flow_run_ctx.reset(token)
        runner.shutdown()
