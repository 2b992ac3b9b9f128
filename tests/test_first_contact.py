"""What a new user meets first: the README's first screen, the example's last lines, a bad scheduler address."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from daskflow import flow, task
from daskflow.exceptions import BadSchedulerAddress

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_readme_first_screen_says_how_to_start():
    first = ROOT.joinpath("README.md").read_text().split("## Quickstart")[0]
    for needed in ("Python 3.11", "git clone", "-m venv", "minutes on 2 cores", "`bench`", "`dashboard`",
                   "daskflow ui", "from daskflow.runners import DaskTaskRunner, ThreadPoolTaskRunner"):
        assert needed in first, needed
    assert 'dashboard = ["bokeh' in ROOT.joinpath("pyproject.toml").read_text()


def test_the_example_ends_with_where_to_look_next_and_no_critical_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASKFLOW_HOME=str(tmp_path / "home"),
               DASK_DASKFLOW__LOCAL_CLUSTER__N_WORKERS="2")
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pipeline.py"), "200"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "200 walks simulated" in out.stdout
    assert "daskflow flow-runs ls" in out.stdout and "daskflow ui" in out.stdout
    assert "CRITICAL" not in out.stderr and "Closed comm" not in out.stderr, out.stderr


@task
def one(x):
    return x


@flow
def tiny():
    return one.submit(1).result()


@pytest.mark.parametrize("address", ["localhost:notaport", "htp//scheduler", "htp://127.0.0.1:8786"])
def test_a_malformed_scheduler_address_is_one_clear_error_at_once(address, monkeypatch):
    from daskflow.runners import set_default_runner

    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    set_default_runner(None)
    with pytest.raises(BadSchedulerAddress, match="DASKFLOW_SCHEDULER_ADDRESS.*tcp://HOST:PORT"):
        tiny()
    set_default_runner(None)


SCRIPT = """
from daskflow import flow, task

@task
def one(x):
    return x

@flow
def tiny():
    return one.submit(1).result()

if __name__ == "__main__":
    tiny()
"""


def test_a_malformed_scheduler_address_does_not_hold_the_process_at_exit(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASKFLOW_HOME=str(tmp_path / "home"),
               DASKFLOW_SCHEDULER_ADDRESS="localhost:notaport")
    began = time.monotonic()
    out = subprocess.run([sys.executable, "script.py"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    took = time.monotonic() - began
    assert out.returncode == 1
    assert "BadSchedulerAddress: the scheduler address 'localhost:notaport' is not valid" in out.stderr, out.stderr
    assert "Exception ignored" not in out.stderr and "distributed/comm" not in out.stderr, out.stderr
    assert took < 15, took  # was 20 s more, waiting at exit for a half-made client
