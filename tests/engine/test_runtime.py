"""daskflow.runtime tells task code which run it belongs to, as prefect.runtime does."""

import pytest

from daskflow import flow, task
from daskflow.runtime import flow_run, task_run


@task
def whoami(x, scale=1):
    return {"task_run_id": task_run.id, "task_run_name": task_run.name, "task_name": task_run.task_name,
            "run_count": task_run.run_count, "parameters": task_run.parameters,
            "flow_run_id": flow_run.id, "flow_run_name": flow_run.name, "flow_name": flow_run.flow_name,
            "flow_parameters": flow_run.parameters}


def test_runtime_outside_any_run_is_empty():
    assert (task_run.id, task_run.name, task_run.run_count, task_run.parameters) == (None, None, 0, {})
    assert (flow_run.id, flow_run.name, flow_run.parameters) == (None, None, {})
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        task_run.nope  # noqa: B018


def test_runtime_in_a_direct_call_outside_a_flow():
    got = whoami(3)
    assert got["task_run_id"] and got["task_run_name"].startswith("whoami-") and got["task_name"] == "whoami"
    assert got["parameters"] == {"x": 3, "scale": 1} and got["run_count"] == 1
    assert got["flow_run_id"] is None and got["flow_parameters"] == {}


def test_runtime_in_submit_and_map_on_every_runner(runner):
    @flow(task_runner=runner, flow_run_name="nightly-{day}")
    def pipeline(day):
        direct = whoami(0)
        one = whoami.submit(1, scale=2)
        many = whoami.map([10, 20, 30])
        return direct, one.result(), many.result(), one.task_run_id, [f.task_run_id for f in many]

    direct, one, many, one_id, many_ids = pipeline("mon")
    for got in (direct, one, *many):
        assert got["flow_run_name"] == "nightly-mon" and got["flow_name"] == "pipeline"
        assert got["flow_parameters"] == {"day": "mon"} and got["flow_run_id"] == direct["flow_run_id"]
    assert one["task_run_id"] == one_id and one["parameters"] == {"x": 1, "scale": 2}
    assert [g["task_run_id"] for g in many] == many_ids
    assert [g["parameters"] for g in many] == [{"x": x, "scale": 1} for x in (10, 20, 30)]


def test_runtime_parameters_of_runs_fed_by_futures(runner):
    @task
    def double(x):
        return 2 * x

    @task
    def params(x, y):
        return task_run.parameters

    @flow(task_runner=runner)
    def f():
        ups = double.map([1, 2])
        return params.map(ups, y=double.submit(5)).result()

    assert f() == [{"x": 2, "y": 10}, {"x": 4, "y": 10}]


def test_runtime_run_count_counts_retries(tmp_path):
    @task(retries=2)
    def flaky():
        if task_run.run_count < 3:
            raise ValueError("again")
        return task_run.run_count

    assert flaky() == 3


def test_runtime_flow_run_count_and_names_set_after_decoration():
    attempts = []

    @flow(retries=1)
    def f():
        attempts.append(flow_run.run_count)
        if len(attempts) == 1:
            raise ValueError("first")
        return flow_run.name

    f.flow_run_name = "renamed"
    assert f() == "renamed" and attempts == [1, 2]


def test_runtime_large_flow_parameters_are_a_clear_error_on_workers(dask_runner):
    @task
    def read():
        return flow_run.parameters

    @flow(task_runner=dask_runner)
    def f(blob):
        return read.submit().result()

    with pytest.raises(RuntimeError, match="larger than 64 KB"):
        f(b"x" * 100_000)
