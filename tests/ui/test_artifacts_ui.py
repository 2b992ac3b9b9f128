"""Artifacts on the run and flow-run pages' API, and in `daskflow artifacts ls/show` (same shapes)."""

from __future__ import annotations

import subprocess
import sys

from ui_procs import env_for, get, get_json


def test_flow_run_artifacts_api_lists_the_flows_and_its_task_runs(ui, etl_id):
    arts = get_json(f"{ui.base}/api/flow-runs/{etl_id}/artifacts")
    assert [(a["key"], a["type"]) for a in arts] == [("first-item", "link"), ("etl-report", "markdown"),
                                                     ("etl-values", "table"), ("etl-report", "markdown")]
    assert all(a["flow_run_id"] == etl_id for a in arts)
    table = next(a for a in arts if a["type"] == "table")
    assert table["description"] == "the values summed" and {"value": 0} in table["data"]


def test_run_artifacts_api_lists_what_the_run_published(ui, etl_id):
    arts = get_json(f"{ui.base}/api/flow-runs/{etl_id}/artifacts")
    run_id = next(a["task_run_id"] for a in arts if a["type"] == "table")
    mine = get_json(f"{ui.base}/api/runs/{run_id[:8]}/artifacts")  # a prefix, as the pages take
    assert [a["key"] for a in mine] == ["etl-values"]
    status, _, _ = get(f"{ui.base}/api/runs/ffffffff/artifacts")
    assert status == 404


def test_pages_draw_artifacts_from_the_api(ui):
    status, _, raw = get(f"{ui.base}/static/app.js")
    js = raw.decode()
    assert status == 200 and "/artifacts`" in js and 'h("h2", {}, "Artifacts")' in js


def test_cli_artifacts_ls_and_show_versions(cli_json, ui, etl_id):
    latest = cli_json("artifacts", "ls")
    report = next(a for a in latest if a["key"] == "etl-report")
    assert report["versions"] == 2 and "total **" in report["data"]
    assert get_json(f"{ui.base}/api/artifacts") == latest  # the API serves the CLI's shape
    versions = cli_json("artifacts", "show", "etl-report")
    assert [v["version"] for v in versions] == [2, 1] and versions[1]["data"] == "# ETL\nstarted"
    by_id = cli_json("artifacts", "show", report["id"][:8])
    assert [a["id"] for a in by_id] == [report["id"]]


def test_cli_artifacts_show_unknown_is_one_line(ui_home):
    out = subprocess.run([sys.executable, "-m", "daskflow", "artifacts", "show", "nope"], env=env_for(ui_home),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no artifact with key or id 'nope'" in out.stderr
