"""The daskflow UI on a Dask dashboard: ``routes`` for distributed's scheduler HTTP server.

distributed serves the ``routes`` of every module named in its config key
``distributed.scheduler.http.routes`` (``distributed.http.utils.get_handlers``). The
clusters daskflow starts (the embedded ``LocalCluster`` of ``DaskTaskRunner`` and
``daskflow server start``) add the modules of ``daskflow.dashboard.routes`` (this one)
to that key, by name: neither the runner nor the engine imports the UI. The pages are
then at ``daskflow.dashboard.page`` (``/daskflow/``) of the dashboard's address, even
without bokeh (Dask's own pages need it), and as open as the dashboard itself: no token.
daskflow's Prometheus metrics are on Dask's ``/metrics`` too (``ui/metrics.py``).

Any scheduler can serve them: ``dask scheduler`` with
``DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES='[..., "daskflow.ui.dashboard"]'``.
The store is opened without creating it, and writable when this process writes it
anyway (a scheduler in the process that runs the flows).
"""

from __future__ import annotations

from daskflow import config
from daskflow.ui.app import UiOptions
from daskflow.ui.app import routes as ui_routes
from daskflow.ui.metrics import register_default

__all__ = ["routes"]

# Dask's own ``/metrics`` page renders prometheus_client's default registry: daskflow's
# metrics join it there (and are at ``/daskflow/metrics`` alone).
register_default()
routes = ui_routes(UiOptions(prefix=config.get("dashboard.page") or "/daskflow/", local_only=False, readonly=False))
