"""``GET /metrics``: the run store's counters in the Prometheus text format, as ``runs ls`` counts them."""

from __future__ import annotations

import collections

from prometheus_client.parser import text_string_to_metric_families
from ui_procs import get, start_ui, stop_ui

from daskflow import flow, task
from daskflow.cache import INPUTS
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.runners.dask import DaskTaskRunner, dashboard_page


def samples(body: bytes) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a metrics page."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_counts_equal_runs_ls(ui, cli_json):
    status, headers, body = get(ui.base + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    got = samples(body)
    assert got[("daskflow_store_up", ())] == 1
    rows = cli_json("runs", "ls", "--limit", "100000")
    want = collections.Counter((r["task_name"], r["state"]) for r in rows)
    counted = {(dict(labels)["task"], dict(labels)["state"]): v for (name, labels), v in got.items()
               if name == "daskflow_task_runs_total"}
    assert counted == dict(want)
    retries = collections.Counter()
    for r in rows:
        retries[r["task_name"]] += max(r["run_count"] - 1, 0)
    assert got[("daskflow_task_run_retries_total", (("task", "load"),))] == retries["load"] == 1
    ran = sum(1 for r in rows if r["task_name"] == "load" and r["run_count"])
    assert got[("daskflow_task_run_duration_seconds_count", (("task", "load"),))] == ran
    assert got[("daskflow_task_runs_in_flight", (("task", "load"),))] == 0
    assert got[("daskflow_store_size_bytes", (("store", "runs"),))] > 0


def test_metrics_of_a_missing_or_damaged_store_say_store_up_0(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    server = start_ui(home)
    try:
        status, _, body = get(server.base + "/metrics")
        assert status == 200 and samples(body)[("daskflow_store_up", ())] == 0
        (home / "runs").mkdir(mode=0o700)
        (home / "runs" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
        status, _, body = get(server.base + "/metrics")
        assert status == 200 and samples(body)[("daskflow_store_up", ())] == 0
        assert b"Traceback" not in body
    finally:
        stop_ui(server)


@task(cache_policy=INPUTS)
def cached_double(x):
    return 2 * x


def test_scheduler_metrics_page_holds_daskflow_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "home"))

    @flow(name="scraped", task_runner=ThreadPoolTaskRunner(2))
    def doubles():
        return cached_double.map(range(4)).result()

    assert doubles() == doubles() == [0, 2, 4, 6]  # the second run is answered by the cache
    assert tracker.flush()
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": False, "protocol": "tcp"})
    try:
        assert runner.client is not None
        page = dashboard_page(runner.cluster.dashboard_link)
        for url in (page + "metrics", page.split("/daskflow/")[0] + "/metrics"):  # ours alone, and Dask's page
            status, _, body = get(url)
            got = samples(body)
            assert status == 200 and got[("daskflow_store_up", ())] == 1, url
            assert got[("daskflow_cache_hits_total", (("task", "cached_double"),))] == 4
            assert got[("daskflow_cache_misses_total", (("task", "cached_double"),))] == 4
            assert got[("daskflow_task_runs_total", (("state", "Cached"), ("task", "cached_double")))] == 4
    finally:
        runner.shutdown()


def test_api_run_and_metrics_show_resources(ui, etl_id, cli_json):
    from ui_procs import get_json

    rows = [r for r in cli_json("runs", "ls", "--limit", "1000") if r["task_name"] == "load"]
    slow = next(r for r in rows if r["name"] == "load-2")  # sleeps 20 ms: measured alone
    run = get_json(ui.base + f"/api/runs/{slow['id']}")
    assert run["resources"]["resolution"] == "run" and run["resources"]["wall_seconds"] >= 0.02
    assert run["resources"] == cli_json("runs", "show", slow["id"])["resources"]
    metrics = {m["task"]: m for m in get_json(ui.base + f"/api/metrics?flow_run={etl_id}")}
    assert metrics["load"]["cpu_max"] is not None and metrics["load"]["mem_max"] is not None


def test_a_store_not_yet_counted_is_up_and_says_so(tmp_path):
    from daskflow.store.runs import open_run_store
    from daskflow.ui.metrics import render

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = open_run_store(str(home))
    store.env.write(lambda txn: txn.put(b"k", b"v", db=store.dbs["flows"]))  # written, but never by the tracker
    got = samples(render(str(home)))
    assert got[("daskflow_store_up", ())] == 1 and got[("daskflow_store_counted", ())] == 0
    assert not any(name == "daskflow_task_runs_total" for name, _ in got)


def test_background_queue_depth_and_oldest_age(tmp_path):
    import time

    from daskflow.background.store import open_store, seal_entry
    from daskflow.store.runs import open_run_store
    from daskflow.ui.metrics import render

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    open_run_store(str(home))
    env = open_store(home / "background")
    now = time.time()
    entries = {f"run-{i}".encode(): seal_entry(env, {"id": f"run-{i}", "submitted": now - age})
               for i, age in enumerate((100.0, 10.0, 1.0))}
    env.write(lambda txn: [txn.put(k, v, db=env.db("queue")) for k, v in entries.items()])
    got = samples(render(str(home)))
    assert got[("daskflow_background_queue_depth", ())] == 3
    assert 100 <= got[("daskflow_background_oldest_queued_age_seconds", ())] < 200
