"""Clients of running schedulers: one per address per process, shared, closed quietly at exit.

A ``DaskTaskRunner`` with an address, the background client, limits and locks all reach a
scheduler through ``shared_client``, so a process pays one connection per scheduler.
"""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

from daskflow import config
from daskflow.exceptions import SchedulerUnreachable
from daskflow.runners.addresses import check_address

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["close_quietly", "close_shared_client", "close_shared_clients", "shared_client"]

_shared_clients: dict[str, Client] = {}
_shared_lock = threading.Lock()


def shared_client(address: str, client_kwargs: dict | None = None) -> Client:
    """One client per scheduler address per process, closed (quietly) at interpreter exit."""
    from distributed import Client

    check_address(address)
    with _shared_lock:
        client = _shared_clients.get(address)
        if client is None or client.status in ("closing", "closed"):
            kwargs = {"timeout": config.get("connect-timeout"), **(client_kwargs or {})}
            try:
                client = Client(address, set_as_default=False, **kwargs)
            except (OSError, TimeoutError) as exc:
                raise SchedulerUnreachable(
                    f"no Dask scheduler answered at {address} within {kwargs['timeout']} "
                    f"({type(exc).__name__}). Start one (`daskflow server start`, or `dask scheduler` and "
                    "`dask worker ADDRESS`), or point DASKFLOW_SCHEDULER_ADDRESS at a running one "
                    "(unset it to use an embedded LocalCluster)") from None
            _shared_clients[address] = client
        return client


def close_shared_client(address: str) -> None:
    """Close this process's shared client of ``address``, if there is one."""
    with _shared_lock:
        client = _shared_clients.pop(address, None)
    if client is not None:
        close_quietly(client)


@atexit.register
def close_shared_clients() -> None:
    """Close every shared client of this process (at exit; tests between clusters)."""
    with _shared_lock:
        clients = list(_shared_clients.values())
        _shared_clients.clear()
    for client in clients:
        close_quietly(client)


def close_quietly(client: Client) -> None:
    """Close a client without logging about a scheduler that is already gone.

    A client whose scheduler went away is reconnecting; closing it cancels that with
    an error log and a traceback that say nothing the user needs. (Closing shared
    clients once idle, from a timer thread, would also spare a long-lived process
    Dask's "Failed to reconnect" line after 30 s; tried, it broke a client being made
    at the same time, so shared clients live until exit.)
    """
    import logging

    loggers = [logging.getLogger(name) for name in ("distributed.client", "distributed.utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        client.close(timeout=2)
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
