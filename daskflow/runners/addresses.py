"""Scheduler addresses: one clear error for an address Dask cannot parse, before any client exists."""

from __future__ import annotations

import os

import dask.config

from daskflow.exceptions import BadSchedulerAddress

__all__ = ["check_address"]


def check_address(address: str) -> None:
    """Raise ``BadSchedulerAddress`` for an address Dask cannot parse, before any client exists.

    Given to ``Client``, such an address raised a bare ``ValueError`` from deep in Dask's
    comms, and the half-made client then held the process 20 s at exit.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)  # a host and a numeric port
        else:
            get_backend(scheme)  # inproc://, ucx://...: a scheme Dask knows
    except ValueError as exc:
        raise BadSchedulerAddress(
            f"the scheduler address {address!r} is not valid ({exc}); from {_address_source(address)}. Give it as "
            "tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786), or unset DASKFLOW_SCHEDULER_ADDRESS to use an "
            "embedded LocalCluster") from None


def _address_source(address: str) -> str:
    if os.environ.get("DASKFLOW_SCHEDULER_ADDRESS") == address:
        return "DASKFLOW_SCHEDULER_ADDRESS"
    if dask.config.get("daskflow.scheduler-address", None) == address:
        return "the daskflow.scheduler-address setting"
    return "the runner's address="
