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
    """The command in a fresh interpreter, which must import neither distributed nor dask."""
    code = ("import sys; from daskflow.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('DISTRIBUTED', 'distributed' in sys.modules, 'DASK', 'dask' in sys.modules, file=sys.stderr)\n"
            "    raise\n")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert "DISTRIBUTED False DASK False" in out.stderr, out.stderr
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


_EVERY_READ = """
import sys
from daskflow.cli import main
for line in sys.argv[1:]:
    try:
        main(line.split(), standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, (line, exc.code)
heavy = sorted(m for m in ("dask", "distributed", "numpy") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""


def test_read_only_commands_import_neither_dask_nor_distributed(recorded, daskflow_home):
    """`daskflow runs ls` and every other read-only command, one after another in one fresh
    interpreter (a real store and cache): dask is most of a command's start-up (issue 24)."""
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import close_store, get_store

    store = get_store(daskflow_home)
    keys = [b"v1/t-0000000a/" + i.to_bytes(16, "big") for i in range(3)]
    store.put_many(list(zip(keys, ser.encode_many([1, 2, 3], "t-0000000a", None, None, store.secret))))
    close_store(daskflow_home)
    from daskflow.store import queries
    from daskflow.store.runs import open_run_store

    runs = open_run_store()  # this process recorded them: its own writer's store
    run = queries.runs_page(runs, state="Failed", limit=1).rows[0]["id"]
    flow_run = queries.flow_run_rows(runs, 1)[0]["id"]
    lines = ["runs ls", "runs ls --state Failed", f"runs show {run}", f"runs logs {run}", "flow-runs ls",
             f"flow-runs show {flow_run}", "cache ls", "cache ls --sort read --limit 2", "cache stats", "limits ls",
             "artifacts ls", "runs ls -o json", "flow-runs ls -o json", "cache ls -o json"]
    out = subprocess.run([sys.executable, "-c", _EVERY_READ, *lines], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr, out.stderr
    assert "maybe-2" in out.stdout and "t-0000000a" in out.stdout  # they did list the store and the cache
