"""Cancel from another process: the watcher that turns a cancel request into a Cancelled flow run.

``daskflow flow-runs cancel ID`` (or the UI) writes a request file under the home
(``daskflow.store.cancels``). While this process has flow runs in flight, one daemon thread
lists the request directory about twice a second (``daskflow.cancel.poll-seconds``; one
``listdir`` for all of them; nothing runs per task run) and, for a request naming one of
its flow runs (or an ancestor of one, so subflows go with their parent):

1. marks the flow run cancelled (``FlowRunContext.cancel_reason``): whatever the body
   does from now on, the flow run ends ``Cancelled`` and its ``on_cancellation`` hooks fire;
2. cancels its runs not finished through their runner (Dask ``cancel``: queued chunks
   never start, a wait on them returns at once; the threads runner cancels the runs not
   started), so the body's waits end;
3. raises ``FlowRunCancelRequested`` in the thread running the body of a sync flow, at its
   next Python instruction (``PyThreadState_SetAsyncExc``), only while the body runs (not
   while the engine records its end). A body blocked in C (a long ``time.sleep``) is
   interrupted when that call returns; an ``async`` flow is not interrupted, its waits end
   with step 2; a task body already executing on a worker is not stopped (Dask cannot stop
   a running task): its result is dropped and the run reads ``Cancelled``.

The flow's engine (``engine.api.flows``) does the rest in its own thread, as for Ctrl-C:
runs not final are recorded Cancelled, the state is recorded, hooks fire.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass, field

from daskflow import config
from daskflow.engine.core.context import FlowRunContext
from daskflow.exceptions import FlowRunCancelRequested
from daskflow.store import cancels

__all__ = ["WATCHER", "Watcher"]

logger = logging.getLogger("daskflow")


@dataclass(eq=False)
class Watched:
    """A flow run in flight in this process, and the thread its body runs in."""

    ctx: FlowRunContext
    home: str
    thread_id: int = 0  # set while a sync body runs (0: not interruptible now)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Watcher:
    """One daemon thread per process that polls cancel requests while flow runs are in flight."""

    def __init__(self) -> None:
        self.watched: dict[str, Watched] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def watch(self, ctx: FlowRunContext) -> Watched:
        entry = Watched(ctx, str(config.home_path()))
        with self.lock:
            self.watched[ctx.flow_run_id] = entry
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="daskflow-cancel-watcher", daemon=True)
                self.thread.start()
        self.wake.set()
        return entry

    def unwatch(self, entry: Watched) -> None:
        with self.lock:
            self.watched.pop(entry.ctx.flow_run_id, None)
        cancels.clear(entry.home, entry.ctx.flow_run_id)  # also a request that came as the run ended

    # -- the body's side -----------------------------------------------------------------
    @staticmethod
    def body_starts(entry: Watched) -> None:
        with entry.lock:
            entry.thread_id = threading.get_ident()

    @staticmethod
    def body_ends(entry: Watched) -> None:
        """Called inside the body's ``try``: a request delivered meanwhile lands there."""
        with entry.lock:
            entry.thread_id = 0

    # -- the watcher's thread ------------------------------------------------------------
    def _run(self) -> None:
        poll = float(config.get("cancel.poll-seconds", 0.5))
        while True:
            with self.lock:
                entries = list(self.watched.values())
            if not entries:
                self.wake.wait()
                self.wake.clear()
                continue
            try:
                self._look(entries)
            except Exception:  # noqa: BLE001 - an unreadable directory now: look again next time
                logger.debug("could not read cancel requests", exc_info=True)
            del entries  # not held while waiting: a flow run that ended is let go (its chunks with it)
            self.wake.wait(poll)
            self.wake.clear()

    def _look(self, entries: list[Watched]) -> None:
        asked = set().union(*(cancels.pending(h) for h in {e.home for e in entries}))
        if asked:
            for entry in entries:
                target = _asked_for(entry.ctx, asked)
                if target is not None and entry.ctx.cancel_reason is None:
                    self.cancel(entry, cancels.reason(entry.home, target))

    def cancel(self, entry: Watched, who: str) -> None:
        """Cancel one flow run of this process (see the module docstring for the steps)."""
        ctx = entry.ctx
        ctx.cancel_reason = f"flow run {ctx.flow_run_id} was cancelled by request ({who})"
        logger.warning("flow %r: %s", getattr(ctx.flow, "name", "?"), ctx.cancel_reason)
        _cancel_calls(ctx)
        with entry.lock:
            if entry.thread_id:
                _raise_in(entry.thread_id)


def _asked_for(ctx: FlowRunContext, asked: set[str]) -> str | None:
    """The requested flow run id among ``ctx`` and its ancestors, if any."""
    while ctx is not None:
        if ctx.flow_run_id in asked:
            return ctx.flow_run_id
        ctx = ctx.parent  # type: ignore[assignment]
    return None


def _cancel_calls(ctx: FlowRunContext) -> None:
    """Cancel the runner calls of the flow run's chunks not finished (one call per runner)."""
    by_runner: dict[int, tuple] = {}
    for chunk in list(ctx.submitted):
        if chunk.result is None and chunk.runner is not None and chunk.handle is not None:
            by_runner.setdefault(id(chunk.runner), (chunk.runner, []))[1].append(chunk.handle)
    for runner, handles in by_runner.values():
        try:
            runner.cancel_many(handles)
        except Exception:  # noqa: BLE001 - the engine cancels again, in its own thread
            logger.debug("could not cancel runs of %r", runner, exc_info=True)


def _raise_in(thread_id: int) -> None:
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                      ctypes.py_object(FlowRunCancelRequested))
    if done > 1:  # never expected: undo, as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


WATCHER = Watcher()
