"""The scheduler side of background runs: a durable topic on the Dask scheduler.

``BackgroundPlugin`` (a ``distributed.SchedulerPlugin``) turns a Dask scheduler into
the daskflow server:

- *Enqueue.* Clients send delayed calls on their batched stream (op
  ``daskflow-bg``): no round trip, many calls per message, each pickled task once per
  message (``tasks``; a call names it by index). The plugin hands them to
  its writer thread, which writes each call to the LMDB queue and a ``Scheduled``
  record in one transaction (one per batch of calls); only after that commit does the
  plugin submit the runs through its own asynchronous client. A run therefore never
  starts before it is durable, and first submission and resubmission after a restart
  are the same code.
- *Chunks.* Runs of one task committed together travel in chunks, as ``.map()`` runs
  do: one Dask task (``fire_and_forget``, resource ``{task_key: 1}``, Dask key
  ``{task name}-{first run id}``, plus ``+{more}`` for a chunk of several) runs many
  queued runs on a task worker, each with its own run id, record, history and result.
  A chunk is sized so that every task worker slot gets several (``chunk_size``). Before
  it runs, a chunk asks the plugin which of its runs are not final yet
  (``daskflow_bg_todo``): a chunk that Dask runs again after its worker died runs only
  the runs whose final state did not reach the server (at-least-once), never one that
  did.
- *States.* ``Pending`` (with the worker) when Dask assigns a chunk to a task worker
  (the ``transition`` hook), back to ``Scheduled`` if that worker is lost, for each
  run of the chunk not final yet. When Dask gives up on a chunk (KilledWorker), its
  runs not final go again one per Dask task, one at a time, so only a run Dask gives
  up on alone ends ``Crashed``;
  ``Running`` and the final state come from the task worker on its batched stream,
  several runs per message. All go through the writer thread in batches
  (one LMDB transaction per batch, then ``store.record_states`` hands the new states
  to the run store), never blocking the event loop on a disk write.
- *Final.* A final state deletes the run's queue entry in the same transaction that
  records it, and keeps the result (or exception) by run id. Later duplicates (an
  at-least-once re-execution) are ignored: the first recorded completion wins.
- *Restart.* On start, every queued run is recorded Scheduled and submitted again
  (at-least-once delivery), and the run store is reconciled with this store: a run
  final here is final there too, even if the server died before handing it over.
- *Cancel.* ``daskflow_bg_cancel`` ends ``Cancelled`` the runs no task worker has taken
  (``daskflow_bg_todo`` did not hand them out): both run on the event loop, so a run is
  either handed to a worker or cancelled, never both. Taken runs are left to finish.
- *Results.* Handlers ``daskflow_bg_wait`` (wait for final states, event-driven) and
  ``daskflow_bg_get`` (latest states) serve clients on any host.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
import uuid
from typing import Any, NamedTuple

from distributed.diagnostics.plugin import SchedulerPlugin

from daskflow.background import store
from daskflow.background.records import (
    STOP,
    Enqueue,
    FinalState,
    Outcome,
    RunChange,
    StateChange,
    WriterOp,
    calls_from_wire,
    from_wire,
    outcome_to_wire,
)
from daskflow.engine.tracking.events import LogsShipped, batch_from_wire
from daskflow.engine.tracking.tracker import TOPIC
from daskflow.runners import dask_internals

__all__ = ["BackgroundPlugin"]

logger = logging.getLogger("daskflow.background")

OP = "daskflow-bg"
PLUGIN_NAME = "daskflow-background"
ARRIVAL_GRACE = 10.0  # seconds a reader waits for a run id the store does not know yet
BUSY_BATCH = 64  # ops: a batch this large means load; the next batch waits COALESCE for more
COALESCE = 0.05  # seconds
MAX_CHUNK = 256  # runs per Dask task at most
CHUNKS_PER_SLOT = 4  # a batch of runs is cut so that every task worker slot gets about this many chunks


def chunk_size(n: int, slots: int) -> int:
    """How many of ``n`` runs of one task travel in one Dask task, with ``slots`` worker slots serving it."""
    return max(1, min(MAX_CHUNK, -(-n // (CHUNKS_PER_SLOT * max(1, slots)))))


class BackgroundPlugin(SchedulerPlugin):
    """Make a Dask scheduler the daskflow server (durable queue, states, results).

    Example:
        >>> scheduler = Scheduler(host="127.0.0.1", plugins=[BackgroundPlugin()])  # doctest: +SKIP
    """

    name = PLUGIN_NAME

    def __init__(self, path: str | None = None) -> None:
        self.path = path  # resolved in the scheduler's process when None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.loop = asyncio.get_running_loop()
        self.env = store.open_store(self.path)
        self.keys: dict[str, list[str]] = {}  # Dask key of a chunk submitted here -> its run ids
        self.active: set[str] = set()  # their run ids
        self.finished: set[str] = set()  # active run ids whose final state arrived (maybe not yet committed)
        self.taken: set[str] = set()  # active run ids a task worker was told to run (daskflow_bg_todo)
        # run ids forgotten by Dask lately: a worker's last log batch (sent every ~100 ms)
        # may arrive after its run ended
        self.recent: dict[str, None] = {}
        self.waiters: dict[str, list[asyncio.Future]] = {}
        self.arrivals: dict[str, list[asyncio.Future]] = {}  # readers of runs not enqueued yet
        self.client: Any = None
        self._backlog: list[dict] = []
        # runs of chunks Dask gave up on, going again one at a time (see _resubmit_alone)
        self.alone: collections.deque[str] = collections.deque()
        self.alone_now: str | None = None
        self.writer = QueueWriter(self)
        self.writer.start()
        dask_internals.add_stream_handler(scheduler, OP, self._on_stream)
        scheduler.handlers["daskflow_bg_wait"] = self._wait
        scheduler.handlers["daskflow_bg_get"] = self._get
        scheduler.handlers["daskflow_bg_todo"] = self._todo
        scheduler.handlers["daskflow_bg_cancel"] = self._cancel
        self._boot = asyncio.ensure_future(self._connect_and_resubmit())

    async def close(self) -> None:
        self.writer.stop()
        await self.loop.run_in_executor(None, self.writer.join)
        if self.client is not None:
            await self.client.close()

    async def _connect_and_resubmit(self) -> None:
        from distributed import Client

        # Our own client, to submit runs like any client would (update-graph, fire_and_forget).
        self.client = await Client(self.scheduler.address, asynchronous=True, set_as_default=False,
                                   name="daskflow-background")
        entries = store.queued(self.env)
        fixed = await self.loop.run_in_executor(None, store.reconcile_run_store, self.env, [e["id"] for e in entries])
        if fixed:
            logger.info("daskflow server: %d background run(s) brought up to date in the run store", fixed)
        if entries:
            logger.info("daskflow server: resubmitting %d unfinished background run(s)", len(entries))
            now = time.time()
            for e in entries:
                self.writer.put(StateChange(e["id"], "SCHEDULED", "Scheduled", now,
                                            "submitted again after a server restart"))
            self._submit(entries)
        backlog, self._backlog = self._backlog, []
        self._submit(backlog)

    # -- from clients and task workers (event loop) ---------------------------------------
    def _on_stream(self, enqueue: list | None = None, events: list | None = None, tasks: list | None = None,
                   **_: Any) -> None:
        put = self.writer.put
        for call in calls_from_wire(enqueue or [], tasks or []):
            put(Enqueue({"id": call.run_id, "task_key": call.task_key, "task_name": call.task_name,
                         "task": call.task, "args": call.args, "flow_run_id": call.flow_run_id,
                         "submitted": call.submitted, "key": f"{call.task_name}-{call.run_id}"}))
        for item in events or ():
            msg = from_wire(item)
            if type(msg) is FinalState:
                self._final_arrived(msg.run_id)
                if msg.logs:
                    store.record_logs(msg.logs)
                    msg.logs = None
            put(msg)

    def _final_arrived(self, rid: str) -> None:
        """Run ``rid``'s final state is on its way to the store: no chunk runs it again."""
        if rid in self.active:
            self.finished.add(rid)
        if rid == self.alone_now:
            self.loop.call_soon(self._next_alone, rid)

    def log_event(self, topic: str, msg: Any) -> None:
        # Run logs shipped while a background run executes (a worker's batch of tracker
        # messages, engine/worker/reports.py): record those of our runs here, on the server's host.
        if topic != TOPIC or not isinstance(msg, dict) or not (self.active or self.recent):
            return
        active, recent = self.active, self.recent
        try:
            shipped = batch_from_wire(msg, only=LogsShipped)
        except (KeyError, TypeError):  # not a daskflow message
            return
        mine = [r for m in shipped for r in m.records
                if (rid := str(uuid.UUID(bytes=bytes(r[0][:16])))) in active or rid in recent]
        if mine:
            store.record_logs(mine)

    def transition(self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str = "",
                   **kwargs: Any) -> None:
        rids = self.keys.get(key)  # type: ignore[arg-type]
        if rids is None:
            return
        now = time.time()
        put, finished = self.writer.put, self.finished
        if finish in ("memory", "erred", "forgotten") and self.alone_now in rids:
            self.loop.call_soon(self._next_alone, self.alone_now)  # after this transition's records
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            worker = ts.processing_on.address if ts is not None and ts.processing_on else None
            for rid in rids:
                if rid not in finished:
                    put(StateChange(rid, "PENDING", "Pending", now, "", worker))
        elif start == "processing" and finish in ("released", "waiting", "no-worker"):
            self.taken.difference_update(rids)  # back in the queue: cancellable again
            for rid in rids:
                if rid not in finished:
                    put(StateChange(rid, "SCHEDULED", "Scheduled", now,
                                    "its task worker was lost; waiting for a task worker"))
        elif finish == "erred" and sum(rid not in finished for rid in rids) > 1:
            # Dask gave up on a chunk (its workers died running it): maybe because of one
            # of its runs. Each run not final goes again alone, so only such a run ends Crashed.
            left = [rid for rid in rids if rid not in finished]
            del self.keys[key]
            self.active.difference_update(left)
            self.taken.difference_update(left)
            self.loop.call_soon(self._resubmit_alone, left)
        elif finish == "erred":
            ts = self.scheduler.tasks.get(key)
            text = (getattr(ts, "exception_text", "") or kwargs.get("exception_text") or "") if ts else ""
            message = f"the run crashed outside of the task's code: {text or 'Dask gave up on it'}"
            for rid in rids:
                if rid not in finished:
                    put(FinalState(rid, "CRASHED", "Crashed", now, message, error=message))
        elif finish == "forgotten":
            recent = self.recent
            for rid in self.keys.pop(key, ()):  # type: ignore[arg-type]
                self.active.discard(rid)
                finished.discard(rid)
                self.taken.discard(rid)
                recent[rid] = None
            while len(recent) > 10_000:
                del recent[next(iter(recent))]

    # -- submission (event loop) ----------------------------------------------------------
    def _resubmit_alone(self, run_ids: list[str]) -> None:
        """Submit each of ``run_ids`` again as a chunk of its own, one at a time.

        One at a time: a run that kills its worker must be the only one Dask gives up on
        (with ``allowed-failures`` reached, Dask gives up on every call the dead worker
        held, and the final state of a run that just completed there may be lost with it).
        """
        logger.warning("daskflow server: Dask gave up on a chunk of %d unfinished background run(s); "
                       "submitting each again on its own", len(run_ids))
        self.alone.extend(run_ids)
        if self.alone_now is None:
            self._next_alone(None)

    def _next_alone(self, ended: str | None) -> None:
        """Submit the next run waiting to go again alone, once run ``ended`` (the one out) ended."""
        if ended != self.alone_now:
            return  # told twice (its final state, then Dask's end of the call)
        self.alone_now = None
        while self.alone:
            entries = store.queued(self.env, [self.alone.popleft()])
            if entries:  # still queued: not final
                self.alone_now = entries[0]["id"]
                self._submit(entries, alone=True)
                return

    def _submit(self, entries: list[dict], alone: bool = False) -> None:
        if not entries:
            return
        if self.client is None:
            self._backlog.extend(entries)
            return
        from distributed import fire_and_forget

        from daskflow.background.worker import QueuedRun, run_background_chunk

        groups: dict[tuple[str, bytes], list[dict]] = {}  # by task key and task (with_options may differ)
        active = self.active
        for e in entries:
            if e["id"] in active:  # already submitted (a resubmission racing the first)
                continue
            active.add(e["id"])
            groups.setdefault((e["task_key"], e["task"]), []).append(e)
        resources = self.scheduler.resources
        for (task_key, _), group in groups.items():
            size = 1 if alone else chunk_size(len(group), sum(resources.get(task_key, {}).values()))
            chunks = [group[i:i + size] for i in range(0, len(group), size)]
            keys = [f"{c[0]['key']}+{len(c) - 1}" if len(c) > 1 else c[0]["key"] for c in chunks]
            for key, chunk in zip(keys, chunks):
                self.keys[key] = [e["id"] for e in chunk]
            futures = self.client.map(
                run_background_chunk, [c[0]["task"] for c in chunks],
                [[QueuedRun(e["id"], e["args"], e.get("flow_run_id")) for e in c] for c in chunks],
                key=keys, resources={task_key: 1}, pure=False,
            )
            fire_and_forget(futures)

    def _committed(self, submits: list[dict], finals: list[tuple[str, Outcome]]) -> None:
        """Called on the event loop after the writer committed a batch."""
        self._submit(submits)
        if self.arrivals:
            for e in submits:
                for fut in self.arrivals.pop(e["id"], ()):
                    if not fut.done():
                        fut.set_result(True)
        for rid, outcome in finals:
            for fut in self.waiters.pop(rid, ()):
                if not fut.done():
                    fut.set_result(outcome)

    # -- handlers for readers (event loop) ------------------------------------------------
    async def _wait(self, run_ids: list[str], timeout: float | None = None) -> dict:
        """Final records (and result blobs) of ``run_ids``, waiting up to ``timeout`` seconds.

        A run id the store does not know gets a few seconds to arrive (its enqueue may
        still be on its way); then it is reported under ``"unknown"``.
        """
        start = time.monotonic()
        unknown: list[str] = []
        present = store.read_records(run_ids, self.env)
        missing = [rid for rid in run_ids if rid not in present]
        if missing:
            # the full grace even for timeout=0: an enqueue still on its way is not unknown
            unknown = await self._await_arrival(missing, ARRIVAL_GRACE)
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        # No await from this read until the waiters are registered: a final state
        # committed in between would otherwise be missed.
        known = store.read_records(run_ids, self.env, results=True)
        out: dict = {rid: outcome_to_wire(o) for rid, o in known.items() if store.is_final(o.record)}
        if unknown:
            out["unknown"] = unknown
        pending = [rid for rid in run_ids if rid not in out and rid not in unknown]
        if not pending or timeout == 0:
            return out
        futs = {}
        for rid in pending:
            fut = self.loop.create_future()
            self.waiters.setdefault(rid, []).append(fut)
            futs[fut] = rid
        try:
            done, _ = await asyncio.wait(list(futs), timeout=timeout)
        finally:
            for fut, rid in futs.items():
                lst = self.waiters.get(rid)
                if lst and fut in lst:
                    lst.remove(fut)
                    if not lst:
                        del self.waiters[rid]
        for fut in done:
            out[futs[fut]] = outcome_to_wire(fut.result())
        return out

    async def _await_arrival(self, run_ids: list[str], grace: float) -> list[str]:
        """Wait up to ``grace`` s for runs to be enqueued; the ids that never were."""
        futs = {}
        for rid in run_ids:
            fut = self.loop.create_future()
            self.arrivals.setdefault(rid, []).append(fut)
            futs[fut] = rid
        # enqueued between our read and now? (their commit ran on this loop already)
        now_known = store.read_records(run_ids, self.env)
        for fut, rid in futs.items():
            if rid in now_known and not fut.done():
                fut.set_result(True)
        if not all(f.done() for f in futs):
            await asyncio.wait(list(futs), timeout=grace)
        unknown = [rid for fut, rid in futs.items() if not fut.done()]
        for fut, rid in futs.items():
            lst = self.arrivals.get(rid)
            if lst and fut in lst:
                lst.remove(fut)
                if not lst:
                    del self.arrivals[rid]
        return unknown

    def _todo(self, key: str) -> list[str] | None:
        """The run ids of chunk ``key`` whose final state has not arrived (None: not a chunk of ours).

        The task worker runs those: from now on they are taken, no longer cancellable.
        """
        rids = self.keys.get(key)
        if rids is None:
            return None
        finished = self.finished
        todo = [rid for rid in rids if rid not in finished]
        self.taken.update(todo)
        return todo

    async def _cancel(self, run_ids: list[str]) -> list[str]:
        """Cancel the runs of ``run_ids`` that no task worker has taken; the ids cancelled.

        A run not final and not taken (``_todo`` did not hand it to a worker) is noted
        finished at once, on this event loop, so a chunk that starts later skips it, and
        ends ``Cancelled`` (its queue entry deleted with that record). Its Dask task is left
        to Dask: a task worker runs it later as a chunk with nothing to do. A run taken or
        final is left as it is.
        """
        present = store.read_records(run_ids, self.env)
        missing = [rid for rid in run_ids if rid not in present]
        unknown = set(await self._await_arrival(missing, ARRIVAL_GRACE)) if missing else set()
        # No await from this read on: a final state or a _todo cannot slip in between.
        known = store.read_records(run_ids, self.env)
        now = time.time()
        cancelled = []
        for rid in run_ids:
            if (rid in unknown or rid not in known or store.is_final(known[rid].record) or rid in self.finished
                    or rid in self.taken):
                continue
            self.finished.add(rid)  # a chunk that starts later skips it (also one not submitted yet)
            if rid == self.alone_now:
                self.loop.call_soon(self._next_alone, rid)
            self.writer.put(FinalState(rid, "CANCELLED", "Cancelled", now, "cancelled before a task worker took it",
                                       run_count=0))
            cancelled.append(rid)
        return cancelled

    def _get(self, run_ids: list[str]) -> dict:
        """The latest known records of ``run_ids`` (no results)."""
        return {rid: store.pack(o.record) for rid, o in store.read_records(run_ids, self.env).items()}


class QueueWriter(threading.Thread):
    """The one writer of the background store: applies queued ops in batches."""

    def __init__(self, plugin: BackgroundPlugin) -> None:
        super().__init__(name="daskflow-background-writer", daemon=True)
        self.plugin = plugin
        self.env = plugin.env
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.put = self.queue.put
        # The committed records of runs not final yet: this thread is the store's only
        # writer, so a batch starts from these (copied) instead of reading and unpacking.
        self.live: dict[str, dict] = {}

    def stop(self) -> None:
        self.queue.put(STOP)

    def run(self) -> None:
        stopping = False
        busy = False
        while not stopping:
            batch = self._take(busy)
            busy = len(batch) >= BUSY_BATCH
            if STOP in batch:
                stopping = True
                batch = [op for op in batch if op is not STOP]
            for submits, finals, changes in self._commit(batch):
                try:
                    store.record_states(changes)
                except Exception:  # noqa: BLE001 - observability must not stop the queue
                    logger.exception("daskflow server: recording background run states failed")
                if submits or finals:
                    try:
                        self.plugin.loop.call_soon_threadsafe(self.plugin._committed, submits, finals)
                    except RuntimeError:  # the loop is closed: the server is stopping
                        pass

    def _take(self, busy: bool) -> list[WriterOp]:
        """The next batch: what is queued; when busy, what arrives within ``COALESCE`` seconds too.

        Under load the states of a run (Pending, Running, final) come within a few tens
        of ms: taken together they cost one record write in each store instead of three.
        """
        batch = [self.queue.get()]
        deadline = time.monotonic() + COALESCE if busy else 0.0
        while True:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or STOP in batch[-1:]:
                    return batch
                try:
                    batch.append(self.queue.get(timeout=left))
                except queue.Empty:
                    return batch

    def _commit(self, batch: list[WriterOp]) -> list[Committed]:
        """Apply ``batch`` in one transaction; if that fails, op by op, so a bad op loses only itself."""
        try:
            done = self.env.write(lambda txn: self._apply(txn, batch))
        except Exception:  # noqa: BLE001 - the writer must survive a bad op
            if len(batch) == 1:
                logger.exception("daskflow server: writing background op %r failed", batch[0])
                return []
        else:
            live = self.live
            for rec, _ in done.changes:
                if store.is_final(rec):
                    live.pop(rec["id"], None)
                else:
                    live[rec["id"]] = rec
            return [done]
        out: list[Committed] = []
        for op in batch:
            out.extend(self._commit([op]))
        return out

    def _apply(self, txn: Any, batch: list[WriterOp]) -> Committed:
        """Apply a batch of queue operations in one LMDB write transaction.

        One function because the batch shares a per-transaction cache of run records
        (``record``) so that many events of one run cost one read and one write.
        """
        env = self.env
        qdb, rdb, resdb = env.db("queue"), env.db("runs"), env.db("results")
        records: dict[str, dict | None] = {}
        seen: dict[str, int] = {}  # run id -> history entries already recorded before this batch
        submits: list[dict] = []
        finals: list[tuple[str, Outcome]] = []
        secret: bytes | None = None  # read on first use, once per batch

        live = self.live

        def record(rid: str) -> dict | None:
            if rid not in records:
                known = live.get(rid)
                if known is not None:  # committed, not final: a copy (this transaction may fail or replay)
                    rec = records[rid] = dict(known, history=list(known["history"]))
                else:
                    raw = txn.get(rid.encode(), db=rdb)
                    rec = records[rid] = store.unpack(raw) if raw is not None else None
                if rec is not None:
                    seen[rid] = len(rec["history"])
            return records[rid]

        for op in batch:
            if type(op) is Enqueue:
                entry = op.entry
                rid = entry["id"]
                if record(rid) is not None:
                    continue  # a duplicate enqueue
                secret = secret or store.secret(env)
                txn.put(rid.encode(), store.seal_entry(env, entry, secret), db=qdb)
                records[rid] = store.new_record(entry)
                seen[rid] = 0
                submits.append(entry)
                continue
            rec = record(op.run_id)  # type: ignore[union-attr]
            if rec is None or store.is_final(rec):
                continue  # unknown run, or a late duplicate after the first final state
            if type(op) is StateChange:
                rec["history"].append({"name": op.name, "type": op.type, "timestamp": op.timestamp,
                                       "message": op.message})
                rec["state"], rec["state_type"] = op.name, op.type
                if op.worker:
                    rec["worker"] = op.worker
                if op.type == "RUNNING" and rec["start"] is None:
                    rec["start"] = op.timestamp
                    rec["run_count"] = max(rec["run_count"], 1)
            elif type(op) is FinalState:
                finals.append((op.run_id, Outcome(_finish(rec, op), op.result)))
                if op.result is not None:
                    secret = secret or store.secret(env)
                    txn.put(op.run_id.encode(), store.seal_result(env, op.result, secret), db=resdb)
                txn.delete(op.run_id.encode(), db=qdb)
        changed = [r for r in records.values() if r is not None and len(r["history"]) > seen.get(r["id"], 0)]
        store.write_records(env, txn, changed)
        return Committed(submits, finals, [RunChange(r, r["history"][seen.get(r["id"], 0):]) for r in changed])


class Committed(NamedTuple):
    """What one write transaction of the queue writer did."""

    submits: list[dict]  # queue entries made durable: submit them now
    finals: list[tuple[str, Outcome]]  # (run id, outcome) of runs that became final: wake their readers
    changes: list[RunChange]  # for the run store


def _finish(rec: dict, final: FinalState) -> dict:
    """Record ``final`` in run record ``rec`` (not final yet); return it."""
    for event in final.history:
        rec["history"].append({"name": event.name, "type": event.type, "timestamp": event.timestamp,
                               "message": event.message})
    rec["history"].append({"name": final.name, "type": final.type, "timestamp": final.timestamp,
                           "message": final.message})
    rec["state"], rec["state_type"], rec["end"] = final.name, final.type, final.timestamp
    rec["error"] = final.error
    if final.run_count is not None:
        rec["run_count"] = final.run_count
    if final.worker:
        rec["worker"] = final.worker
    rec["persisted"] = final.persisted
    if final.resources:
        rec["resources"] = final.resources
    return rec
