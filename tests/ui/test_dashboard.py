"""The daskflow pages on the Dask dashboard of a cluster daskflow starts (no bokeh needed)."""

from __future__ import annotations

import json

from ui_procs import get

from daskflow import flow, task
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.runners.dask import DaskTaskRunner, dashboard_page


@task
def double(x):
    return 2 * x


def test_embedded_cluster_serves_the_daskflow_pages():
    @flow(name="on-the-dashboard", task_runner=ThreadPoolTaskRunner(2))
    def doubles():
        return double.map(range(3)).result()

    assert doubles() == [0, 2, 4]
    assert tracker.flush()
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": False, "protocol": "tcp"})
    try:
        assert runner.client is not None  # starts the embedded cluster
        page = dashboard_page(runner.cluster.dashboard_link)
        assert page.endswith("/daskflow/")
        status, _, body = get(page)
        assert status == 200 and b'content="/daskflow"' in body
        status, _, body = get(page + "api/flow-runs")
        assert status == 200 and [f["name"] for f in json.loads(body)] == ["on-the-dashboard"]
        status, _, body = get(page + "api/runs")
        assert sorted(r["name"] for r in json.loads(body)) == ["double-0", "double-1", "double-2"]
        assert get(page + "api/flow-runs", method="POST")[0] == 405
    finally:
        runner.shutdown()


def test_server_start_serves_the_daskflow_pages_on_its_dashboard(tmp_path):
    from background_procs import Proc, env_for

    home = tmp_path / "home"
    proc = Proc(["server", "start", "--port", "0", "--dashboard-address", "127.0.0.1:0"], env_for(home),
                tmp_path / "server.log")
    try:
        page = proc.expect("  daskflow runs: ").split()[-1]
        assert page.startswith("http://127.0.0.1:") and page.endswith("/daskflow/")
        assert get(page + "api/flow-runs")[0] == 200
        assert get(page + "runs")[0] == 200
    finally:
        assert proc.stop() == 0
