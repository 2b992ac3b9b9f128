"""The README's screenshots of `daskflow ui`, taken with headless chromium.

    python benchmarks/ui_screenshots.py            # writes docs/img/ui-*.png

Records a demo in a fresh DASKFLOW_HOME (a flow whose map runs on a 2-worker
LocalCluster, with retries, a failure and logs), starts `daskflow ui` on it, and saves
one PNG per main page. Needs `chromium` on PATH (apt-get install chromium).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"

DEMO = r'''
import random, time
from daskflow import flow, get_run_logger, task
from daskflow.engine.tracking import tracker
from daskflow.runners import DaskTaskRunner

@task(retries=2)
def extract(day):
    time.sleep(random.uniform(0.02, 0.15) * (3 if day % 7 == 0 else 1))
    if day == 13:
        raise ValueError(f"day {day}: the source file is missing")
    get_run_logger().info("extracted day %d", day)
    return day

@task
def transform(day):
    time.sleep(0.01)
    return day * 2

@task(log_prints=True)
def load(values):
    print(f"loading {len(values)} rows")
    return sum(values)

@flow(name="daily-etl", task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2}))
def daily_etl(days: int = 40):
    get_run_logger().info("starting the daily ETL over %d days", days)
    days_ = extract.map(range(days), chunksize=1)
    days_.wait()
    done = [f.result() for f in days_ if f.state.is_completed()]
    return load(transform.map(done).result())

@flow(name="report")
def report():
    get_run_logger().info("report is up to date")

random.seed(3)
report()
daily_etl(40)
assert tracker.flush()
'''

PAGES = [("ui-flow-runs.png", "/"), ("ui-flow-run.png", "/flow-runs/{flow}"), ("ui-runs.png", "/runs"),
         ("ui-run.png", "/runs/{failed}")]


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs chromium on PATH (apt-get install -y chromium)")
    OUT.mkdir(parents=True, exist_ok=True)
    home = pathlib.Path(tempfile.mkdtemp(prefix="daskflow-shots-"))
    env = dict(os.environ, DASKFLOW_HOME=str(home), PYTHONPATH=str(ROOT), DASKFLOW_PROGRESS="false")
    subprocess.run([sys.executable, "-c", DEMO], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "daskflow", "ui", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        url = proc.stdout.readline().split()[3].rstrip("/")
        import json
        import urllib.request

        flows = json.load(urllib.request.urlopen(url + "/api/flow-runs"))
        flow_id = next(f["id"] for f in flows if f["name"] == "daily-etl")
        failed = json.load(urllib.request.urlopen(url + "/api/runs?state=Failed"))[0]["id"]
        for name, path in PAGES:
            target = OUT / name
            t0 = time.monotonic()
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--no-first-run", f"--user-data-dir={home / 'chromium'}", "--window-size=1280,900",
                            "--virtual-time-budget=5000", f"--screenshot={target}",
                            url + path.format(flow=flow_id, failed=failed)],
                           check=True, capture_output=True)
            print(f"{target.relative_to(ROOT)}  ({time.monotonic() - t0:.1f} s)")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
