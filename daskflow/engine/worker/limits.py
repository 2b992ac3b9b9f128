"""Concurrency limits and rate limits: ``concurrency(...)``, ``rate_limit(...)`` and tag limits.

As Prefect's global concurrency limits, with daskflow's places:

- *Definitions* live in the daskflow home (``daskflow limits set db 5``;
  ``store.limits``), read where the run executes: that process's home (the client's, for
  an embedded LocalCluster; a cached task's chunk names its submitter's), else, when that
  home has no limits file, the Dask scheduler's memory of the last definition.
- *Slots* are leases kept by the Dask scheduler of the run's cluster (``runners.slots``),
  so they hold across hosts; without a cluster (the threads runner and no
  ``DASKFLOW_SCHEDULER_ADDRESS``), by this process.
- ``with concurrency("db", occupy=1):`` holds ``occupy`` slots of each name while the block
  runs; ``rate_limit("api")`` takes slots that are never given back but decay at the
  limit's ``per_second`` (a rate limit), so calls start at most that often.
- *Tag limits*: a run of a task whose tags name a limit holds one slot of it while its body
  runs (not while it waits for a retry, not for a cache hit). Which tags have limits is
  decided once per chunk (``limited_task``); a task without tags costs nothing more.
- A run that waits for a slot gives its worker thread away meanwhile (``Host.idle``: the
  worker runs other chunks); the wait itself happens on the scheduler, woken by a release.
- A limit of 0 blocks (Prefect aborts instead), with one warning per limit and process
  saying how to raise it; raising it lets the waiting runs go on. An undefined name runs
  without a limit after one warning (Prefect's ``strict=False``), or raises
  ``LimitNotDefined`` with ``strict=True``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from daskflow import config
from daskflow.engine.core.context import cache_home, flow_run_ctx
from daskflow.engine.worker.hosts import current_host
from daskflow.exceptions import LimitNotDefined
from daskflow.runners.slots import LOCAL_SLOTS, RENEWER, UNKNOWN, DaskSlots, new_holder
from daskflow.store.limits import FILENAME, Limit, check_name, definitions

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

__all__ = ["concurrency", "limited_task", "rate_limit"]

logger = logging.getLogger("daskflow")
_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()
_WAIT_STEP = 2.0  # seconds one scheduler call may wait before the definition is read again


@contextlib.contextmanager
def concurrency(names: str | Iterable[str], occupy: int = 1, timeout_seconds: float | None = None,
                strict: bool = False) -> Iterator[None]:
    """Hold ``occupy`` slots of each limit in ``names`` while the block runs.

    Waits for the slots (at most ``timeout_seconds``, then ``TimeoutError``). Slots of
    several names are taken in name order and all given back at the end of the block.

    Example:
        >>> with concurrency("db", occupy=1):  # doctest: +SKIP
        ...     write_rows(rows)
    """
    wanted = _names(names, "concurrency")
    occupy = _occupy(occupy, "concurrency")
    keeper, lease = _keeper(), float(config.get("limits.lease-seconds", 30))
    deadline = None if timeout_seconds is None else time.monotonic() + float(timeout_seconds)
    held: list[tuple[str, str]] = []
    try:
        for name in wanted:
            holder = new_holder()
            if _acquire(keeper, name, holder, occupy, lease, deadline, strict, rate=None):
                held.append((name, holder))
                RENEWER.hold(keeper, name, holder, lease)
        yield
    finally:
        for name, holder in held:
            RENEWER.drop(keeper, name, holder)
            try:
                keeper.free(name, holder)
            except Exception:  # noqa: BLE001 - the lease frees it within lease-seconds
                logger.warning("could not give back the slot of limit %r; its lease frees it", name, exc_info=True)


def rate_limit(names: str | Iterable[str], occupy: int = 1, per_second: float | None = None,
               timeout_seconds: float | None = None, strict: bool = False) -> None:
    """Wait until ``occupy`` slots of each rate limit in ``names`` are free, and take them.

    The slots are not given back: they decay at the limit's ``per_second`` (``daskflow
    limits set api 10 --per-second 2``: bursts of 10, 2 per second after). ``per_second``
    here overrides the decay; for a name without definition it makes one of 1 slot (calls
    spaced ``1/per_second`` apart).

    Example:
        >>> for url in urls:  # doctest: +SKIP
        ...     rate_limit("api", per_second=5)
        ...     fetch(url)
    """
    wanted = _names(names, "rate_limit")
    occupy = _occupy(occupy, "rate_limit")
    if per_second is not None and not (isinstance(per_second, (int, float)) and per_second > 0):
        raise ValueError(f"rate_limit: per_second must be a number > 0, got {per_second!r}")
    keeper = _keeper()
    deadline = None if timeout_seconds is None else time.monotonic() + float(timeout_seconds)
    for name in wanted:
        _acquire(keeper, name, new_holder(), occupy, 0.0, deadline, strict, rate=per_second or 0.0)


def limited_task(task: Task) -> Task:
    """``task`` itself, or (when some of its tags name a limit) a copy whose body holds one
    slot of each while it runs. Called once per chunk, only for tasks with tags."""
    names = sorted(name for name in task.tags if _definition(name) is not None)
    if not names:
        names = sorted(set(task.tags) & _scheduler_names())
    if not names:
        return task
    fn = task.fn
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def body(*args: Any, **kwargs: Any) -> Any:
            with concurrency(names):
                return await fn(*args, **kwargs)
    else:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            with concurrency(names):
                return fn(*args, **kwargs)
    clone = object.__new__(type(task))
    clone.__dict__.update(task.__dict__)
    clone.fn = body  # functools.wraps keeps __wrapped__: cache keys read the original source
    return clone


# -- helpers ------------------------------------------------------------------------------------------
def _names(names: str | Iterable[str], owner: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    try:
        out = sorted({check_name(n, owner) for n in names})
    except TypeError:
        raise TypeError(f"{owner}: names must be a limit name or a list of them, got {names!r}") from None
    if not out:
        raise ValueError(f"{owner}: names is empty")
    return out


def _occupy(occupy: Any, owner: str) -> int:
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise ValueError(f"{owner}: occupy must be an int >= 1, got {occupy!r}")
    return occupy


def _definition(name: str) -> Limit | None:
    """The limit as defined in this code's home (None: not defined there)."""
    try:
        return definitions(cache_home()).get(name)
    except Exception:  # noqa: BLE001 - an unreadable home defines nothing here
        return None


_known: tuple[float, frozenset[str]] = (0.0, frozenset())


def _scheduler_names() -> frozenset[str]:
    """On a worker whose home has no limits file (another host): the names
    the scheduler knows a definition of (asked at most every 2 s per process)."""
    global _known
    from daskflow.runners.dask import worker_address

    if worker_address() is None or os.path.exists(os.path.join(cache_home(), FILENAME)):
        return frozenset()  # the home's limits are here: they are the truth
    at, names = _known
    if time.monotonic() - at > 2.0:
        try:
            names = frozenset(_keeper().status())
        except Exception:  # noqa: BLE001 - an unreachable scheduler: no tag limit applies
            names = frozenset()
        _known = (time.monotonic(), names)
    return names


def _keeper() -> Any:
    """Where the slots are: the run's Dask scheduler, the configured one, else this process."""
    from daskflow.runners.clients import shared_client
    from daskflow.runners.dask import DaskTaskRunner, worker_address

    if worker_address() is not None:
        from distributed import get_client

        return DaskSlots(get_client())
    flow = flow_run_ctx.get()
    if flow is not None and isinstance(flow.runner, DaskTaskRunner):
        return DaskSlots(flow.runner.client)
    address = config.get("scheduler-address")
    return DaskSlots(shared_client(address)) if address else LOCAL_SLOTS


def _acquire(keeper: Any, name: str, holder: str, occupy: int, lease: float, deadline: float | None,
             strict: bool, rate: float | None) -> bool:
    """Take the slots (waiting as long as needed); False for an undefined name when not ``strict``."""
    while True:
        d = _definition(name)
        limit, per_second = (d.limit, d.per_second) if d is not None else (None, None)
        if rate is not None:  # a rate limit: a decay is required
            per_second = rate or per_second
            if per_second is None:
                raise ValueError(f"rate_limit: limit {name!r} has no decay: define it with "
                                 f"`daskflow limits set {name} N --per-second R`, or pass per_second=")
            limit = limit if limit is not None else 1
        if limit is not None and 0 < limit < occupy:
            raise ValueError(f"limit {name!r} has {limit} slot(s): occupy={occupy} can never be served")
        left = None if deadline is None else deadline - time.monotonic()
        after = keeper.take(name, holder, occupy, limit, per_second, lease or 1.0, 0.0)
        if after == 0.0:
            return True
        if after == UNKNOWN:
            if strict:
                raise LimitNotDefined(f"concurrency limit {name!r} is not defined: `daskflow limits set {name} N`")
            _warn_once(name, f"concurrency limit {name!r} is not defined (`daskflow limits set {name} N`): "
                             f"running without it")
            return False
        if limit == 0:
            _warn_once(name, f"concurrency limit {name!r} is 0: runs that need it wait until it is raised "
                             f"(`daskflow limits set {name} N`)")
        if left is not None and left <= 0:
            raise TimeoutError(f"no slot of limit {name!r} within the timeout")
        with current_host().idle():  # the worker's thread serves other chunks meanwhile
            after = keeper.take(name, holder, occupy, limit, per_second, lease or 1.0,
                                min(_WAIT_STEP, left if left is not None else math.inf, max(after, 0.01) + _WAIT_STEP))
        if after == 0.0:
            return True


def _warn_once(name: str, message: str) -> None:
    with _warn_lock:
        if (name, message[:20]) in _warned:
            return
        _warned.add((name, message[:20]))
    logger.warning(message)
