"""Tracebacks show the user's file and line, without daskflow's frames; a script's task keys as its module's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dask.config
import pytest

from daskflow import flow, task
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.store.runs import open_run_store

HERE = os.path.abspath(__file__)


@task
def divide(x):
    return 1 / x  # the line the traceback must name


@flow(task_runner=ThreadPoolTaskRunner(2))
def divide_all(n):
    return divide.map(range(n)).result()


def _line_of(text: str) -> int:
    with open(HERE) as f:
        return next(i for i, line in enumerate(f, 1) if text in line)


def test_a_failed_runs_traceback_names_the_users_line_on_the_cluster_and_hides_daskflow(dask_runner):
    @flow(task_runner=dask_runner)
    def on_cluster(n):
        return divide.map(range(n)).wait()

    on_cluster(3)
    assert tracker.flush()
    store = open_run_store()
    rows = store.task_runs(state="Failed")
    assert len(rows) == 1
    row = store.task_run(rows[0]["id"])
    tb = row["traceback"]
    assert f'File "{HERE}", line {_line_of("the line the traceback must name")}, in divide' in tb, tb
    assert "<dynamic-code>" not in tb and "daskflow/engine" not in tb, tb


def test_an_uncaught_failure_shows_the_users_frames_only_unless_configured_full():
    with pytest.raises(ZeroDivisionError) as info:
        divide_all(2)
    frames = [str(e.path) for e in info.traceback]
    assert HERE in frames[-1]  # the body's line is the last
    assert sum("daskflow" in f and "tests" not in f for f in frames) <= 1, frames  # Flow.__call__'s re-raise
    with dask.config.set({"daskflow.tracebacks": "full"}):
        with pytest.raises(ZeroDivisionError) as info:
            divide_all(2)
    assert sum("daskflow" in str(e.path) and "tests" not in str(e.path) for e in info.traceback) > 3


SCRIPT = """
import globals_probe
from daskflow import flow, task

@task
def in_script(x):
    if x == 1:
        raise KeyError("script line")  # script-raise
    return x

@flow
def main():
    probe = globals_probe.shares_module_globals.submit().result()
    states = in_script.map(range(2), return_state=True)
    return probe, states

if __name__ == "__main__":
    import traceback
    probe, _ = main()
    print("PROBE", probe)
    print("KEY", in_script.task_key)
    try:
        in_script.map(range(2)).result()
    except KeyError as exc:
        print("".join(traceback.format_exception(exc)))
"""

MODULE = """
import sys
from daskflow import task

@task
def shares_module_globals():
    # by reference: the worker runs the module's own function, with the module's globals
    return globals() is sys.modules[__name__].__dict__
"""


def test_scripts_and_modules_on_the_embedded_cluster_keep_their_files(tmp_path):
    (tmp_path / "etl.py").write_text(SCRIPT)
    (tmp_path / "globals_probe.py").write_text(MODULE)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), DASK_DASKFLOW__LOCAL_CLUSTER__N_WORKERS="1",
               DASK_DASKFLOW__PROGRESS="false")
    out = subprocess.run([sys.executable, "etl.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "PROBE True" in out.stdout, out.stdout + out.stderr
    line = SCRIPT.splitlines().index('        raise KeyError("script line")  # script-raise') + 1
    assert f'File "{tmp_path / "etl.py"}", line {line}, in in_script' in out.stdout, out.stdout
    assert "<dynamic-code>" not in out.stdout
    assert out.stdout.count("daskflow/engine") == 1, out.stdout  # the line of .result() that raises
    # `python etl.py` keys its tasks as `import etl` does
    script_key = next(x.split()[1] for x in out.stdout.splitlines() if x.startswith("KEY "))
    imported = subprocess.run([sys.executable, "-c", "import json, etl; print(json.dumps(etl.in_script.task_key))"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(imported.stdout) == script_key, imported.stderr
