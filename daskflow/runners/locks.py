"""``DaskLockManager``: locks with leases kept by a Dask scheduler, for every host of its cluster.

The lease table lives on the scheduler (one dict, in ``scheduler.extensions``); every
operation is one ``run_on_scheduler`` call, so it runs on the scheduler's event loop and
is atomic. The holder's process renews its leases in the background
(``daskflow.leases.RENEWER``); a holder that dies, with its host or its connection,
stops renewing, and its lock is free when the lease runs out (``lease_seconds``, default
30 s). The same works against the daskflow server, which is a Dask scheduler.

From a run on a worker the worker's own client is used; elsewhere the shared client of
``address`` (default: ``DASKFLOW_SCHEDULER_ADDRESS``).

Example:
    >>> from daskflow.cache import INPUTS
    >>> policy = INPUTS.configure(isolation_level="SERIALIZABLE", lock_manager=DaskLockManager())  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

from daskflow import config
from daskflow.leases import DEFAULT_LEASE_SECONDS, LockManager

__all__ = ["DaskLockManager", "lease_op"]

_TABLE = "daskflow-leases"


class DaskLockManager(LockManager):
    """Locks kept by the Dask scheduler at ``address`` (None: the worker's own, or the configured one).

    Args:
        address: the scheduler; None: the one of the worker the run executes on, else
            ``DASKFLOW_SCHEDULER_ADDRESS``.
        lease_seconds: how long a lock outlives a holder that stopped renewing it.
    """

    def __init__(self, address: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"DaskLockManager: lease_seconds must be > 0, got {lease_seconds!r}")
        self.address = address
        self.lease_seconds = float(lease_seconds)

    def __repr__(self) -> str:
        return f"DaskLockManager(address={self.address!r}, lease_seconds={self.lease_seconds:g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DaskLockManager) and (self.address, self.lease_seconds) == (
            other.address, other.lease_seconds)

    def __hash__(self) -> int:
        return hash((DaskLockManager, self.address, self.lease_seconds))

    def _call(self, op: str, **kwargs: Any) -> Any:
        return self._client().run_on_scheduler(lease_op, op, **kwargs)

    def _client(self) -> Any:
        from daskflow.runners.clients import shared_client
        from daskflow.runners.dask import worker_address

        if worker_address() is not None:  # a worker process (its task threads and the renewer's)
            from distributed import get_client, get_worker

            if self.address is None or get_worker().scheduler.address == self.address:
                return get_client()
        address = self.address or config.get("scheduler-address")
        if not address:
            raise RuntimeError("DaskLockManager: no scheduler to keep the locks; pass address=, or set "
                               "DASKFLOW_SCHEDULER_ADDRESS (a `daskflow server start` or `dask scheduler`)")
        return shared_client(address)

    def try_acquire(self, key: str, holder: str, lease: float) -> bool:
        return self._call("take", key=key, holder=holder, lease=lease)

    def release_lock(self, key: str, holder: str) -> None:
        self._call("free", key=key, holder=holder)

    def renew(self, key: str, holder: str, lease: float) -> bool:
        return self._call("renew", key=key, holder=holder, lease=lease)

    def lock_holder(self, key: str) -> str | None:
        return self._call("holder", key=key)

    def note_waiting(self, key: str, delta: int) -> None:
        self._call("wait", key=key, delta=delta)

    def waiters(self, key: str | None = None) -> int:
        return self._call("waiters", key=key)


def lease_op(op: str, dask_scheduler: Any = None, key: str | None = None, holder: str | None = None,
             lease: float = 0.0, delta: int = 0) -> Any:
    """One lease-table operation, on the scheduler's event loop (atomic there)."""
    table = dask_scheduler.extensions.setdefault(_TABLE, {"locks": {}, "waiting": {}})
    locks, waiting = table["locks"], table["waiting"]
    now = time.monotonic()
    current = locks.get(key)
    if current is not None and current[1] < now:  # (holder, expires): an expired lease is free
        del locks[key]
        current = None
    if op == "take":
        if current is not None and current[0] != holder:
            return False
        locks[key] = (holder, now + lease)
        return True
    if op == "renew":
        if current is None or current[0] != holder:
            return False
        locks[key] = (holder, now + lease)
        return True
    if op == "free":
        if current is not None and current[0] == holder:
            del locks[key]
        return None
    if op == "holder":
        return None if current is None else current[0]
    if op == "wait":
        n = waiting.get(key, 0) + delta
        if n > 0:
            waiting[key] = n
        else:
            waiting.pop(key, None)
        return None
    if op == "waiters":
        return sum(n for k, n in waiting.items() if key is None or k == key)
    raise ValueError(f"unknown lease operation {op!r}")
