"""A run store made by real flows, for the UI tests and the README's screenshots.

``python tests/ui/make_store.py`` records, under ``$DASKFLOW_HOME``: a flow run ``etl``
whose ``load`` map has a run that fails after a retry, log records (a task's logger,
captured prints, a warning), artifacts (a markdown report of the flow, twice: two versions
of key ``etl-report``; a table from ``total``; a link from ``load``), and a flow run
``broken`` that fails.
"""

from __future__ import annotations

import time

from daskflow import create_link_artifact, create_markdown_artifact, create_table_artifact, flow, get_run_logger, task
from daskflow.engine.tracking import tracker
from daskflow.runners import ThreadPoolTaskRunner


@task(retries=1)
def load(x: int) -> int:
    get_run_logger().info("loading item %s", x)
    time.sleep(0.01 * (x % 4))  # durations that differ, for the metrics table
    if x == 0:
        create_link_artifact("https://example.com/items/0", "item 0", key="first-item")
    if x == 3:
        raise ValueError(f"bad input {x}: not a number")
    return x * 10


@task
def total(values: list[int]) -> int:
    get_run_logger().warning("summing %d values", len(values))
    create_table_artifact([{"value": v} for v in values], key="etl-values", description="the values summed")
    return sum(values)


@flow(name="etl", task_runner=ThreadPoolTaskRunner(2), log_prints=True)
def etl(n: int) -> int:
    print(f"starting etl over {n} items")
    futures = load.map(range(n))
    futures.wait()
    create_markdown_artifact("# ETL\nstarted", key="etl-report")
    result = total([f.result() for f in futures if f.state.is_completed()])
    create_markdown_artifact(f"# ETL\ntotal **{result}**", key="etl-report", description="the summary")
    return result


@flow(name="broken", task_runner=ThreadPoolTaskRunner(2))
def broken() -> None:
    load(1)
    raise RuntimeError("the broken flow gave up")


def main() -> None:
    etl(8)
    try:
        broken()
    except RuntimeError:
        pass
    assert tracker.flush()


if __name__ == "__main__":
    main()
