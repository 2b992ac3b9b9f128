"""The ledger: checkpoints of calls, kept by the Dask scheduler, so a lost call resumes.

Dask runs calls at least once: when a worker dies, the calls it was running start over
elsewhere, and finished results it held are computed again if anything still needs them.
The ledger lets a call pick up what an earlier attempt already finished:

- a running call ``note``\\ s opaque checkpoints (bytes) about its progress; they travel on
  the worker's batched stream to the scheduler (no round trip, nothing written to disk);
- a client ``keep``\\ s the finished result of a call whose result other calls may still
  need (one message per batch of calls);
- when the scheduler takes a call back from a worker (the worker died, or lost the
  result) and the ledger holds something for it, the plugin marks the call's
  annotations; the next attempt sees the mark locally and only then asks the ledger
  (``recall``: one round trip, on reruns only);
- entries go when Dask forgets the call, after a grace period (``ORPHAN_SECONDS``): a
  client that lost its scheduler connection submits its unfinished calls again under
  the same keys, and they resume from their checkpoints too.

It stores bytes by Dask key and knows nothing of what they mean: the engine decides
what to note and how to resume. ``LedgerPlugin`` is registered by ``install`` (once per
scheduler; idempotent); without it every function here does nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from daskflow.runners import dask_internals

logger = logging.getLogger("daskflow")

PLUGIN_NAME = "daskflow-ledger"
OP_NOTE = "daskflow-ledger-note"
RERUN = "daskflow-rerun"  # annotation of a call that ran before and has ledger entries
ORPHAN_SECONDS = 600.0
_TAKEN_BACK = {("processing", "released"), ("processing", "waiting"), ("memory", "released"),
               ("memory", "waiting"), ("processing", "no-worker")}


class LedgerPlugin(SchedulerPlugin):
    """The scheduler side: checkpoints and kept results by Dask key."""

    name = PLUGIN_NAME
    idempotent = True

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.notes: dict[Any, list[bytes]] = {}
        self.kept: dict[Any, bytes] = {}
        self.orphans: dict[Any, tuple[float, list[bytes]]] = {}  # notes of forgotten calls, for a while
        self.finished: set[Any] = set()  # calls that delivered a result (not orphans when forgotten)
        dask_internals.add_stream_handler(scheduler, OP_NOTE, self._note)
        scheduler.handlers["daskflow_ledger_keep"] = self._keep
        scheduler.handlers["daskflow_ledger_get"] = self._get
        scheduler.handlers["daskflow_ledger_notes"] = self._notes

    def _note(self, key: Any = None, blob: bytes = b"", **_: Any) -> None:
        if key in self.scheduler.tasks:
            self.notes.setdefault(key, []).append(blob)
        else:  # dropped while it ran on (its client lost the connection): it may come again
            self._orphan(key, self.orphans.get(key, (0.0, []))[1] + [blob])

    def _keep(self, entries: dict | None = None, forget: list | None = None) -> None:
        for key, blob in (entries or {}).items():
            if key in self.scheduler.tasks:
                self.kept[key] = blob
        for key in forget or ():
            self.kept.pop(key, None)
            self.notes.pop(key, None)

    def _get(self, key: Any = None) -> dict:
        return {"kept": self.kept.get(key), "notes": list(self.notes.get(key, ()))}

    def _notes(self, keys: list | None = None) -> dict:
        return {key: list(self.notes[key]) for key in keys or () if key in self.notes}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory":
            self.finished.add(key)
        elif finish == "forgotten":
            notes = self.notes.pop(key, None)
            self.kept.pop(key, None)
            if key in self.finished:
                self.finished.discard(key)
            elif notes:  # dropped unfinished (its client lost the connection): it may come again
                self._orphan(key, notes)
        elif start == "released" and finish == "waiting" and key in self.orphans:
            self.notes[key] = self.orphans.pop(key)[1]
            self._mark(key)
        elif (start, finish) in _TAKEN_BACK and (key in self.notes or key in self.kept):
            self._mark(key)

    def _orphan(self, key: Any, notes: list[bytes]) -> None:
        now = time.monotonic()
        self.orphans[key] = (now, notes)
        for old in [k for k, (t, _) in self.orphans.items() if now - t > ORPHAN_SECONDS]:
            del self.orphans[old]

    def _mark(self, key: Any) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is not None:
            ts.annotations = dict(ts.annotations or {}, **{RERUN: True})


def install(client: Any) -> bool:
    """Register the ledger on the client's scheduler (once); False if the scheduler cannot load it."""
    try:
        client.register_plugin(LedgerPlugin(), name=PLUGIN_NAME)
        return True
    except Exception:  # e.g. daskflow is not importable where the scheduler runs
        logger.debug("daskflow: the scheduler did not load the ledger; lost calls start over", exc_info=True)
        return False


def _current() -> tuple[Any, Any] | None:
    """``(worker, key)`` of the Dask call running in this thread, if any."""
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if key is None:
        return None
    from distributed import get_worker

    try:
        return get_worker(), key
    except ValueError:
        return None


def note(blob: bytes) -> None:
    """Record a checkpoint of the running call (fire and forget)."""
    here = _current()
    if here is None:
        return
    worker, key = here
    dask_internals.worker_send(worker, {"op": OP_NOTE, "key": key, "blob": blob})


def recall() -> tuple[bytes | None, list[bytes]]:
    """``(kept result, checkpoints)`` of an earlier attempt of the running call; nothing on a first run."""
    here = _current()
    if here is None:
        return None, []
    worker, key = here
    marks = dask_internals.worker_task_annotations(worker, key)  # None: unknown here, ask the ledger
    if marks is not None and not marks.get(RERUN):
        return None, []
    from distributed.utils import sync

    try:
        got = sync(worker.loop, worker.scheduler.daskflow_ledger_get, key=key)
    except Exception:  # no ledger: start over
        logger.debug("daskflow: ledger lookup failed", exc_info=True)
        return None, []
    return got.get("kept"), list(got.get("notes") or ())


def notes_of(client: Any, keys: list) -> dict:
    """The checkpoints noted so far by calls ``keys`` (one request for all; ``{}`` without a ledger)."""
    try:
        return client.sync(client.scheduler.daskflow_ledger_notes, keys=list(keys))
    except Exception:
        logger.debug("daskflow: could not read checkpoints from the ledger", exc_info=True)
        return {}


def keep(client: Any, entries: dict, forget: list = ()) -> None:
    """Keep finished results by key (``{key: bytes}``) and drop entries of ``forget``."""
    try:
        client.sync(client.scheduler.daskflow_ledger_keep, entries=entries, forget=list(forget))
    except Exception:
        logger.debug("daskflow: could not keep results in the ledger", exc_info=True)
