"""``daskflow server start`` and ``daskflow worker``: the background-runs processes.

Both import distributed only when they run. ``server start`` runs a Dask scheduler
with daskflow's ``BackgroundPlugin`` until SIGTERM or Ctrl-C (the plugin flushes its
store on the way out); ``worker`` imports the named tasks first, so a bad
``module:task`` is an error at start, then serves them (``daskflow.background.worker``).
"""

from __future__ import annotations

import click

from daskflow import config


@click.group("server")
def server() -> None:
    """The daskflow server: a Dask scheduler that queues and records background runs."""


@server.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every one).")
@click.option("--port", default=8786, show_default=True, type=int, help="Scheduler port (0: any free port).")
@click.option("--dashboard-address", default=None, help="Serve the Dask dashboard here (e.g. 127.0.0.1:8787).")
def start(host: str, port: int, dashboard_address: str | None) -> None:
    """Run the server until SIGTERM / Ctrl-C.

    Example: daskflow server start --port 8786, then
    export DASKFLOW_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786
    """
    import asyncio

    asyncio.run(_serve(host, port, dashboard_address))


async def _serve(host: str, port: int, dashboard_address: str | None) -> None:
    import asyncio
    import signal

    from distributed import Scheduler

    from daskflow.background import store
    from daskflow.background.plugin import BackgroundPlugin

    import dask.config

    from daskflow.runners.dask import dashboard_page, scheduler_routes

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with dask.config.set({"distributed.scheduler.http.routes": scheduler_routes()}):  # the daskflow UI too
        scheduler = Scheduler(host=host, port=port, dashboard=bool(dashboard_address),
                              dashboard_address=dashboard_address or f"{host}:0", plugins=[BackgroundPlugin()])
    await scheduler
    click.echo(f"daskflow server at {scheduler.address} (store {store.path()})")
    click.echo(f"  export DASKFLOW_SCHEDULER_ADDRESS={scheduler.address}", err=False)
    if dashboard_address:
        from distributed.utils import format_dashboard_link

        link = format_dashboard_link(dashboard_address.rsplit(":", 1)[0] or host, scheduler.http_server.port)
        if _has_bokeh():
            click.echo(f"  dashboard: {link}")
        else:  # without bokeh Dask's pages answer 404s: no link that leads nowhere
            click.echo("  dashboard: not available: bokeh is not installed (pip install bokeh)")
        page = dashboard_page(link)
        if page:  # served by the scheduler's HTTP server, with or without bokeh
            click.echo(f"  daskflow runs: {page}")
    finished = asyncio.ensure_future(scheduler.finished())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([finished, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    await scheduler.close(reason="daskflow server stopped")
    click.echo("daskflow server stopped")


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


@click.command("worker")
@click.argument("targets", nargs=-1, required=True)
@click.option("--nthreads", "--limit", "nthreads", default=None, type=click.IntRange(min=1),
              help="Runs at once (default: one per core).")
@click.option("--scheduler", default=None, help="Server address (default: DASKFLOW_SCHEDULER_ADDRESS).")
@click.option("--host", default=None, help="Interface the worker listens on.")
def worker(targets: tuple[str, ...], nthreads: int | None, scheduler: str | None, host: str | None) -> None:
    """Serve background runs of TARGETS (module:task ...) until SIGTERM / Ctrl-C.

    Example: daskflow worker myapp.tasks:send_email myapp.tasks:resize --nthreads 4
    """
    from daskflow.background.worker import load_target, serve

    tasks = []
    for spec in targets:
        try:
            tasks.append(load_target(spec))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TARGETS") from None
    address = scheduler or config.get("scheduler-address")
    if not address:
        raise click.UsageError("no server address: pass --scheduler or set DASKFLOW_SCHEDULER_ADDRESS "
                               "(start a server with `daskflow server start`)")
    serve(*tasks, limit=nthreads, scheduler=address, host=host)


COMMANDS: list[click.Command] = [server, worker]
