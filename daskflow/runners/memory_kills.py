"""Workers a nanny killed for memory: why a lost call was lost, said in the user's words.

When a worker's RSS passes its memory limit's terminate fraction (95%), its nanny
terminates it and logs a structured event on topic ``worker-restart-memory``:
``{"worker": address, "pid": ..., "rss": bytes}`` (distributed's ``worker_memory``).
The Dask runner subscribes to that topic (``watch``, with its tracker subscription);
when Dask gives up on a call (``KilledWorker``), ``explain`` looks up the last worker
that died running it: if its nanny reported a memory kill, the run's message says so,
with the worker's memory limit, and its record keeps the RSS the nanny measured last.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from daskflow.runners.base import LossCause

__all__ = ["TOPIC", "explain", "watch"]

TOPIC = "worker-restart-memory"
GRACE_SECONDS = 2.0  # how long a loss waits for the nanny's event, which travels on another stream
_killed: dict[str, int] = {}  # worker address -> the RSS its nanny measured when it killed it
_arrived = threading.Condition()
_watching: set[str] = set()


def watch(client: Any) -> None:
    """Subscribe ``client`` to the nannies' memory-kill events, once per client."""
    if client.id in _watching:
        return
    _watching.add(client.id)
    client.subscribe_topic(TOPIC, _on_event)


def _on_event(event: tuple[float, Any]) -> None:
    msg = event[1]
    if isinstance(msg, dict) and msg.get("worker"):
        with _arrived:
            _killed[msg["worker"]] = int(msg.get("rss") or 0)
            _arrived.notify_all()


def explain(exc: BaseException) -> LossCause | None:
    """Why Dask gave up on a call, when its last worker was killed for memory; else None.

    Waits up to ``GRACE_SECONDS`` for the nanny's event (not on an event loop's thread,
    which is the one that would deliver it).
    """
    if type(exc).__name__ != "KilledWorker":
        return None
    worker = getattr(exc, "last_worker", None)
    address = getattr(worker, "address", None)
    if address is None:
        return None
    with _arrived:
        if address not in _killed and not _on_a_loop():
            _arrived.wait_for(lambda: address in _killed, GRACE_SECONDS)
        rss = _killed.get(address)
    if rss is None:
        return None
    limit = getattr(worker, "memory_limit", None) or None
    shown = f" ({limit / 2**30:.2g} GiB)" if limit else ""
    return LossCause(f"killed: worker exceeded its memory limit{shown}", rss, limit)


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
