"""Careless commands (issue 13): bad flag values, typo homes, clearing without asking, JSON shapes.

Every command runs as a real ``python -m daskflow`` subprocess.
"""

from __future__ import annotations

import json
import os
import pathlib
import pty
import subprocess
import sys
import tomllib

import pytest

from daskflow import flow, task
from daskflow.cache import INPUTS
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cli(*args, home, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASKFLOW_HOME=str(home))
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "daskflow", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=kwargs.pop("stdin", subprocess.DEVNULL), **kwargs)


@task(cache_policy=INPUTS)
def kept(x):
    return x


@task
def double(x):
    return 2 * x


@flow(task_runner=ThreadPoolTaskRunner(2))
def params_flow(n: int, label: str, ratio: float, flags: list, extra: dict, obj: object):
    return double.map(range(n)).result()


@pytest.fixture
def recorded(daskflow_home):
    assert params_flow(3, "x", 0.5, [1, "a"], {"k": None}, object()) == [0, 2, 4]
    for i in range(3):
        kept(i)
    assert tracker.flush()
    return daskflow_home


def assert_map_runs(cluster_task=double):
    assert cluster_task.map(range(100)).result() == [2 * i for i in range(100)]


@pytest.mark.parametrize("tail", ["0", "-5"])
def test_runs_logs_tail_must_be_at_least_one(recorded, tail, on_cluster):
    run_id = json.loads(cli("runs", "ls", "-o", "json", home=recorded).stdout)[0]["id"]
    res = cli("runs", "logs", run_id, "--tail", tail, home=recorded)
    assert res.returncode == 2 and "--tail" in res.stderr and ">=1" in res.stderr.replace(" ", "")
    assert_map_runs()


def test_runs_ls_unknown_state_lists_the_valid_names(recorded, on_cluster):
    res = cli("runs", "ls", "--state", "Bogus", home=recorded)
    assert res.returncode == 2 and "Bogus" in res.stderr
    for name in ("Completed", "Cached", "Failed", "NotReady", "Crashed", "Running", "Pending"):
        assert name in res.stderr
    ok = cli("runs", "ls", "--state", "completed", "-o", "json", home=recorded)  # any case works
    assert ok.returncode == 0 and len(json.loads(ok.stdout)) == 6  # 3 double + 3 kept
    assert_map_runs()


@pytest.mark.parametrize("args, code, out", [
    (["runs", "ls"], 0, None),
    (["runs", "ls", "-o", "json"], 0, []),
    (["flow-runs", "ls", "-o", "json"], 0, []),
    (["runs", "show", "abc"], 1, None),
    (["runs", "logs", "abc"], 1, None),
    (["cache", "ls", "-o", "json"], 0, []),
    (["cache", "stats", "-o", "json"], 0, None),
])
def test_read_commands_never_create_a_home(tmp_path, args, code, out, on_cluster):
    typo = tmp_path / "typo"
    res = cli(*args, home=typo)
    assert res.returncode == code, res.stderr
    assert f"under {typo}" in res.stderr and "Traceback" not in res.stderr
    if out is not None:
        assert json.loads(res.stdout) == out
    assert not typo.exists()
    assert_map_runs()


def test_cache_clear_needs_yes_without_a_terminal(recorded, on_cluster):
    res = cli("cache", "clear", home=recorded)
    assert res.returncode == 2 and "--yes" in res.stderr
    assert len(json.loads(cli("cache", "ls", "-o", "json", home=recorded).stdout)) == 3
    assert json.loads(cli("cache", "clear", "--yes", "-o", "json", home=recorded).stdout) == {"removed": 3}
    assert json.loads(cli("cache", "ls", "-o", "json", home=recorded).stdout) == []
    assert_map_runs()


@pytest.mark.parametrize("answer, left", [("n", 3), ("y", 0)])
def test_cache_clear_asks_on_a_terminal(recorded, answer, left, on_cluster):
    main, child = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASKFLOW_HOME=str(recorded))
    proc = subprocess.Popen([sys.executable, "-m", "daskflow", "cache", "clear"], env=env, stdin=child,
                            stdout=child, stderr=child)
    os.close(child)
    seen = b""
    while b"[y/N]" not in seen:  # the prompt, read from the terminal
        seen += os.read(main, 1024)
    assert b"Delete every cache entry?" in seen
    os.write(main, answer.encode() + b"\n")
    assert proc.wait(30) == (0 if answer == "y" else 1)
    os.close(main)
    assert len(json.loads(cli("cache", "ls", "-o", "json", home=recorded).stdout)) == left
    assert_map_runs()


def test_json_timestamps_are_epoch_seconds_and_parameters_keep_their_types(recorded, on_cluster):
    run = json.loads(cli("runs", "ls", "-o", "json", home=recorded).stdout)[0]
    entry = json.loads(cli("cache", "ls", "-o", "json", home=recorded).stdout)[0]
    shown = json.loads(cli("runs", "show", run["id"], "-o", "json", home=recorded).stdout)
    logs_owner = json.loads(cli("flow-runs", "ls", "-o", "json", home=recorded).stdout)[0]
    for ts in (run["start"], run["end"], entry["created"], shown["history"][0]["timestamp"], logs_owner["start"]):
        assert isinstance(ts, float) and 1.6e9 < ts < 4e9
    assert entry["expires"] is None
    params = json.loads(cli("flow-runs", "show", logs_owner["id"], "-o", "json", home=recorded).stdout)["parameters"]
    assert params["n"] == 3 and params["label"] == "x" and params["ratio"] == 0.5
    assert params["flags"] == [1, "a"] and params["extra"] == {"k": None}
    assert params["obj"].startswith("<object object at")  # not JSON: its repr
    assert_map_runs()


def test_dask_config_get_daskflow_shows_the_defaults(tmp_path):
    """`dask` finds daskflow through the dask_cli entry point declared in pyproject.toml.

    The installed metadata may predate that line, so the test lays out a dist-info
    carrying exactly pyproject's entry points in front of it on the path.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    eps = project["entry-points"]["dask_cli"]
    info = tmp_path / f"daskflow-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: daskflow\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("[dask_cli]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    res = subprocess.run([sys.executable, "-m", "dask", "config", "get", "daskflow"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "connect-timeout: 10s" in res.stdout and "chunk-seconds: 0.2" in res.stdout
    one = subprocess.run([sys.executable, "-m", "dask", "config", "get", "daskflow.default-task-runner"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert one.stdout.strip() == "dask"


def test_server_start_without_bokeh_says_so_instead_of_a_dead_link(tmp_path):
    import importlib.util
    import signal

    from background_procs import Proc, env_for

    if importlib.util.find_spec("bokeh") is not None:
        pytest.skip("bokeh is installed: the dashboard link answers")
    home = tmp_path / "home"
    proc = Proc(["server", "start", "--port", "0", "--dashboard-address", "127.0.0.1:0"], env_for(home),
                tmp_path / "server.log")
    try:
        line = proc.expect("  dashboard:")
        assert "bokeh is not installed" in line and "http" not in line
    finally:
        assert proc.stop(signal.SIGTERM) == 0
