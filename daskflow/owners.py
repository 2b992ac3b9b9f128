"""Who owns a run, and whether that owner is still alive.

A flow run, and every chunk of task runs a process submits, is *owned* by that process:
if it dies, nobody else will ever record those runs' final states, so the next daskflow
process that opens the run store ends them ``Crashed`` (``RunStore.end_dead_owners``).

An owner is ``(host, pid, process start time)``: the start time tells a live process
from a later one that reuses the pid. The owner also holds a *lease*, renewed by its
writer thread while it has runs in flight (``daskflow.owners.renew-seconds``), valid
for ``daskflow.owners.lease-seconds``. Liveness is then decided where it can be:

- same host: the pid exists and started when the owner did (the lease is not needed:
  a process that is alive but slow to renew is not dead);
- another host: the pid cannot be checked from here, so the lease decides.

Ground layer: the run store and the engine both use it; it imports psutil, nothing of daskflow
beyond ``config``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import NamedTuple

import psutil

from daskflow import config

__all__ = ["Lease", "Owner", "is_alive", "lease", "lease_seconds", "me", "renew_seconds"]


class Owner(NamedTuple):
    """A process that owns runs: its host name, pid and start time (seconds since the epoch)."""

    host: str
    pid: int
    started: float

    @property
    def key(self) -> bytes:
        """16 bytes naming this owner in the run store."""
        text = f"{self.host}\0{self.pid}\0{self.started:.2f}".encode()
        return hashlib.blake2b(text, digest_size=16).digest()

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid}"


class Lease(NamedTuple):
    """An owner's claim to be alive until ``until`` (seconds since the epoch, the owner's clock)."""

    owner: Owner
    until: float


_me: Owner | None = None


def me() -> Owner:
    """This process as an owner (computed once per process; a forked child is a new owner)."""
    global _me
    if _me is None or _me.pid != os.getpid():
        pid = os.getpid()
        _me = Owner(socket.gethostname(), pid, psutil.Process(pid).create_time())
    return _me


def lease() -> Lease:
    """A fresh lease of this process (``daskflow.owners.lease-seconds`` from now)."""
    return Lease(me(), time.time() + lease_seconds())


def lease_seconds() -> float:
    return float(config.get("owners.lease-seconds", 30))


def renew_seconds() -> float:
    return float(config.get("owners.renew-seconds", 10))


def is_alive(owner: Owner, lease_until: float | None, now: float | None = None) -> bool:
    """Whether ``owner`` may still record its runs.

    On this host, by its pid and start time; on another host, by its lease (an owner
    that never wrote a lease is taken as alive there: nothing says otherwise).
    """
    if owner.host == socket.gethostname():
        try:
            proc = psutil.Process(owner.pid)
            started = proc.create_time()
            if proc.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
                return False
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # another user's live process
            return True
        return abs(started - owner.started) < 0.05
    if lease_until is None:
        return True
    return (time.time() if now is None else now) <= lease_until
