"""Failed runs keep a short repr of their inputs (redactable); the CLI shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from daskflow import flow, task, unmapped
from daskflow.engine.core.input_reprs import MAX_REPR, REDACTED
from daskflow.engine.tracking import tracker
from daskflow.store.runs import open_run_store


@task(redact_inputs=["token"])
def load(row, token, note="-"):
    if row["id"] % 100 == 13:
        raise ValueError(f"bad row {row['id']}")
    return row["id"]


@task(redact_inputs=True, retries=1)
def secretive(x, password):
    raise KeyError(x)


_made: list = []  # the futures a test's flow made (not a flow parameter: those are recorded)


def _failed(flow_fn, *args):
    futs = _made
    futs.clear()
    flow_fn(*args)
    assert tracker.flush()
    store = open_run_store()
    return store, [store.task_run(f.task_run_id) for f in futs if f.state.is_failed()], futs


def test_a_failed_run_keeps_its_inputs_bounded_and_redacted(runner):
    @flow(task_runner=runner)
    def etl(n):
        futs = load.map([{"id": i, "blob": "x" * 1000} for i in range(n)], unmapped("s3cr3t"), note="n" * 500)
        futs.wait()
        _made.extend(futs)

    store, failed, futs = _failed(etl, 300)
    assert sorted(r["name"] for r in failed) == ["load-113", "load-13", "load-213"]
    inputs = failed[0]["inputs"]
    assert set(inputs) == {"row", "token", "note"}
    assert inputs["token"] == REDACTED and "s3cr3t" not in json.dumps(failed)
    assert inputs["row"].endswith("'id': 13}") and "xxxx..." in inputs["row"]
    assert all(len(text) <= MAX_REPR for text in inputs.values()), inputs
    assert store.task_run(futs[0].task_run_id)["inputs"] is None  # completed runs keep nothing


def test_redact_inputs_true_keeps_only_the_names(runner):
    @flow(task_runner=runner)
    def f():
        fut = secretive.submit(7, "hunter2")
        fut.wait()
        _made.append(fut)

    _, failed, _ = _failed(f)
    assert failed[0]["inputs"] == {"x": REDACTED, "password": REDACTED}


def test_redact_inputs_naming_no_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match=r"task 'oops': redact_inputs names \['passwd'\]"):
        @task(redact_inputs=["passwd"])
        def oops(password):
            return password


def test_runs_show_prints_the_inputs_of_a_failed_run(runner):
    @flow(task_runner=runner)
    def etl():
        futs = load.map([{"id": 13}], unmapped("tok"))
        futs.wait()
        _made.extend(futs)

    _, failed, futs = _failed(etl)
    code = "import sys; from daskflow.cli import main; main(sys.argv[1:])"
    out = subprocess.run([sys.executable, "-c", code, "runs", "show", futs[0].task_run_id], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.getcwd(), COLUMNS="200"))
    assert out.returncode == 0, out.stderr
    assert "inputs:" in out.stdout and "row = {'id': 13}" in out.stdout and "token = <redacted>" in out.stdout
    as_json = subprocess.run([sys.executable, "-c", code, "runs", "show", futs[0].task_run_id, "-o", "json"],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert json.loads(as_json.stdout)["inputs"] == {"row": "{'id': 13}", "token": REDACTED, "note": "'-'"}
