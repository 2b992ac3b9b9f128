"""The pages in a real browser: headless chromium, the DOM after the page's scripts ran.

`.ci/run` installs Debian's chromium when it is missing; elsewhere these tests are
skipped when no chromium can be found.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from ui_procs import get_json

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium; "
                                                         ".ci/run installs it)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=5000")


def dom(url: str, tmp_path) -> str:
    """The page's DOM once its scripts and their fetches finished, as text with tags stripped."""
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    html = out.stdout
    assert "Loading…" not in html, html  # the script replaced the placeholder
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&")


def test_flow_runs_page_lists_flow_runs_with_states_and_counts(ui, tmp_path):
    text = dom(ui.base + "/", tmp_path)
    assert "etl" in text and "broken" in text
    assert "Completed" in text and "Failed" in text
    assert "8 Completed" in text and "1 Failed" in text  # task runs per state
    assert "updated" in text  # the poller ran


def test_flow_run_page_shows_metrics_timeline_slowest_and_logs(ui, etl_id, tmp_path):
    text = dom(ui.base + f"/flow-runs/{etl_id}", tmp_path)
    for expected in ("Task metrics", "load", "total", "p95", "CPU p95", "memory max", "Timeline of chunks",
                     "Slowest task runs",
                     "starting etl over 8 items", "loading item 3", "summing 7 values", "load-3"):
        assert expected in text, expected


def test_flow_run_page_shows_the_retry_command_of_a_failed_run(ui, etl_id, tmp_path):
    broken = next(f["id"] for f in get_json(ui.base + "/api/flow-runs") if f["name"] == "broken")
    text = dom(ui.base + f"/flow-runs/{broken}", tmp_path)
    assert f"daskflow flow-runs retry {broken}" in text
    assert "flow-runs retry" not in dom(ui.base + f"/flow-runs/{etl_id}", tmp_path)  # completed: nothing to retry


def test_runs_page_filters_and_pages(ui, tmp_path):
    text = dom(ui.base + "/runs", tmp_path)
    assert "load-0" in text and "total-0" in text and "load-3" in text and "page 1" in text
    failed = dom(ui.base + "/runs?state=Failed", tmp_path)
    assert "load-3" in failed and "load-0" not in failed and "1 run(s)" in failed
    paged = dom(ui.base + "/runs?limit=2", tmp_path)
    assert "2 run(s)" in paged


def test_run_page_shows_history_error_traceback_and_logs(ui, tmp_path):
    run = get_json(ui.base + "/api/runs?state=Failed")[0]
    text = dom(ui.base + f"/runs/{run['id']}", tmp_path)
    for expected in ("load-3", "Failed", "ValueError: bad input 3: not a number", "Traceback", "State history",
                     "Running", "AwaitingRetry", "loading item 3", "run count 2", "resources", "CPU ",
                     "peak RSS increase", "Inputs x 3"):
        assert expected in text, expected


def test_flow_run_and_run_pages_show_artifacts(ui, etl_id, tmp_path):
    text = dom(ui.base + f"/flow-runs/{etl_id}", tmp_path)
    for expected in ("Artifacts", "etl-report", "total **", "etl-values", "the values summed", "first-item", "item 0"):
        assert expected in text, expected
    table = next(a for a in get_json(f"{ui.base}/api/flow-runs/{etl_id}/artifacts") if a["type"] == "table")
    run = dom(ui.base + f"/runs/{table['task_run_id']}", tmp_path)
    assert "Artifacts" in run and "etl-values" in run and "etl-report" not in run
