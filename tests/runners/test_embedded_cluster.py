"""The embedded LocalCluster of flows without a task_runner: one per process, reused, closed at exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil


def _run(tmp_path, body: str, timeout: int = 300) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.getcwd(), DASKFLOW_HOME=str(tmp_path / "home"))
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=timeout)


def test_sequential_flows_reuse_one_embedded_cluster_closed_at_exit(tmp_path):
    proc = _run(tmp_path, """
        import json, os
        import dask.config
        from daskflow import flow, task

        @task
        def where(x):
            from distributed import get_worker
            w = get_worker()
            return [w.scheduler.address, os.getpid()]

        @flow
        def pipeline(n):
            return where.map(range(n)).result()

        if __name__ == "__main__":
            seen = [pipeline(4), pipeline(4), pipeline(4)]
            with dask.config.set({"daskflow.local-cluster.n-workers": 1}):  # a setting workers must see
                seen.append(pipeline(4))
            print(json.dumps(seen))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    schedulers = [{addr for addr, _ in flow_run} for flow_run in seen]
    assert all(len(s) == 1 for s in schedulers)
    assert schedulers[0] == schedulers[1] == schedulers[2], "sequential flows started clusters of their own"
    assert schedulers[3] != schedulers[0], "a flow after a settings change reused a cluster that does not see it"
    pids = {pid for flow_run in seen for _, pid in flow_run}
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in pids), "worker processes outlived the script"
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr[-3000:]


def test_fully_cached_rerun_of_a_two_step_pipeline_schedules_nothing(tmp_path):
    # the second step takes the first step's futures: a rerun answers both from the cache on
    # the client, starts no cluster and runs no body
    body = """
        import os, sys
        from daskflow import flow, task
        from daskflow.cache import INPUTS

        LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran")

        @task(cache_policy=INPUTS)
        def sq(x):
            with open(LOG, "a") as f:
                f.write("sq\\n")
            return x * x

        @task(cache_policy=INPUTS)
        def inc(x):
            with open(LOG, "a") as f:
                f.write("inc\\n")
            return x + 1

        @flow
        def pipeline(n):
            return sum(inc.map(sq.map(range(n))).result())

        if __name__ == "__main__":
            print(pipeline(200), "distributed" in sys.modules)
    """
    first = _run(tmp_path, body)
    assert first.stdout.split() == [str(sum(x * x + 1 for x in range(200))), "True"], first.stderr[-3000:]
    log = tmp_path / "ran"
    assert sorted(log.read_text().split()) == ["inc"] * 200 + ["sq"] * 200
    log.unlink()
    rerun = _run(tmp_path, body)
    assert rerun.stdout.split() == [str(sum(x * x + 1 for x in range(200))), "False"], rerun.stderr[-3000:]
    assert not log.exists(), "a fully cached rerun ran bodies"
