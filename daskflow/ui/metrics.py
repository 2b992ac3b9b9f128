"""``GET /metrics``: the run store's counters in the Prometheus text format.

A custom ``prometheus_client`` collector reads, on each scrape, what the run store's
writer keeps up to date (``daskflow.store.metrics``): a few keys per task, so a scrape
of a store of 10^6 runs costs what its tasks are, not its runs. It adds the background
queue (depth, and the age of its oldest run) and the size of each store on disk.

Served by ``daskflow ui`` at ``/metrics`` and, on the Dask scheduler of the clusters
daskflow starts, both at ``/daskflow/metrics`` and inside Dask's own ``/metrics``
(the collector is registered in ``prometheus_client``'s default registry, which that
page renders). A missing or damaged store is not an error page: the scrape answers
``daskflow_store_up 0``, so an alert can fire on it.

Metric names (all ``daskflow_``): ``store_up``, ``store_counted``, ``task_runs_total{task,state}``,
``task_runs_in_flight{task}``, ``task_run_retries_total{task}``,
``cache_hits_total{task}``, ``cache_misses_total{task}``,
``task_run_duration_seconds{task}`` (histogram), ``task_run_cpu_seconds_total{task}``,
``background_queue_depth``, ``background_oldest_queued_age_seconds``,
``store_size_bytes{store}``, ``store_entries{store,db}``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any, Iterator

from daskflow import config

__all__ = ["MetricsCollector", "render", "register_default"]

logger = logging.getLogger("daskflow")
QUEUE_SCAN = 10_000  # queued runs read for the oldest one's age (the queue is keyed by run id, not time)


class MetricsCollector:
    """The daskflow metrics of the store under ``home`` (None: the configured home)."""

    def __init__(self, home: str | None = None, readonly: bool = True) -> None:
        self.home = home
        self.readonly = readonly

    def describe(self) -> list:
        return []  # no fixed set: the task labels come from the store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("daskflow_store_up", "1 when the run store could be read, else 0")
        try:
            families = list(self._families())
        except Exception as exc:  # missing or damaged: say so as a metric, never an error page
            logger.debug("daskflow: /metrics could not read the run store: %s", exc)
            up.add_metric([], 0)
            yield up
            yield from self._sizes()
            return
        up.add_metric([], 1)
        yield up
        yield from families
        yield from self._sizes()
        yield from self._queue()

    def _root(self) -> pathlib.Path:
        return pathlib.Path(self.home or config.home_path()).expanduser()

    def _families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from daskflow.store.metrics import BUCKETS
        from daskflow.store.runs import open_run_store

        store = open_run_store(self.home, create=False, readonly=self.readonly)
        counters = store.counters()
        counted = GaugeMetricFamily("daskflow_store_counted", "1 when the run store's writer keeps the run "
                                    "counters; 0 before a flow of this version wrote the store (or since this "
                                    "process opened it)")
        yield _scalar(counted, 0 if counters is None else 1)
        if counters is None:
            yield from self._entries(store)
            return
        runs = CounterMetricFamily("daskflow_task_runs", "Task runs that reached a final state, by task and state",
                                   labels=["task", "state"])
        for (task, state), value in sorted(counters.by_kind("runs").items()):
            runs.add_metric([task, state], value)
        yield runs
        flight = dict.fromkeys(((task, "") for task, _ in counters.by_kind("runs")), 0.0)
        flight.update(counters.by_kind("flight"))  # every task known, 0 when none is in flight
        yield _per_task(GaugeMetricFamily("daskflow_task_runs_in_flight", "Task runs recorded and not final yet",
                                          labels=["task"]), flight)
        yield _per_task(CounterMetricFamily("daskflow_task_run_retries", "Retries: attempts beyond a run's first",
                                            labels=["task"]), counters.by_kind("retries"))
        yield _per_task(CounterMetricFamily("daskflow_cache_hits", "Runs of caching tasks answered by the cache",
                                            labels=["task"]), counters.by_kind("hits"))
        yield _per_task(CounterMetricFamily("daskflow_cache_misses", "Runs of caching tasks that ran (a miss)",
                                            labels=["task"]), counters.by_kind("misses"))
        yield _per_task(CounterMetricFamily("daskflow_task_run_cpu_seconds", "CPU seconds spent by task runs",
                                            labels=["task"]), counters.by_kind("cpu_sum"))
        hist = HistogramMetricFamily("daskflow_task_run_duration_seconds", "How long task runs that ran took",
                                     labels=["task"])
        sums = counters.by_kind("dur_sum")
        per_task: dict[str, list[float]] = {}
        for (task, label), value in counters.by_kind("dur").items():
            per_task.setdefault(task, [0.0] * len(BUCKETS))[int(label)] = value
        for task, counts in sorted(per_task.items()):
            cumulative, total = [], 0.0
            for bound, count in zip(BUCKETS, counts):
                total += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
            hist.add_metric([task], cumulative, sums.get((task, ""), 0.0))
        yield hist
        yield from self._entries(store)

    def _entries(self, store: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        entries = GaugeMetricFamily("daskflow_store_entries", "Records in a store database (chunks of runs, ...)",
                                    labels=["store", "db"])
        for name in ("chunks", "flows", "logs", "artifacts"):
            if name in store.dbs:
                entries.add_metric(["runs", name], store.env.stat(name)["entries"])
        yield entries

    def _sizes(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        sizes = GaugeMetricFamily("daskflow_store_size_bytes", "Size of a store's LMDB data file",
                                  labels=["store"])
        for name in ("runs", "cache", "background"):
            try:
                sizes.add_metric([name], os.stat(self._root() / name / "data.mdb").st_size)
            except OSError:
                continue
        yield sizes

    def _queue(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        depth, oldest = background_queue(self._root(), self.readonly)
        if depth is None:
            return
        yield _scalar(GaugeMetricFamily("daskflow_background_queue_depth", "Background runs queued, not final"),
                      depth)
        yield _scalar(GaugeMetricFamily("daskflow_background_oldest_queued_age_seconds",
                                        f"Age of the oldest queued background run (of the first {QUEUE_SCAN} "
                                        "read)"), time.time() - oldest if oldest else 0.0)


def background_queue(root: pathlib.Path, readonly: bool) -> tuple[int | None, float | None]:
    """(queued runs, submission time of the oldest of the first ``QUEUE_SCAN``), or (None, None)
    when this home has no background store (or it cannot be read)."""
    if not (root / "background" / "data.mdb").exists():
        return None, None
    from daskflow import _lmdb
    from daskflow.background.store import DBS, unpack
    from daskflow.cache import serialization as ser

    try:
        env = _lmdb.open_env(root / "background", dbs=DBS, readonly=readonly)
        secret = ser.load_secret(root) if (root / "secret.key").exists() else None  # a reader makes no key
    except Exception:  # noqa: BLE001 - a damaged background store shows as no queue metrics
        logger.debug("daskflow: /metrics could not open the background store", exc_info=True)
        return None, None
    db = env.db("queue")

    def read(txn: Any) -> tuple[int, float | None]:
        oldest = None
        for seen, (_, raw) in enumerate(txn.cursor(db=db)):
            if seen >= QUEUE_SCAN or secret is None:
                break
            try:
                submitted = unpack(ser.verify(secret, raw)).get("submitted")
            except Exception:  # noqa: BLE001 - an entry refused elsewhere is not counted as old
                continue
            if submitted and (oldest is None or submitted < oldest):
                oldest = submitted
        return txn.stat(db)["entries"], oldest

    return env.read(read)


def _per_task(family: Any, values: dict[tuple[str, str], float]) -> Any:
    for (task, _), value in sorted(values.items()):
        family.add_metric([task], value)
    return family


def _scalar(family: Any, value: float) -> Any:
    family.add_metric([], value)
    return family


def render(home: str | None = None, readonly: bool = True) -> bytes:
    """The metrics page (Prometheus text format) of the store under ``home``."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(home, readonly))
    return generate_latest(registry)


_registered: list[MetricsCollector] = []


def register_default(home: str | None = None, readonly: bool = False) -> None:
    """Add daskflow's metrics to ``prometheus_client``'s default registry, once per process
    (the registry Dask's scheduler page ``/metrics`` renders)."""
    if _registered:
        return
    try:
        from prometheus_client import REGISTRY
    except ImportError:  # without prometheus-client Dask serves no /metrics either
        return
    collector = MetricsCollector(home, readonly)
    REGISTRY.register(collector)
    _registered.append(collector)
