"""Artifacts as Prefect's create_*_artifact: published by runs anywhere, stored with the run, versioned by key."""

from __future__ import annotations

import pytest

from daskflow import create_link_artifact, create_markdown_artifact, create_table_artifact, flow, task
from daskflow.engine.tracking import tracker
from daskflow.store import artifacts as stored
from daskflow.store.runs import open_run_store


@task
def report(x):
    create_markdown_artifact(f"# item {x}", key="item-report", description=f"item {x}")
    return x


def test_artifacts_of_runs_on_every_runner_are_stored_with_their_runs(runner):
    @flow(task_runner=runner)
    def f():
        create_table_artifact({"n": [1, 2], "sq": [1, 4]}, key="squares")
        futures = report.map([1, 2, 3])
        futures.wait()
        return [fut.task_run_id for fut in futures]

    run_ids = f()
    assert tracker.flush()
    store = open_run_store()
    for x, run_id in zip([1, 2, 3], run_ids):
        (art,) = stored.artifacts_of_run(store, run_id)
        assert (art["key"], art["type"], art["data"], art["description"]) == ("item-report", "markdown",
                                                                             f"# item {x}", f"item {x}")
    versions = stored.artifact_versions(store, "item-report")
    assert sorted(v["data"] for v in versions) == ["# item 1", "# item 2", "# item 3"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    flow_arts = stored.artifacts_of_flow_run(store, versions[0]["flow_run_id"])
    assert {a["key"] for a in flow_arts} == {"squares", "item-report"} and len(flow_arts) == 4


def test_artifacts_from_workers_travel_in_the_chunk_envelope(dask_runner):
    """No round trip per artifact: a chunk's artifacts come back with its envelope (or its log batches)."""

    @flow(task_runner=dask_runner)
    def f():
        futures = report.map(range(20), chunksize=20)
        futures.wait()
        return futures.chunks

    (chunk,) = f()
    shipped = [row for row in chunk.result.logs or () if row[5] == stored.ARTIFACTS_LOGGER]
    assert len(shipped) == 20


def test_artifacts_in_direct_calls_and_outside_runs():
    link_id = create_link_artifact("https://example.com/x", "x", key="outside")
    report(7)
    assert tracker.flush()
    store = open_run_store()
    (outside,) = stored.artifact_versions(store, "outside")
    assert outside["id"] == link_id and outside["task_run_id"] is None
    assert outside["data"] == {"link": "https://example.com/x", "link_text": "x"}
    assert stored.latest_artifacts(store)[0]["key"] == "item-report"


@pytest.mark.parametrize("call, error, words", [
    (lambda: create_markdown_artifact("x", key="Bad Key"), ValueError, "Artifact key must only contain lowercase"),
    (lambda: create_markdown_artifact(3), TypeError, "markdown=...) must be a str"),
    (lambda: create_table_artifact("rows"), TypeError, "must be a list of dicts"),
    (lambda: create_link_artifact("https://x", description=3), TypeError, "description=...) must be a str"),
])
def test_bad_artifacts_are_clear_errors(call, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        call()


def test_table_values_json_cannot_hold_are_kept_as_text():
    import datetime

    @task
    def t():
        create_table_artifact([{"when": datetime.date(2026, 1, 2), "x": float("nan")}], key="odd")

    t()
    assert tracker.flush()
    (art,) = stored.artifact_versions(open_run_store(), "odd")
    assert art["data"] == [{"when": "2026-01-02", "x": None}]
