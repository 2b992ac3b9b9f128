"""Leases: locks by name that a live holder keeps and a dead one loses (the ground of isolation).

``LockManager`` is the interface the engine takes locks through (Prefect's method names:
``acquire_lock``, ``release_lock``, ``is_locked``, ``is_lock_holder``, ``wait_for_lock``),
and ``RENEWER`` the one thread per process that renews the leases this process holds,
every third of the lease. Implementations: ``daskflow.cache.locks.FileLockManager`` (one
host, LMDB) and ``daskflow.runners.locks.DaskLockManager`` (a Dask scheduler). Ground
layer: both use it; it imports nothing of daskflow.
"""

from __future__ import annotations

import abc
import enum
import logging
import os
import socket
import threading
import time
from typing import Any, NamedTuple

__all__ = ["DEFAULT_LEASE_SECONDS", "IsolationLevel", "LockManager", "RENEWER", "holder_id", "isolation_of"]

logger = logging.getLogger("daskflow")

DEFAULT_LEASE_SECONDS = 30.0
_FIRST_POLL, _MAX_POLL = 0.02, 0.5


class IsolationLevel(enum.Enum):
    """As Prefect's: ``READ_COMMITTED`` (no lock) or ``SERIALIZABLE`` (one body at a time per key)."""

    READ_COMMITTED = "READ_COMMITTED"
    SERIALIZABLE = "SERIALIZABLE"


def isolation_of(value: Any, owner: str) -> IsolationLevel | None:
    """An isolation level given as the enum or its name (``"SERIALIZABLE"``), checked."""
    if value is None or isinstance(value, IsolationLevel):
        return value
    if isinstance(value, str) and value.upper() in IsolationLevel.__members__:
        return IsolationLevel[value.upper()]
    raise ValueError(f"{owner}: isolation_level must be an IsolationLevel (READ_COMMITTED, SERIALIZABLE) "
                     f"or its name, got {value!r}")


def holder_id(run: str | None = None) -> str:
    """A holder name that says who holds a lock: host, pid, and the run (or a thread)."""
    return f"{socket.gethostname()}:{os.getpid()}:{run or threading.get_ident()}"


class LockManager(abc.ABC):
    """Locks by name with leases; Prefect's ``LockManager`` methods, plus ``renew`` and ``waiters``."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS

    @abc.abstractmethod
    def try_acquire(self, key: str, holder: str, lease: float) -> bool:
        """Take the lock if it is free, expired, dead or already ours; never waits."""

    @abc.abstractmethod
    def release_lock(self, key: str, holder: str) -> None:
        """Free the lock if ``holder`` has it (else nothing)."""

    @abc.abstractmethod
    def renew(self, key: str, holder: str, lease: float) -> bool:
        """Extend ``holder``'s lease; False if it lost the lock."""

    @abc.abstractmethod
    def lock_holder(self, key: str) -> str | None:
        """Who holds the lock now (None: free, expired or dead)."""

    @abc.abstractmethod
    def note_waiting(self, key: str, delta: int) -> None:
        """Count a waiter in (+1) or out (-1), for ``waiters``."""

    @abc.abstractmethod
    def waiters(self, key: str | None = None) -> int:
        """How many acquisitions wait for ``key`` (for any key when None)."""

    def at_home(self, home: str | os.PathLike) -> LockManager:
        """This manager for the runs of a daskflow home (where a manager without a place keeps its locks)."""
        return self

    # -- Prefect's names --------------------------------------------------------------
    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        """Wait for the lock (at most ``acquire_timeout`` seconds; None: as long as it takes).

        The lease is ``hold_timeout`` if given, else ``lease_seconds``; it is renewed in the
        background until ``release_lock``. Returns False on timeout.
        """
        lease = float(hold_timeout) if hold_timeout else self.lease_seconds
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        if self.try_acquire(key, holder, lease):
            RENEWER.hold(self, key, holder, lease)
            return True
        logger.info("waiting for the lock %r (held by %s)", key, self.lock_holder(key))
        self.note_waiting(key, +1)
        try:
            poll = _FIRST_POLL
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                time.sleep(poll if left is None else min(poll, left))
                poll = min(poll * 1.5, _MAX_POLL)
                if self.try_acquire(key, holder, lease):
                    RENEWER.hold(self, key, holder, lease)
                    return True
        finally:
            self.note_waiting(key, -1)

    def release(self, key: str, holder: str) -> None:
        RENEWER.drop(self, key, holder)
        self.release_lock(key, holder)

    def is_locked(self, key: str) -> bool:
        return self.lock_holder(key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return self.lock_holder(key) == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until nobody holds ``key``; False if still held after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = _FIRST_POLL
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)
            poll = min(poll * 1.5, _MAX_POLL)
        return True


class Held(NamedTuple):
    manager: LockManager
    key: str
    holder: str
    lease: float


class Renewer:
    """One daemon thread per process that renews the leases of the locks this process holds."""

    def __init__(self) -> None:
        self.held: dict[tuple[int, str, str], Held] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def hold(self, manager: LockManager, key: str, holder: str, lease: float) -> None:
        with self.lock:
            self.held[(id(manager), key, holder)] = Held(manager, key, holder, lease)
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="daskflow-lock-renewer", daemon=True)
                self.thread.start()
        self.wake.set()

    def drop(self, manager: LockManager, key: str, holder: str) -> None:
        with self.lock:
            self.held.pop((id(manager), key, holder), None)

    def _run(self) -> None:
        while True:
            with self.lock:
                held = list(self.held.values())
            period = min((h.lease for h in held), default=DEFAULT_LEASE_SECONDS) / 3
            self.wake.wait(period)
            self.wake.clear()
            for h in held:
                try:
                    if not h.manager.renew(h.key, h.holder, h.lease):
                        with self.lock:  # released meanwhile: not lost
                            lost = self.held.pop((id(h.manager), h.key, h.holder), None) is not None
                        if lost:
                            logger.warning("the lock %r was lost by %s (its lease ran out)", h.key, h.holder)
                except Exception:  # a renewal that failed is tried again next period
                    logger.debug("could not renew the lock %r", h.key, exc_info=True)


RENEWER = Renewer()
