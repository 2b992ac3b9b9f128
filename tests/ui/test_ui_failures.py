"""The UI's numbers and failures: runs' own durations while a flow runs, timeline colours by run
state, failures root causes first and linked, a Failed filter that pages stably as runs arrive."""

from __future__ import annotations

import re
from array import array
import shutil
import subprocess
import threading
import time
import uuid

import pytest
from ui_procs import get_json, start_ui, stop_ui

from daskflow import allow_failure, flow, task
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.store import queries
from daskflow.store.runs import ChunkUpdate, FlowUpdate, open_run_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@task
def step(i: int) -> int:
    time.sleep(0.01)
    if i in (7, 13):
        raise ValueError(f"bad row {i}")
    return i


@task
def after(x: int) -> int:
    return x


@flow(name="with-failures", task_runner=ThreadPoolTaskRunner(2))
def with_failures() -> None:
    rows = step.map(range(40), chunksize=20)
    after.map(rows, chunksize=20).wait()


@pytest.fixture
def failures_ui(daskflow_home):
    with_failures()
    assert tracker.flush()
    fid = next(f["id"] for f in open_run_store().flow_runs() if f["name"] == "with-failures")
    server = start_ui(daskflow_home)
    yield server, fid
    stop_ui(server)


def test_the_flow_run_lists_root_causes_first_and_the_timeline_colours_runs(failures_ui):
    ui, fid = failures_ui
    detail = get_json(f"{ui.base}/api/flow-runs/{fid}")
    names = [(r["name"], r["state"]) for r in detail["failures"]]
    assert names[:2] == [("step-7", "Failed"), ("step-13", "Failed")] or \
        names[:2] == [("step-13", "Failed"), ("step-7", "Failed")], names
    assert {n for n, s in names[2:]} == {"after-7", "after-13"} and {s for _, s in names[2:]} == {"NotReady"}
    bars = [b for b in get_json(f"{ui.base}/api/timeline?flow_run={fid}") if b["task"] == "step"]
    bad = next(b for b in bars if b["failed"] == 2)  # the chunk of runs 0..19 holds both failures
    kinds = [kind for _, _, kind in bad["segments"]]
    assert kinds == ["COMPLETED", "FAILED", "COMPLETED", "FAILED", "COMPLETED"], bad["segments"]
    failed_time = sum(e - s for s, e, kind in bad["segments"] if kind == "FAILED")
    assert failed_time < 0.5 * (bad["end"] - bad["start"])  # two runs of twenty, not the whole bar


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")
def test_the_flow_run_page_in_a_browser_shows_failures_first_and_links_the_failed_count(failures_ui, tmp_path):
    ui, fid = failures_ui
    flags = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=5000")
    out = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"{ui.base}/flow-runs/{fid}"], capture_output=True, text=True, timeout=60)
    html = out.stdout
    assert "Failures (root causes first)" in html, html[-3000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    section = text[text.index("Failures (root causes first)"):text.index("Task metrics")]
    assert section.index("step-") < section.index("after-") and "ValueError: bad row" in section
    assert f'href="/runs?flow_run={fid}&amp;state=Failed"' in html  # the failed count links to the failed runs
    assert "state=FAILED" in html  # ... and so does the metrics table's failed column
    assert 'class="seg seg-FAILED"' in html and 'class="bar"' in html  # red slivers on a green chunk


@task
def one_second(i: int) -> int:
    time.sleep(0.3)
    return i


@task
def hold(values: list, event_name: str) -> int:
    from distributed import Event

    Event(event_name).wait(120)  # released by the test once it has read the store
    return len(values)


def test_runs_show_their_own_durations_while_the_flow_runs(on_cluster, daskflow_home):
    """A chunk's end message carries each run's end: 0.3 s runs read ~0.3 s, not 0.0 s and the chunk's 1.2 s."""
    from distributed import Client, Event

    release = f"release-{uuid.uuid4().hex}"
    seen: dict = {}

    @flow(name="live-durations")
    def live() -> int:
        futs = one_second.map(range(4), chunksize=4)
        seen["ok"] = True
        return hold.submit(allow_failure(futs), release).result()

    done = threading.Thread(target=lambda: seen.setdefault("result", live()), daemon=True)
    done.start()
    client = Client(on_cluster.scheduler_address)
    try:
        deadline = time.monotonic() + 60
        metrics = None
        while True:
            assert time.monotonic() < deadline, metrics
            tracker.flush()
            flows = [f for f in open_run_store().flow_runs() if f["name"] == "live-durations"]
            metrics = queries.task_metrics(open_run_store(), flows[0]["id"]) if flows else []
            row = next((m for m in metrics if m["task"] == "one_second"), None)
            if row and row["completed"] == 4:
                break
            time.sleep(0.1)  # polling a store written by another thread, with a deadline
        assert done.is_alive()  # still running: the chunk's envelope was not fetched
        assert 0.25 < row["p50"] < 0.6 and row["max"] < 0.9, row
        slowest = open_run_store().flow_run(flows[0]["id"])["slowest"]
        assert all(0.25 < r["duration"] < 0.9 for r in slowest if r["name"].startswith("one_second")), slowest
    finally:
        Event(release, client=client).set()
        done.join(60)
        client.close()
    assert seen["result"] == 4


def test_the_failed_filter_pages_in_a_stable_order_while_runs_arrive(daskflow_home):
    store = open_run_store()
    now = time.time()
    codes = bytes([0, 2, 0, 2, 2])  # Completed, Failed, ...: three failed runs per chunk

    def add_chunk(k: int) -> None:  # submitted in order, started in the reverse order (queued on workers)
        began = now + 100 - k
        ends = array("d", [began + 0.01 * (i + 1) for i in range(5)]).tobytes()
        store.apply([ChunkUpdate(1000 + k, 0, {"task": "t", "n": 5, "submitted": now + k, "codes": codes,
                                               "ends": ends, "started": began}, new=True)])

    for k in range(10):
        add_chunk(k)
    seen: list[str] = []
    cursor = None
    for page_no in range(20):
        page = store.task_runs_page(state="Failed", limit=4, after=cursor)
        seen.extend(r["id"] for r in page.rows)
        add_chunk(100 + page_no)  # newer runs arrive between pages: they go above, not into the pages
        cursor = page.next
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 30  # every failed run of the first ten chunks, once
    fresh = [r["id"] for r in store.task_runs(state="Failed", limit=None)]
    assert [i for i in fresh if i in set(seen)] == seen  # the same order as one listing


def test_a_chunks_setup_is_not_its_first_runs_time(daskflow_home):
    """Run 0 is timed from the chunk's loop (``first``), not from the chunk's start: slowest runs are not each
    chunk's first run."""
    store = open_run_store()
    t0 = time.time()
    fid = str(uuid.uuid4())
    store.apply([FlowUpdate(fid, {"name": "setup", "start": t0, "state": "Completed", "state_type": "COMPLETED"})])
    for k in range(3):  # 1 s of setup, then runs of 0.1 s, and run 2 of chunk 1 takes 0.5 s
        ends = [t0 + 1.1, t0 + 1.2, t0 + (1.7 if k == 1 else 1.3), t0 + 1.4]
        store.apply([ChunkUpdate(2000 + k, 0, {"task": "t", "n": 4, "flow_run_id": fid, "submitted": t0,
                                               "started": t0, "first": t0 + 1.0, "codes": bytes(4),
                                               "ends": array("d", ends).tobytes()}, new=True)])
    slowest = store.flow_run(fid, slowest=3)["slowest"]
    assert slowest[0]["name"] == "t-2" and 0.45 < slowest[0]["duration"] < 0.55, slowest
    assert all(r["duration"] < 0.55 for r in slowest), slowest  # no run carries the 1 s of setup
    (metrics,) = queries.task_metrics(store, fid)
    assert metrics["max"] < 0.55 and 0.05 < metrics["p50"] < 0.15, metrics
