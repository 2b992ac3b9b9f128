"""Locks with leases, for transactions with ``isolation_level=SERIALIZABLE`` (Prefect 3's words).

Two processes (or two workers) running the same cached task with the same inputs at
once: with a serializable cache policy, the first takes the lock named by the cache key,
runs the body and commits the value; the other waits for the lock, reads the committed
value and ends ``Cached``. The body runs once.

A lock is a *lease*: its holder renews it while it holds it (a daemon thread per
process, every third of the lease), so a live holder keeps it however long the body
takes. A holder that dies stops renewing: the lock is free when the lease runs out
(``lease_seconds``, default 30 s), at once on the same host when its process is gone
(``FileLockManager`` checks the pid). A waiter then takes it and runs the body itself:
a body runs at most twice when its first holder is killed mid-body, and no lock stays
held by a dead process.

- ``FileLockManager``: processes of one host, in an LMDB environment at
  ``{home}/locks`` (the daskflow home of the cache by default).
- ``daskflow.runners.locks.DaskLockManager``: processes of every host of a Dask cluster,
  kept on its scheduler (also the daskflow server's).

Waiting polls the lock with a deadline (every 20 ms, backing off to 0.5 s): a lock
manager serves cache keys, whose waits are rare and as long as a body.

Example:
    >>> from daskflow.cache import INPUTS
    >>> from daskflow.cache.locks import FileLockManager, IsolationLevel
    >>> policy = INPUTS.configure(isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=FileLockManager())
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, NamedTuple

import msgpack

from daskflow import _lmdb, config, owners
from daskflow.leases import DEFAULT_LEASE_SECONDS, IsolationLevel, LockManager, holder_id, isolation_of

__all__ = ["IsolationLevel", "LockManager", "FileLockManager", "DEFAULT_LEASE_SECONDS", "holder_id", "isolation_of"]

class LockRecord(NamedTuple):
    """Who holds a lock, until when: msgpack'd in the LMDB of ``FileLockManager``."""

    holder: str
    host: str
    pid: int
    started: float
    expires: float

    def alive(self, now: float) -> bool:
        if now > self.expires:
            return False
        return owners.is_alive(owners.Owner(self.host, self.pid, self.started), self.expires, now)


_LOCKS, _WAITING = "locks", "waiting"


class FileLockManager(LockManager):
    """Locks for the processes of one host, kept in LMDB at ``{directory}`` (default ``{home}/locks``).

    A holder whose process is gone (same host: its pid, and that pid's start time) loses
    the lock at once; otherwise the lease decides.

    Args:
        directory: where the LMDB environment lives; None: ``locks`` in the daskflow home of
            the runs that use it (``$DASKFLOW_HOME`` outside a run).
        lease_seconds: how long a lock outlives a holder that stopped renewing it.
    """

    def __init__(self, directory: str | os.PathLike | None = None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"FileLockManager: lease_seconds must be > 0, got {lease_seconds!r}")
        self.directory = None if directory is None else str(directory)
        self.lease_seconds = float(lease_seconds)

    def __repr__(self) -> str:
        return f"FileLockManager(directory={self.directory!r}, lease_seconds={self.lease_seconds:g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileLockManager) and (self.directory, self.lease_seconds) == (
            other.directory, other.lease_seconds)

    def __hash__(self) -> int:
        return hash((FileLockManager, self.directory, self.lease_seconds))

    def at_home(self, home: str | os.PathLike) -> LockManager:
        if self.directory is not None:
            return self
        return FileLockManager(pathlib.Path(home) / "locks", self.lease_seconds)

    def _env(self) -> Any:
        """This process's LMDB environment of the locks (opened once; a damaged one is replaced:
        lock records are only good for a lease anyway)."""
        if self.directory is not None:
            path = pathlib.Path(self.directory)
        else:
            path = config.check_home(config.home_path(), create=True) / "locks"
        return _lmdb.open_env(path, dbs=(_LOCKS, _WAITING), map_size=1 << 26, recover=True)

    def _record(self, txn: Any, db: Any, key: bytes) -> LockRecord | None:
        raw = txn.get(key, db=db)
        return None if raw is None else LockRecord(*msgpack.unpackb(raw))

    def try_acquire(self, key: str, holder: str, lease: float) -> bool:
        env = self._env()
        db, name = env.db(_LOCKS), key.encode()
        me = owners.me()

        def take(txn: Any) -> bool:
            now = time.time()
            rec = self._record(txn, db, name)
            if rec is not None and rec.holder != holder and rec.alive(now):
                return False
            txn.put(name, msgpack.packb(list(LockRecord(holder, me.host, me.pid, me.started, now + lease))), db=db)
            return True

        return env.write(take)

    def release_lock(self, key: str, holder: str) -> None:
        env = self._env()
        db, name = env.db(_LOCKS), key.encode()

        def free(txn: Any) -> None:
            rec = self._record(txn, db, name)
            if rec is not None and rec.holder == holder:
                txn.delete(name, db=db)

        env.write(free)

    def renew(self, key: str, holder: str, lease: float) -> bool:
        env = self._env()
        db, name = env.db(_LOCKS), key.encode()

        def extend(txn: Any) -> bool:
            rec = self._record(txn, db, name)
            if rec is None or rec.holder != holder:
                return False
            txn.put(name, msgpack.packb(list(rec._replace(expires=time.time() + lease))), db=db)
            return True

        return env.write(extend)

    def lock_holder(self, key: str) -> str | None:
        env = self._env()
        db = env.db(_LOCKS)
        rec = env.read(lambda txn: self._record(txn, db, key.encode()))
        return rec.holder if rec is not None and rec.alive(time.time()) else None

    def note_waiting(self, key: str, delta: int) -> None:
        env = self._env()
        db, name = env.db(_WAITING), f"{key}\x00{os.getpid()}".encode()

        def count(txn: Any) -> None:
            n = int(txn.get(name, b"0", db=db)) + delta
            if n > 0:
                txn.put(name, str(n).encode(), db=db)
            else:
                txn.delete(name, db=db)

        env.write(count)

    def waiters(self, key: str | None = None) -> int:
        env = self._env()
        db = env.db(_WAITING)

        def total(txn: Any) -> int:
            n = 0
            for name, value in txn.cursor(db=db):
                k, _, pid = bytes(name).rpartition(b"\x00")
                if (key is None or k == key.encode()) and _pid_alive(int(pid)):  # a killed waiter counts out
                    n += int(value)
            return n

        return env.read(total)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

