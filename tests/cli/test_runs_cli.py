"""`daskflow runs` / `flow-runs`: JSON shapes, prefixes, prune, no distributed import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from daskflow import flow, task
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner


@task(retries=1)
def maybe(x):
    from daskflow import get_run_logger

    get_run_logger().info("hello %s", x)
    if x == 2:
        raise ValueError("two")
    return x


@flow(task_runner=ThreadPoolTaskRunner(2))
def pipeline(n):
    futs = maybe.map(range(n))
    futs.wait()
    return len(futs)


def cli(*args, check=True):
    code = ("import sys; from daskflow.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('DISTRIBUTED', 'distributed' in sys.modules, file=sys.stderr); raise\n")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "DISTRIBUTED False" in out.stderr, out.stderr
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture
def recorded():
    assert pipeline(4) == 4
    assert tracker.flush()


def test_cli_runs_ls_json_shape(recorded):
    rows = json.loads(cli("runs", "ls", "-o", "json").stdout)
    assert len(rows) == 4
    for row in rows:
        assert {"id", "name", "task_key", "flow_run_id", "state", "state_type", "start", "end", "run_count"} <= set(row)
    assert sorted(r["state"] for r in rows) == ["Completed", "Completed", "Completed", "Failed"]
    failed = json.loads(cli("runs", "ls", "--state", "Failed", "-o", "json").stdout)
    assert [r["name"] for r in failed] == ["maybe-2"]
    assert json.loads(cli("runs", "ls", "--task", "nope", "-o", "json").stdout) == []
    assert len(json.loads(cli("runs", "ls", "--limit", "2", "-o", "json").stdout)) == 2


def test_cli_runs_show_and_logs_by_prefix(recorded):
    failed = json.loads(cli("runs", "ls", "--state", "Failed", "-o", "json").stdout)[0]
    shown = json.loads(cli("runs", "show", failed["id"][:8], "-o", "json").stdout)
    assert shown["id"] == failed["id"] and shown["run_count"] == 2
    assert [h["name"] for h in shown["history"]] == ["Pending", "Running", "AwaitingRetry", "Retrying", "Failed"]
    assert all({"name", "type", "timestamp", "message"} <= set(h) for h in shown["history"])
    assert "ValueError: two" in shown["error"]
    logs = json.loads(cli("runs", "logs", failed["id"][:8], "-o", "json").stdout)
    assert [(r["level"], r["message"]) for r in logs] == [("INFO", "hello 2")] * 2
    assert len(json.loads(cli("runs", "logs", failed["id"], "--tail", "1", "-o", "json").stdout)) == 1
    text = cli("runs", "show", failed["id"][:8]).stdout
    assert "AwaitingRetry" in text and "Traceback" in text
    missing = cli("runs", "show", "0000000000", check=False)
    assert missing.returncode != 0 and "no task run" in missing.stderr


def test_cli_flow_runs_ls_and_show(recorded):
    flows = json.loads(cli("flow-runs", "ls", "-o", "json").stdout)
    assert [f["name"] for f in flows] == ["pipeline"]
    shown = json.loads(cli("flow-runs", "show", flows[0]["id"][:6], "-o", "json").stdout)
    assert shown["counts"] == {"Completed": 3, "Failed": 1} and shown["state"] == "Completed"
    assert "pipeline" in cli("flow-runs", "ls").stdout


def test_cli_runs_prune(recorded):
    assert "pruned 0 task run(s)" in cli("runs", "prune", "--older-than", "7d").stdout
    assert "pruned 4 task run(s) and 1 flow run(s)" in cli("runs", "prune", "--older-than", "0s").stdout
    assert json.loads(cli("runs", "ls", "-o", "json").stdout) == []
    bad = cli("runs", "prune", "--older-than", "soon", check=False)
    assert bad.returncode != 0 and "not a duration" in bad.stderr
