"""The chunk function's side of the tracker: messages from wherever runs execute.

A chunk reports ``ChunkStarted`` when it begins, ``RunRetrying`` for each retry and a
small ``ChunkEnded`` when it finishes; the run logging sink reports ``LogsShipped``
(``engine/tracking/events.py``). In this process the message goes straight to ``tracker.on_message``. On a Dask worker, messages are collected for ~100 ms
and sent as one Dask structured event (topic ``tracker.TOPIC``), which the client's
subscription hands to ``on_message``: one event per chunk start and end would double the
scheduler's messages for a map with one run per Dask task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from daskflow.codes import StateEvent
from daskflow.engine.core.compact import packed_ends
from daskflow.engine.tracking.events import (
    ChunkAside,
    ChunkEnded,
    ChunkStarted,
    Message,
    RunRetrying,
    batch_to_wire,
    relative_times,
)
from daskflow.engine.tracking.tracker import TOPIC, on_message
from daskflow.engine.worker.hosts import current_host

if TYPE_CHECKING:
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.runners.base import Host

logger = logging.getLogger("daskflow")


def report(msg: Message, host: Host, at_once: bool = False) -> None:
    """Send a tracker message from the chunk function: batched events from a remote host (or
    ``at_once``, after what the host still holds), else direct."""
    try:
        if host.remote():
            (_outbox.send_now if at_once else _outbox.add)(host.sender(), msg)
            return
        on_message(msg)
    except Exception:  # record keeping must never fail a run
        logger.debug("daskflow: could not report %r", type(msg).__name__, exc_info=True)


class _Outbox:
    """A worker's tracker messages, sent as one Dask event about every 100 ms.

    One event per chunk start and end would double the scheduler's messages for a map
    with one run per Dask task (``chunksize=1``); batching makes it one per 100 ms.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[Callable[[str, Any], None], list] = {}  # a worker's sender -> its messages
        self.thread: threading.Thread | None = None
        self.pid = 0

    def add(self, send: Callable[[str, Any], None], msg: Message) -> None:
        with self.lock:
            entry = self.pending.get(send)
            if entry is None:
                entry = self.pending[send] = []
            entry.append(msg)
            if self.thread is None or self.pid != os.getpid():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="daskflow-events", daemon=True)
                self.thread.start()

    def send_now(self, send: Callable[[str, Any], None], msg: Message) -> None:
        """Send ``msg`` at once, after what this sender still holds (in order)."""
        with self.lock:
            msgs = self.pending.pop(send, [])
        msgs.append(msg)
        send(TOPIC, batch_to_wire(msgs))

    def _run(self) -> None:
        while True:
            time.sleep(0.1)  # the batching interval, not a synchronisation
            with self.lock:
                pending, self.pending = self.pending, {}
            for send, msgs in pending.items():
                try:
                    send(TOPIC, batch_to_wire(msgs))
                except Exception:  # a closing worker: its runs' envelopes still carry the states
                    logger.debug("daskflow: could not send %d tracker events", len(msgs), exc_info=True)


_outbox = _Outbox()


def chunk_starting(base: int, start: int, host: Host) -> None:
    report(ChunkStarted(base, start, time.time(), host.address()), host)


def chunk_ended(res: ChunkResult, host: Host) -> None:
    """The small end event: the codes of runs that did not simply complete, and the time."""
    codes = res.codes
    # ``started``: the envelope's own, so that the record its end event writes and the one its
    # envelope rewrites agree, and the writer's rewrite costs a comparison (store/metrics.py)
    end = ChunkEnded(res.base, res.start, time.time(), res.worker, [], started=res.started or None,
                     resources=res.resources)
    if res.first and len(res.ends) == res.n:  # each run's own time, for the UI while the flow runs
        end.first = res.first
        packed = packed_ends(res.ends)  # ~1 byte a run (a chunk of 10^5 runs: its event ~10 KB, not 400)
        if packed is not None:
            end.zends = packed
        else:
            end.ends = relative_times(res.ends, res.first)
        if res.starts is not None:
            end.starts = relative_times(res.starts, res.first)
    if res.n_failed or 1 in codes:
        odd = res.n - codes.count(0)
        if odd * 8 > res.n:  # many: the codes themselves (a byte a run) are smaller than the pairs
            end.codes = bytes(codes)
        else:  # [index, code] pairs: Dask events take str-keyed dicts only
            end.odd_codes = [[i, c] for i, c in enumerate(codes) if c]
    if not (res.elsewhere or res.recomputed):
        report(end, host)
        return
    # The values stay on the worker: the client records the run from this summary, which
    # leaves now, ahead of Dask's own message that the task finished (one stream, in order).
    end.summary = res.to_summary_bytes()
    report(end, host, at_once=True)


def chunk_aside(base: int, start: int) -> None:
    """The chunk ``(base, start)`` waits for its runs' retry delays only (``retries``): sent at
    once, so the client's window sends another chunk meanwhile."""
    host = current_host()
    if host.remote():
        report(ChunkAside(base, start), host, at_once=True)


def run_retrying(ctx: Any, event: StateEvent) -> None:
    """A retry of run ``ctx.index`` (slow path only)."""
    report(RunRetrying(ctx.base, ctx.start, ctx.index, event), current_host())
