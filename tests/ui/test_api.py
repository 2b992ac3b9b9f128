"""The UI's JSON API: every endpoint is the CLI's `-o json` for the same store; paging; safety."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from ui_procs import ROOT, env_for, get, get_json, start_ui, stop_ui


def test_ui_serves_on_loopback(ui):
    # how fast it starts is measured in benchmarks/bench_ui.py, not asserted here
    assert ui.url.startswith("http://127.0.0.1:")


def test_api_listings_match_the_cli(ui, cli_json, etl_id):
    assert get_json(ui.base + "/api/flow-runs") == cli_json("flow-runs", "ls")
    assert get_json(ui.base + "/api/runs") == cli_json("runs", "ls")
    assert get_json(ui.base + "/api/runs?limit=3") == cli_json("runs", "ls", "--limit", "3")
    assert get_json(ui.base + "/api/runs?state=Failed") == cli_json("runs", "ls", "--state", "Failed")
    assert get_json(ui.base + "/api/runs?task=total") == cli_json("runs", "ls", "--task", "total")
    assert get_json(ui.base + f"/api/runs?flow_run={etl_id[:8]}") == cli_json("runs", "ls", "--flow-run", etl_id[:8])
    assert [r["name"] for r in get_json(ui.base + "/api/runs?state=Failed")] == ["load-3"]


def test_api_records_match_the_cli(ui, cli_json, etl_id):
    failed = get_json(ui.base + "/api/runs?state=Failed")[0]["id"]
    assert get_json(ui.base + f"/api/flow-runs/{etl_id}") == cli_json("flow-runs", "show", etl_id)
    assert get_json(ui.base + f"/api/flow-runs/{etl_id}/logs") == cli_json("flow-runs", "logs", etl_id)
    assert get_json(ui.base + f"/api/metrics?flow_run={etl_id}") == cli_json("flow-runs", "metrics", etl_id)
    run = get_json(ui.base + f"/api/runs/{failed[:10]}")
    assert run == cli_json("runs", "show", failed[:10])
    assert "ValueError: bad input 3" in run["error"] and "Traceback" in run["traceback"]
    assert run["run_count"] == 2 and [h["name"] for h in run["history"]][-1] == "Failed"
    logs = get_json(ui.base + f"/api/runs/{failed}/logs")
    assert logs == cli_json("runs", "logs", failed)
    assert [r["message"] for r in logs] == ["loading item 3"] * 2  # one record per attempt
    assert get_json(ui.base + f"/api/runs/{etl_id}/logs") == cli_json("runs", "logs", etl_id)  # a flow run's own


def test_api_metrics_and_timeline_of_a_flow_run(ui, etl_id):
    metrics = {m["task"]: m for m in get_json(ui.base + f"/api/metrics?flow_run={etl_id}")}
    load = metrics["load"]
    assert (load["runs"], load["completed"], load["failed"], load["retried"], load["cached"]) == (8, 7, 1, 1, 0)
    assert 0 < load["p50"] <= load["p95"] <= load["max"] <= load["total"]
    assert metrics["total"]["runs"] == 1
    bars = get_json(ui.base + f"/api/timeline?flow_run={etl_id}")
    assert sum(b["runs"] for b in bars) == 9 and sum(b["failed"] for b in bars) == 1
    assert all(b["start"] <= b["end"] for b in bars)


def test_api_pages_through_runs_with_a_cursor(ui, cli_json):
    everything = cli_json("runs", "ls", "--limit", "1000")
    seen, cursor, pages = [], None, 0
    while True:
        url = ui.base + "/api/runs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        status, headers, body = get(url)
        assert status == 200
        seen += [r["id"] for r in json.loads(body)]
        pages += 1
        cursor = headers.get("X-Next-Cursor")
        if not cursor:
            break
        assert "rel=\"next\"" in headers["Link"]
    assert sorted(seen) == sorted(r["id"] for r in everything) and len(seen) == len(set(seen))
    assert pages == -(-len(everything) // 3) or pages == -(-len(everything) // 3) + 1


def test_api_searches_runs_by_id_prefix(ui):
    run = get_json(ui.base + "/api/runs?state=Failed")[0]
    found = get_json(ui.base + f"/api/runs?id={run['id'][:6]}")
    assert run["id"] in [r["id"] for r in found] and all(r["id"].startswith(run["id"][:6]) for r in found)
    assert get(ui.base + "/api/runs?id=xyz")[0] == 404


@pytest.mark.parametrize("path, status", [("/api/runs/ffffffff", 404), ("/api/flow-runs/ffffffff", 404),
                                          ("/api/runs?state=Bogus", 400), ("/api/runs?limit=0", 400),
                                          ("/api/metrics", 400), ("/api/runs?cursor=zz", 400)])
def test_api_errors_are_json(ui, path, status):
    code, headers, body = get(ui.base + path)
    assert code == status and "error" in json.loads(body)


def test_ui_changes_no_store(ui, ui_home, etl_id):
    data = ui_home / "runs" / "data.mdb"
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    for path in ("/", "/runs", f"/flow-runs/{etl_id}", "/api/flow-runs", f"/api/flow-runs/{etl_id}",
                 "/api/runs", f"/api/metrics?flow_run={etl_id}", f"/api/timeline?flow_run={etl_id}"):
        assert get(ui.base + path)[0] == 200
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert get(ui.base + path, method=method)[0] == 405
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before


def test_ui_refuses_other_host_names_on_loopback(ui):
    assert get(ui.base + "/api/flow-runs", headers={"Host": "attacker.example:4200"})[0] == 403
    assert get(ui.base + "/api/flow-runs", headers={"Host": "localhost"})[0] == 200


def test_ui_off_loopback_requires_the_printed_token(tmp_path):
    home = tmp_path / "empty"
    home.mkdir(mode=0o700)
    server = start_ui(home, "--host", "0.0.0.0")
    try:
        assert "?token=" in server.url
        token = server.url.split("token=")[1]
        api = server.base + "/api/flow-runs"
        assert get(api)[0] == 403
        assert get(api + "?token=wrong")[0] == 403
        assert get(api + f"?token={token}")[0] == 200
        assert get(api, headers={"Authorization": f"token {token}"})[0] == 200
        status, headers, _ = get(server.url)  # a page opened with ?token= sets the cookie its fetches send
        assert status == 200 and "daskflow-ui-token=" in headers["Set-Cookie"]
        assert get(api, headers={"Cookie": f"daskflow-ui-token={token}"})[0] == 200
    finally:
        stop_ui(server)


def test_ui_never_creates_a_store(tmp_path):
    home = tmp_path / "nothing-yet"
    home.mkdir(mode=0o700)
    server = start_ui(home)
    try:
        assert get_json(server.base + "/api/flow-runs") == []
        assert get_json(server.base + "/api/runs") == []
        assert get(server.base + "/api/runs/abcd")[0] == 404
        assert get(server.base + "/")[0] == 200
    finally:
        stop_ui(server)
    assert list(home.iterdir()) == []


def test_ui_modules_do_not_import_distributed(ui_home):
    code = """
import json, sys, threading, urllib.request
from daskflow.ui import server
def started(url):
    def fetch():
        for path in ("", "runs", "api/flow-runs", "api/runs"):
            urllib.request.urlopen(url + path).read()
        import daskflow.ui.dashboard
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "distributed")), flush=True)
        import os, signal; os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=fetch).start()
server.serve("127.0.0.1", 0, server.ui_options("127.0.0.1", home=None), started)
"""
    out = subprocess.run([sys.executable, "-c", code], env=env_for(ui_home), capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
