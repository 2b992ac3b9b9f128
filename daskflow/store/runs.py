"""The run store: flow runs, task runs, state history and logs in LMDB, read by the CLI.

Layout, and why. A ``.map()`` over 10^6 elements must not become 10^6 records, so the
unit of storage is the *chunk* (the runs one Dask task executed): one msgpack record
holding its final state codes and end times as packed arrays, plus per-run extras only
for the runs that have some (errors, tracebacks, retries). Readers expand a chunk into
per-run rows (``store/rows.py``). Run ids need no storage: run ``i`` of a submission is
``run_id(base, i)``, and since the id stride is odd the index of an id is computable
from ``base`` (``index_of``), so "show run ID" still finds its chunk.

Databases of the ``$DASKFLOW_HOME/runs`` environment:

- ``chunks``   base (16 bytes) + start (8, big endian) → chunk record (msgpack)
- ``bytime``   submitted µs (8, big endian) + chunk key → run count: newest-first listing, prune
- ``flows``    flow run id (16) → flow run record
- ``byflow``   flow run id + chunk key → b"": a flow run's task runs
- ``logs``     owner (24: a chunk key, or flow run id + 8 x ff) + index (4) + µs (8) + seq (4) → record
- ``owners``   owner key (16, ``daskflow.owners``) → the owning process and its lease
- ``owned``    owner key + ``b"c"`` + chunk key, or + ``b"f"`` + flow run id → b"": its non-final records
- ``artifacts``, ``artkeys``: run artifacts and their index by key (``store/artifacts.py``)
- ``metrics``  counters kept by the writer for ``/metrics`` (``store/metrics.py``)
- ``inputs``   chunk key + index (4) → ``{argument: short repr}`` of a Failed, TimedOut or
  Crashed run (only those have one: kept apart from the chunk record, which stays compact)
- ``odd``, ``flowcounts``, ``flowtime``, ``meta``: chunks with runs not simply Completed,
  runs per state of each flow run, flow runs by start (``store/indexes.py``)

On disk a chunk record's codes and times are packed (``store/packing.py``): a chunk
of plain completed runs costs about a byte per run. The history is bounded
(``daskflow.runs.keep``, ``store/retention.py``).

Runs that die with their process. A record created with an ``owner`` field (the tracker
adds it to flow runs and submitted chunks, never per element) is indexed in ``owned``
while it is not final; ``end_dead_owners`` ends the indexed records of owners that are
gone as Crashed. Every process that opens the store to write (a flow's writer thread,
the CLI) calls it once, so no run outlives its owner non-final.

Records are msgpack, never pickles, so the CLI reads them without importing user code.
One writer (the tracker's thread) writes batches: ``apply`` runs a whole batch of
updates in one LMDB transaction.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from array import array
from typing import Any, Iterable, Iterator, NamedTuple


from daskflow import _lmdb, config
from daskflow.codes import CODE_STATES, CRASHED
from daskflow.exceptions import DamagedStore
from daskflow.owners import Lease, Owner, is_alive
from daskflow.ids import parse_id_prefix, prefix_matches
from daskflow.store import metrics
from daskflow.store.artifacts import ARTIFACTS_LOGGER, put_artifact
from daskflow.store.indexes import (Deltas, build_indexes, flow_counts, index_chunk, index_flow, index_owned, indexed,
                                     time_key, write_counts)
from daskflow.store.packing import known_times, pack, pack_chunk, unpack, unpack_chunk
from daskflow.store import retention
from daskflow.store.paging import RunPage, decode_cursor, encode_cursor
from daskflow.store.rows import (bad_runs, chunk_counts, expand, final_message, history, run_resources,
                                 runs_in_state, slowest_runs, wanted_chunk)

__all__ = ["ChunkUpdate", "FlowUpdate", "LogLine", "RunPage", "RunStore", "open_run_store"]

DBS = ("chunks", "bytime", "flows", "byflow", "logs", "owners", "owned", "artifacts", "artkeys", "odd", "flowcounts",
       "flowtime", "meta", "metrics", "inputs")
_FINAL_TYPES = frozenset(cs.type for cs in CODE_STATES.values())
_FLOW_OWNER = b"\xff" * 8
_seq = itertools.count()

_DICT_FIELDS = ("messages", "tracebacks", "history", "run_counts", "names", "cache_keys")


class ChunkUpdate(NamedTuple):
    """Fold ``fields`` into the record of chunk ``(base, start)``; ``new``: a fresh base, no merge."""

    base: int
    start: int
    fields: dict[str, Any]
    new: bool = False


class FlowUpdate(NamedTuple):
    flow_run_id: str
    fields: dict[str, Any]


class LogLine(NamedTuple):
    """One run log record; ``owner`` is a chunk key, or a flow run id + 8 x ff."""

    owner: bytes
    index: int
    timestamp: float
    level: int
    message: str
    logger: str


def chunk_key(base: int, start: int) -> bytes:
    return base.to_bytes(16, "big") + start.to_bytes(8, "big")


_us = time_key


def _merge(old: dict, new: dict) -> dict:
    """Fold an update into a chunk or flow record; a final state is never replaced by a live one."""
    if old.get("codes") is not None and new.get("codes") is None:
        new = {k: v for k, v in new.items() if k not in ("live", "started")}
    for name in _DICT_FIELDS:
        if name in new and name in old:
            merged = dict(old[name])
            merged.update(new[name])
            new = dict(new, **{name: merged})
    events = new.get("events")
    if events and old.get("events"):
        merged = {int(k): list(v) for k, v in old["events"].items()}
        for k, v in events.items():
            merged.setdefault(int(k), []).extend(v)
        new = dict(new, events=merged)
    out = dict(old)
    out.update(new)
    if old.get("submitted"):  # the first submission time stays (it keys the time index)
        out["submitted"] = old["submitted"]
    return out


class RunStore:
    """Task runs, flow runs and logs of ``$DASKFLOW_HOME/runs``.

    Example:
        >>> store = open_run_store()                    # doctest: +SKIP
        >>> [r["state"] for r in store.task_runs(limit=3)]  # doctest: +SKIP
        ['Completed', 'Completed', 'Failed']
    """

    def __init__(self, env: _lmdb.Env) -> None:
        self.env = env
        self._db = {name: env.db(name) for name in DBS if env.has_db(name)}

    @property
    def dbs(self) -> dict[str, Any]:
        """The store's databases by name (one an older version did not write may be missing)."""
        return self._db

    # -- writing (the tracker's writer thread) ------------------------------------------
    def apply(self, ops: Iterable[ChunkUpdate | FlowUpdate | LogLine], lease: Lease | None = None) -> None:
        """Apply a batch of updates in one write transaction.

        ``lease`` (the writing process's) is recorded in the same transaction: give it
        with the first records that name their owner, and to renew it.
        """
        ops = list(ops)
        if ops or lease is not None:
            self.env.write(lambda txn: self._apply(txn, ops, lease))

    def _apply(self, txn: Any, ops: list[ChunkUpdate | FlowUpdate | LogLine], lease: Lease | None = None) -> None:
        db = self._db
        if lease is not None:
            owner = lease.owner
            txn.put(owner.key, pack({"host": owner.host, "pid": owner.pid, "started": owner.started,
                                     "lease_until": lease.until}), db=db["owners"])
        counters = db.get("metrics")
        if counters is not None:
            metrics.count_all(txn, counters, lambda: txn.cursor(db=db["chunks"]), unpack_chunk)
        delta: metrics.Delta = {}
        chunks: dict[bytes, ChunkUpdate] = {}  # a chunk's updates of this batch, folded into one
        for op in ops:
            if isinstance(op, ChunkUpdate):
                key = chunk_key(op.base, op.start)
                if "inputs" in op.fields:  # failed runs' inputs: their own records, keyed by run
                    fields = dict(op.fields)
                    for i, reprs in fields.pop("inputs").items():
                        txn.put(key + int(i).to_bytes(4, "big"), pack(reprs), db=db["inputs"])
                    op = op._replace(fields=fields)
                seen = chunks.get(key)
                chunks[key] = op if seen is None else ChunkUpdate(op.base, op.start, _merge(seen.fields, op.fields),
                                                                  seen.new)
            elif isinstance(op, FlowUpdate):
                key = uuid.UUID(op.flow_run_id).bytes
                raw = txn.get(key, db=db["flows"])
                old = None if raw is None else unpack(raw)
                rec = dict(op.fields, id=op.flow_run_id) if old is None else _merge(old, op.fields)
                index_owned(txn, db["owned"], rec, b"f" + key, rec.get("state_type") not in _FINAL_TYPES)
                index_flow(txn, db, key, old, rec)
                txn.put(key, pack(rec), db=db["flows"])
            else:
                key = (op.owner + op.index.to_bytes(4, "big") + _us(op.timestamp)
                       + (next(_seq) & 0xFFFFFFFF).to_bytes(4, "big"))
                if op.logger == ARTIFACTS_LOGGER:  # an artifact travels as a log record; kept apart
                    put_artifact(txn, db, key, op.message)
                    continue
                txn.put(key, pack({"timestamp": op.timestamp, "level": op.level, "message": op.message,
                                   "logger": op.logger}), db=db["logs"])
        deltas: Deltas = {}
        for key, op in chunks.items():
            raw = None if op.new else txn.get(key, db=db["chunks"])
            old = None if raw is None else unpack_chunk(raw)
            if old is None:
                rec = dict(op.fields, base=op.base.to_bytes(16, "big"), start=op.start)
                rec.setdefault("submitted", time.time())
                txn.put(_us(rec["submitted"]) + key, rec.get("n", 1).to_bytes(4, "big"), db=db["bytime"])
                fid = _uuid_bytes(rec.get("flow_run_id"))
                if fid:
                    txn.put(fid + key, b"", db=db["byflow"])
            else:
                rec = _merge(old, known_times(old, op.fields))
            metrics.change(old, rec, delta)
            index_owned(txn, db["owned"], rec, b"c" + key, rec.get("codes") is None)
            index_chunk(txn, db, key, old, rec, deltas)
            txn.put(key, pack_chunk(rec), db=db["chunks"])
        write_counts(txn, db, deltas)
        if counters is not None:
            metrics.add(txn, counters, delta)

    # -- runs of owners that died -----------------------------------------------------------
    def end_dead_owners(self) -> list[Owner]:
        """End the non-final runs of every owner that died as Crashed; the owners ended.

        Liveness is checked outside the write transaction (psutil calls); a dead owner
        writes nothing more, so its records cannot change in between. Owners that ended
        with nothing in flight are forgotten the same way.
        """
        db = self._db
        known = self.env.read(lambda txn: [(bytes(k), unpack(v)) for k, v in txn.cursor(db=db["owners"])])
        now = time.time()
        dead = [(key, Owner(rec["host"], rec["pid"], rec["started"])) for key, rec in known
                if not is_alive(Owner(rec["host"], rec["pid"], rec["started"]), rec.get("lease_until"), now)]
        if dead:
            self.env.write(lambda txn: [self._end_owned(txn, key, owner, now) for key, owner in dead])
        return [owner for _, owner in dead]

    def _end_owned(self, txn: Any, key: bytes, owner: Owner, now: float) -> None:
        db = self._db
        message = f"the process that ran it died: {owner.describe()}"
        cur = txn.cursor(db=db["owned"])
        entries = []
        if cur.set_range(key):
            for k, _ in cur:
                if not k.startswith(key):
                    break
                entries.append(bytes(k))
        deltas: Deltas = {}
        for k in entries:
            kind, rkey = k[16:17], k[17:]
            raw = txn.get(rkey, db=db["chunks"] if kind == b"c" else db["flows"])
            if raw is not None and kind == b"c":
                old = unpack_chunk(raw)
                if old.get("codes") is None:
                    rec = dict(old, codes=bytes([CRASHED]) * old["n"], ends=array("d", [now]).tobytes() * old["n"],
                               live=None, message=message)
                    index_chunk(txn, db, rkey, old, rec, deltas)
                    counted: metrics.Delta = {}
                    metrics.change(old, rec, counted)
                    if "metrics" in db:
                        metrics.add(txn, db["metrics"], counted)
                    txn.put(rkey, pack_chunk(rec), db=db["chunks"])
            elif raw is not None:
                rec = unpack(raw)
                if rec.get("state_type") not in _FINAL_TYPES:
                    rec.update(state="Crashed", state_type="CRASHED", end=now, message=message)
                    txn.put(rkey, pack(rec), db=db["flows"])
            txn.delete(k, db=db["owned"])
        txn.delete(key, db=db["owners"])
        write_counts(txn, db, deltas)

    # -- reading ----------------------------------------------------------------------
    def owner_record(self, key: bytes | str | None) -> dict | None:
        """The owning process of a record (its ``owner`` field, bytes or hex): host, pid, started, lease."""
        if isinstance(key, str):
            key = bytes.fromhex(key)
        if not key:
            return None
        raw = self.env.read(lambda txn: txn.get(key, db=self._db["owners"]))
        return None if raw is None else unpack(raw)

    def _chunks_newest_first(self, txn: Any) -> Iterator[tuple[bytes, dict]]:
        cur = txn.cursor(db=self._db["bytime"])
        if not cur.last():
            return
        chunks = self._db["chunks"]
        while True:
            key = cur.key()[8:]
            raw = txn.get(key, db=chunks)
            if raw is not None:
                yield key, unpack_chunk(raw)
            if not cur.prev():
                return

    def task_runs(self, state: str | None = None, task: str | None = None, flow_run_id: str | None = None,
                  limit: int | None = 50) -> list[dict]:
        """Task-run rows, newest first, filtered by state name, task name and flow run."""
        return self.task_runs_page(state, task, flow_run_id, limit).rows

    def task_runs_page(self, state: str | None = None, task: str | None = None, flow_run_id: str | None = None,
                       limit: int | None = 50, after: str | None = None, id_prefix: str | None = None,
                       budget: float | None = None) -> RunPage:
        """One page of task-run rows, newest first, and the cursor of the next page.

        Walks the time index from the newest chunk (or from ``after``, a cursor of an
        earlier page) and expands only the runs it returns, so a page of a store of
        10^6 runs costs what the page holds. ``budget`` (seconds) bounds the walk when a
        rare filter would scan far: the page may then be short, its cursor says where
        to go on. Rows come in the cursor's own order, which never changes as runs arrive
        or end: the newest submission first, and a submission's runs last index first
        (a page re-sorted by start time would interleave with its neighbours' rows).
        """
        state_l = state.lower() if state else None
        wanted = parse_id_prefix(id_prefix) if id_prefix else None
        deadline = None if budget is None else time.monotonic() + budget

        def read(txn: Any) -> RunPage:
            out: list[dict] = []
            # a state other than Completed: only chunks with such runs, from their index (store/indexes.py)
            rare = state_l is not None and state_l != "completed" and indexed(txn, self._db)
            cur = txn.cursor(db=self._db["odd" if rare else "bytime"])
            upto = None
            if after:
                key, upto = decode_cursor(after)
                if not cur.set_range(key):
                    positioned, upto = cur.last(), None
                elif cur.key() != key:
                    positioned, upto = cur.prev(), None
                else:
                    positioned = True
            else:
                positioned = cur.last()
            while positioned:
                tkey = cur.key()
                raw = txn.get(tkey[8:], db=self._db["chunks"])
                rec = None if raw is None else unpack_chunk(raw)
                if rec is not None and wanted_chunk(rec, task, flow_run_id, state_l):
                    indexes = range(rec["n"] if upto is None else upto)
                    if state_l:  # from the codes: a failed run among 10^4 costs no 10^4 rows
                        indexes = runs_in_state(rec, state_l, indexes)
                    if wanted is not None:
                        indexes = [i for i in prefix_matches(int.from_bytes(rec["base"], "big"), rec["start"],
                                                             len(indexes), *wanted)]
                    for i in reversed(indexes):
                        row = expand(rec, i)
                        if state_l and state_l not in (row["state"].lower(), row["state_type"].lower()):
                            continue
                        out.append(row)
                        if limit is not None and len(out) >= limit:
                            return RunPage(out, encode_cursor(tkey, i))
                upto = None
                if deadline is not None and time.monotonic() > deadline:
                    return RunPage(out, encode_cursor(tkey, 0))
                positioned = cur.prev()
            return RunPage(out, None)

        return self.env.read(read)

    def run_states(self, run_ids: Iterable[str]) -> dict[str, str]:
        """State names of runs recorded one record per run id (background runs); unknown ids are left out."""
        def read(txn: Any) -> dict[str, str]:
            out = {}
            for rid in run_ids:
                raw = txn.get(chunk_key(uuid.UUID(rid).int, 0), db=self._db["chunks"])
                if raw is not None:
                    out[rid] = expand(unpack_chunk(raw), 0)["state"]
            return out

        return self.env.read(read)

    def count(self) -> int:
        """How many task runs the store holds (from the time index; expands nothing)."""
        return self.env.read(lambda txn: sum(int.from_bytes(v, "big") for _, v in txn.cursor(db=self._db["bytime"])))

    def counters(self) -> metrics.Counters | None:
        """The writer's running totals (``store/metrics.py``); None before a writer of this version wrote."""
        db = self._db.get("metrics")
        if db is None:
            return None
        return self.env.read(lambda txn: metrics.read_counters(txn, db) if txn.get(metrics.COUNTED, db=db) else None)

    def resolve(self, prefix: str) -> tuple[bytes, int]:
        """The chunk key and index of the task run whose id starts with ``prefix``.

        Raises ``LookupError`` when no run or more than one run matches.
        """
        wanted = parse_id_prefix(prefix)

        def read(txn: Any) -> list[tuple[bytes, int]]:
            found: list[tuple[bytes, int]] = []
            cur = txn.cursor(db=self._db["bytime"])
            for key, nbytes in cur:
                ck = key[8:]
                base, start, n = int.from_bytes(ck[:16], "big"), int.from_bytes(ck[16:], "big"), int.from_bytes(nbytes, "big")
                for i in prefix_matches(base, start, n, *wanted):
                    found.append((ck, i))
                    if len(found) > 1:
                        return found
            return found

        found = self.env.read(read)
        if not found:
            raise LookupError(f"no task run with id {prefix!r}")
        if len(found) > 1:
            raise LookupError(f"task run id prefix {prefix!r} is ambiguous; give more digits")
        return found[0]

    def task_run(self, prefix: str) -> dict:
        """One task run with its state history, error and traceback (``LookupError`` if unknown)."""
        key, i = self.resolve(prefix)
        raw = self.env.read(lambda txn: txn.get(key, db=self._db["chunks"]))
        if raw is None:  # pruned since it was found
            raise LookupError(f"no task run with id {prefix!r}")
        rec = unpack_chunk(raw)
        row = expand(rec, i)
        row["history"] = history(rec, i)
        row["error"] = (final_message(rec, i) or None) if row["state_type"] != "COMPLETED" else None
        row["traceback"] = (rec.get("tracebacks") or {}).get(i)
        row["cache_key"] = (rec.get("cache_keys") or {}).get(i)
        row["resources"] = run_resources(rec, i, row)
        row["inputs"] = self._inputs(key, i)
        return row

    def _inputs(self, key: bytes, i: int) -> dict[str, str] | None:
        """The short reprs of a failed run's arguments, if recorded (``inputs``)."""
        db = self._db.get("inputs")
        if db is None:  # a store an older version wrote
            return None
        raw = self.env.read(lambda txn: txn.get(key + i.to_bytes(4, "big"), db=db))
        return unpack(raw) if raw is not None else None

    def logs(self, prefix: str, tail: int | None = None) -> list[dict]:
        """Log records of a task run (id prefix) or a flow run (full id or prefix), oldest first."""
        try:
            key, i = self.resolve(prefix)
            owner = key + i.to_bytes(4, "big")
        except LookupError:
            owner = uuid.UUID(self.flow_record(prefix)["id"]).bytes + _FLOW_OWNER + bytes(4)

        def read(txn: Any) -> list[dict]:
            cur = txn.cursor(db=self._db["logs"])
            out = []
            if cur.set_range(owner):
                for k, v in cur:
                    if not k.startswith(owner):
                        break
                    out.append(unpack(v))
            return out

        records = self.env.read(read)
        return records[-tail:] if tail else records

    def flow_runs(self, limit: int | None = 50) -> list[dict]:
        """Flow-run records, newest first (the newest ``limit`` read from the start index)."""
        def read(txn: Any) -> list[dict]:
            if not limit or not indexed(txn, self._db):
                return [_flow_row(unpack(v)) for _, v in txn.cursor(db=self._db["flows"])]
            out: list[dict] = []
            cur = txn.cursor(db=self._db["flowtime"])
            positioned = cur.last()
            while positioned and len(out) < limit:
                raw = txn.get(cur.key()[8:], db=self._db["flows"])
                if raw is not None:
                    out.append(_flow_row(unpack(raw)))
                positioned = cur.prev()
            return out

        rows = sorted(self.env.read(read), key=lambda r: r.get("start") or 0, reverse=True)
        return rows[:limit] if limit else rows

    def flow_counts(self, flow_run_id: str) -> dict[str, int]:
        """A flow run's task runs per state name (full id): from the index, else from its chunks."""
        counts = self.env.read(lambda txn: flow_counts(txn, self._db, flow_run_id))
        if counts is None:  # a store not indexed yet (opened read-only)
            counts = {}
            for chunk in self.flow_chunks(flow_run_id):
                for name, n in chunk_counts(chunk).items():
                    counts[name] = counts.get(name, 0) + n
        return counts

    def flow_record(self, prefix: str) -> dict:
        """The record of the flow run whose id starts with ``prefix`` (``LookupError`` if none or several)."""
        digits = prefix.replace("-", "").lower()
        matches = self.env.read(lambda txn: _flows_with_prefix(txn, self._db["flows"], digits))
        if not matches:
            raise LookupError(f"no flow run with id {prefix!r}")
        if len(matches) > 1:
            raise LookupError(f"flow run id prefix {prefix!r} is ambiguous; give more digits")
        return dict(matches[0])

    def flow_run(self, prefix: str, slowest: int = 5, failures: int = 10) -> dict:
        """One flow run with its task runs' counts per state, its slowest task runs, and its failures.

        ``failures``: up to that many bad runs, root causes first (Failed, TimedOut, Crashed,
        earliest end first), then the runs that did not run because of them (NotReady).
        """
        rec = self.flow_record(prefix)
        counts = self.flow_counts(rec["id"])
        durations: list[tuple[float, dict]] = []
        causes: list[dict] = []
        consequences: list[dict] = []
        for chunk in self.flow_chunks(rec["id"]):
            durations.extend(slowest_runs(chunk, slowest))
            bad_runs(chunk, causes, consequences, failures)
        durations.sort(key=lambda d: d[0], reverse=True)
        rec["counts"] = counts
        rec["task_runs"] = sum(counts.values())
        rec["slowest"] = [dict(row, duration=d) for d, row in durations[:slowest]]
        by_end = sorted(causes, key=lambda r: r["end"] or 0) + sorted(consequences, key=lambda r: r["end"] or 0)
        rec["failures"] = by_end[:failures]
        return rec

    def flow_chunks(self, flow_run_id: str) -> list[dict]:
        """The chunk records of a flow run's task runs (full flow run id), in key order."""
        fid = uuid.UUID(flow_run_id).bytes

        def read(txn: Any) -> list[dict]:
            cur = txn.cursor(db=self._db["byflow"])
            chunks = []
            if cur.set_range(fid):
                for k, _ in cur:
                    if not k.startswith(fid):
                        break
                    raw = txn.get(k[16:], db=self._db["chunks"])
                    if raw is not None:
                        chunks.append(unpack_chunk(raw))
            return chunks

        return self.env.read(read)

    # -- pruning ------------------------------------------------------------------------
    def prune(self, older_than: float) -> retention.Pruned:
        """Delete task runs submitted and flow runs started more than ``older_than`` seconds ago,
        except what a live owner still has in flight (``store/retention.py``).

        Returns ``(task_runs, flow_runs)`` deleted.
        """
        return retention.prune(self, older_than)


def _flows_with_prefix(txn: Any, db: Any, digits: str) -> list[dict]:
    """Flow records whose id (hex digits) starts with ``digits``: a key range, not a scan; at most 2."""
    try:
        low = bytes.fromhex((digits + "0" * 32)[:32])
    except ValueError:
        return []
    cur = txn.cursor(db=db)
    out: list[dict] = []
    if cur.set_range(low):
        for key, raw in cur:
            if not bytes(key).hex().startswith(digits) or len(out) == 2:
                break
            out.append(_flow_row(unpack(raw)))
    return out


def _flow_row(rec: dict) -> dict:
    if isinstance(rec.get("owner"), bytes):  # the owner key, as text for JSON readers
        rec["owner"] = rec["owner"].hex()
    return rec


def _uuid_bytes(text: str | None) -> bytes | None:
    try:
        return uuid.UUID(text).bytes if text else None
    except ValueError:  # not a flow run id we can index (a hand-made context)
        return None


# -- expanding a chunk record into per-run rows ---------------------------------------------


def open_run_store(home: str | None = None, create: bool = True, readonly: bool = False) -> RunStore:
    """This process's run store at ``$DASKFLOW_HOME/runs`` (or under ``home``).

    Raises ``StoreError`` for an unsafe or unusable home, and ``DamagedStore`` (one
    line: the file and what to do) for a damaged data file: the run store is never
    moved aside on its own, its records are the user's history. With ``create=False``
    (read-only commands) a missing store raises ``LookupError`` instead of being created;
    ``readonly=True`` (implies ``create=False``) opens it without write access (``daskflow ui``).
    """
    create = create and not readonly
    root = config.check_home(home or config.home_path(), create=create)
    path = root / "runs"
    if not create and not (path / "data.mdb").exists():
        raise LookupError(f"no runs recorded under {root}")
    try:
        store = RunStore(_lmdb.open_env(path, dbs=DBS, readonly=readonly))
    except DamagedStore as exc:
        raise DamagedStore(exc.path, f"the run store is damaged ({exc.reason}); move it aside to start an "
                                     f"empty one: mv {path} {path}.damaged (or restore it from a backup)") from None
    if not readonly and (str(path), os.getpid()) not in _indexed:
        store.env.write(lambda txn: build_indexes(txn, store.dbs))  # once: a store of an older version
        _indexed.add((str(path), os.getpid()))
    return store


_indexed: set[tuple[str, int]] = set()
