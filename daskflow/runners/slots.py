"""Slots of concurrency limits and rate limits, kept where every holder can reach them.

A *limit* is a name, a number of slots and, for a rate limit, a decay (slots given back
per second). A holder takes ``occupy`` slots of a name if they are free and gives them
back when its body ends (a concurrency limit), or never: they decay (a rate limit, as
Prefect's ``slot_decay_per_second``). The slots a holder takes are *leased*: its process
renews them (``RENEWER``, every third of the lease); a holder that dies (SIGKILL, a lost
host) stops renewing and its slots are free when the lease ends
(``daskflow.limits.lease-seconds``, 30 s).

``SlotTable`` is the bookkeeping, written once. It lives

- on the Dask scheduler (``DaskSlots``): a handler ``daskflow_slots`` installed on the
  scheduler by the first call of each process, run on the scheduler's event loop, so
  every operation is atomic for every host of the cluster; a ``take`` that cannot be
  served waits there (up to ``wait`` seconds, woken by a ``free``), not in a polling loop;
- or in this process (``LOCAL_SLOTS``), for runs that have no cluster (the threads runner
  with no scheduler configured).

A ``take`` names the limit it believes in (read by the engine from the daskflow home);
the table remembers the last definition it was given per name, for holders that have
none (workers on other hosts). This module knows no tasks: ``engine.worker.limits`` is
what tasks use.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from typing import Any, NamedTuple

__all__ = ["DaskSlots", "LOCAL_SLOTS", "LocalSlots", "RENEWER", "SlotTable", "UNKNOWN", "new_holder"]

logger = logging.getLogger("daskflow")

HANDLER = "daskflow_slots"
_TABLE = "daskflow-slots"
UNKNOWN = -1.0  # what ``take`` answers for a name nobody defined
_counter = itertools.count()


def new_holder() -> str:
    """A holder name: host, pid and a number (cheap: no uuid per run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{next(_counter)}"


class Held(NamedTuple):
    occupy: int
    expires: float  # monotonic (the table's clock)


class Definition(NamedTuple):
    limit: int
    per_second: float | None = None


class SlotTable:
    """Who holds how many slots of each name, and until when; what each name allows."""

    def __init__(self) -> None:
        self.holders: dict[str, dict[str, Held]] = {}
        self.decaying: dict[str, tuple[float, float]] = {}  # rate limits: name -> (slots used, at)
        self.defs: dict[str, Definition] = {}

    def take(self, name: str, holder: str, occupy: int, limit: int | None, per_second: float | None,
             lease: float, now: float) -> float:
        """0.0 when ``occupy`` slots were taken; else seconds after which trying again may
        succeed (an upper bound for a rate limit); ``UNKNOWN`` for a name without definition."""
        if limit is not None:
            self.defs[name] = Definition(limit, per_second)
        d = self.defs.get(name)
        if d is None:
            return UNKNOWN
        if d.per_second:
            used, at = self.decaying.get(name, (0.0, now))
            used = max(0.0, used - (now - at) * d.per_second)
            if used + occupy <= d.limit:
                self.decaying[name] = (used + occupy, now)
                return 0.0
            self.decaying[name] = (used, now)
            return max(0.001, (used + occupy - d.limit) / d.per_second)
        held = self._live(name, now)
        if sum(h.occupy for h in held.values()) + occupy <= d.limit:
            held[holder] = Held(occupy, now + lease)
            return 0.0
        return min((h.expires - now for h in held.values()), default=1.0) + 0.001

    def _live(self, name: str, now: float) -> dict[str, Held]:
        held = self.holders.setdefault(name, {})
        for holder in [k for k, h in held.items() if h.expires < now]:  # dead holders: their lease ran out
            del held[holder]
        return held

    def free(self, name: str, holder: str) -> bool:
        held = self.holders.get(name)
        return held is not None and held.pop(holder, None) is not None

    def renew(self, items: list[tuple[str, str]], lease: float, now: float) -> list[bool]:
        out = []
        for name, holder in items:
            held = self.holders.get(name, {})
            h = held.get(holder)
            if h is None or h.expires < now:
                held.pop(holder, None)
                out.append(False)
            else:
                held[holder] = Held(h.occupy, now + lease)
                out.append(True)
        return out

    def status(self, now: float) -> dict[str, dict[str, Any]]:
        """Per name: its definition as last given, slots in use, holders."""
        out = {}
        for name, d in self.defs.items():
            if d.per_second:
                used, at = self.decaying.get(name, (0.0, now))
                used, holders = max(0.0, used - (now - at) * d.per_second), 0
            else:
                held = self._live(name, now)
                used, holders = sum(h.occupy for h in held.values()), len(held)
            out[name] = {"limit": d.limit, "per_second": d.per_second, "in_use": used, "holders": holders}
        return out

    def define(self, name: str, limit: int | None, per_second: float | None) -> None:
        if limit is None:
            self.defs.pop(name, None)
        else:
            self.defs[name] = Definition(limit, per_second)


# -- on the Dask scheduler ------------------------------------------------------------------------
class SchedulerSlots:
    """The table on the scheduler, with the events that wake waiting takes."""

    def __init__(self) -> None:
        self.table = SlotTable()
        self.changed: dict[str, asyncio.Event] = {}

    async def handle(self, action: str, name: str = "", holder: str = "", occupy: int = 1, limit: int | None = None,
                     per_second: float | None = None, lease: float = 30.0, wait: float = 0.0,
                     items: list | None = None) -> Any:
        table, loop = self.table, asyncio.get_running_loop()
        if action == "take":
            deadline = loop.time() + wait
            while True:
                after = table.take(name, holder, occupy, limit, per_second, lease, loop.time())
                left = deadline - loop.time()
                if after <= 0.0 or left <= 0:
                    return after
                event = self.changed.setdefault(name, asyncio.Event())
                try:
                    await asyncio.wait_for(event.wait(), min(left, after))
                except asyncio.TimeoutError:
                    pass
                limit = None  # the definition was recorded by the first try
        if action == "free":
            freed = table.free(name, holder)
            self._wake(name)
            return freed
        if action == "renew":
            return table.renew([tuple(i) for i in items or ()], lease, loop.time())
        if action == "status":
            return table.status(loop.time())
        if action == "define":
            table.define(name, limit, per_second)
            self._wake(name)
            return None
        raise ValueError(f"unknown slot action {action!r}")

    def _wake(self, name: str) -> None:
        event = self.changed.pop(name, None)
        if event is not None:
            event.set()


def install(dask_scheduler: Any = None) -> bool:
    """Run on the scheduler (``run_on_scheduler``): add the ``daskflow_slots`` handler once."""
    if _TABLE not in dask_scheduler.extensions:
        dask_scheduler.extensions[_TABLE] = SchedulerSlots()
    dask_scheduler.handlers[HANDLER] = dask_scheduler.extensions[_TABLE].handle
    return True


_installed: set[tuple[int, str]] = set()


class DaskSlots:
    """Slots kept by the scheduler of ``client`` (a worker's own client, or the flow's)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DaskSlots) and other.client is self.client

    def __hash__(self) -> int:
        return id(self.client)

    def _call(self, action: str, **kwargs: Any) -> Any:
        key = (id(self.client), self.client.scheduler.address)
        if key not in _installed:
            self.client.run_on_scheduler(install)
            _installed.add(key)
        handler = getattr(self.client.scheduler, HANDLER)
        return self.client.sync(handler, action=action, **kwargs)

    def take(self, name: str, holder: str, occupy: int, limit: int | None, per_second: float | None,
             lease: float, wait: float = 0.0) -> float:
        return self._call("take", name=name, holder=holder, occupy=occupy, limit=limit, per_second=per_second,
                          lease=lease, wait=wait)

    def free(self, name: str, holder: str) -> None:
        """Give the slots back without waiting for the answer (one round trip per run saved;
        until the message lands, the slot is held a little longer, never shorter)."""
        key = (id(self.client), self.client.scheduler.address)
        if key not in _installed:
            return self._call("free", name=name, holder=holder)
        handler = getattr(self.client.scheduler, HANDLER)

        async def send() -> None:
            try:
                await handler(action="free", name=name, holder=holder)
            except Exception:  # noqa: BLE001 - the lease frees it
                logger.debug("could not give back a slot of %r", name, exc_info=True)

        self.client.loop.add_callback(send)

    def renew(self, items: list[tuple[str, str]], lease: float) -> list[bool]:
        return self._call("renew", items=[list(i) for i in items], lease=lease)

    def status(self) -> dict[str, dict[str, Any]]:
        return self._call("status")

    def define(self, name: str, limit: int | None, per_second: float | None = None) -> None:
        self._call("define", name=name, limit=limit, per_second=per_second)


# -- in this process --------------------------------------------------------------------------------
class LocalSlots:
    """The table in this process, for runs without a cluster (threads of one process)."""

    def __init__(self) -> None:
        self.table = SlotTable()
        self.cond = threading.Condition()

    def take(self, name: str, holder: str, occupy: int, limit: int | None, per_second: float | None,
             lease: float, wait: float = 0.0) -> float:
        deadline = time.monotonic() + wait
        with self.cond:
            while True:
                after = self.table.take(name, holder, occupy, limit, per_second, lease, time.monotonic())
                left = deadline - time.monotonic()
                if after <= 0.0 or left <= 0:
                    return after
                self.cond.wait(min(left, after))

    def free(self, name: str, holder: str) -> None:
        with self.cond:
            self.table.free(name, holder)
            self.cond.notify_all()

    def renew(self, items: list[tuple[str, str]], lease: float) -> list[bool]:
        with self.cond:
            return self.table.renew(items, lease, time.monotonic())

    def status(self) -> dict[str, dict[str, Any]]:
        with self.cond:
            return self.table.status(time.monotonic())

    def define(self, name: str, limit: int | None, per_second: float | None = None) -> None:
        with self.cond:
            self.table.define(name, limit, per_second)
            self.cond.notify_all()


LOCAL_SLOTS = LocalSlots()


# -- renewing the leases of this process's holders ---------------------------------------------------
class Renewer:
    """One daemon thread per process: every third of the shortest lease, one ``renew`` call per keeper."""

    def __init__(self) -> None:
        self.held: dict[tuple[Any, str, str], float] = {}  # (keeper, name, holder) -> lease
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.period = float("inf")
        self.wake = threading.Event()

    def hold(self, keeper: Any, name: str, holder: str, lease: float) -> None:
        with self.lock:
            self.held[(keeper, name, holder)] = lease
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="daskflow-slot-renewer", daemon=True)
                self.thread.start()
            if lease / 3 < self.period:  # a shorter lease than the thread waits for: wake it (rare)
                self.period = lease / 3
                self.wake.set()

    def drop(self, keeper: Any, name: str, holder: str) -> None:
        with self.lock:
            self.held.pop((keeper, name, holder), None)

    def _run(self) -> None:
        while True:
            with self.lock:
                self.period = min(self.held.values(), default=30.0) / 3
            self.wake.wait(self.period)
            self.wake.clear()
            with self.lock:
                held = dict(self.held)
            by_keeper: dict[Any, list[tuple[str, str, float]]] = {}
            for (keeper, name, holder), lease in held.items():
                by_keeper.setdefault(keeper, []).append((name, holder, lease))
            for keeper, items in by_keeper.items():
                try:
                    kept = keeper.renew([(n, h) for n, h, _ in items], max(lease for *_, lease in items))
                except Exception:  # noqa: BLE001 - tried again next period; the lease covers a blip
                    logger.debug("could not renew concurrency slots", exc_info=True)
                    continue
                for (name, holder, _), ok in zip(items, kept):
                    if not ok and (keeper, name, holder) in self.held:
                        logger.warning("the slot of concurrency limit %r held by %s was lost (its lease ran out)",
                                       name, holder)


RENEWER = Renewer()
