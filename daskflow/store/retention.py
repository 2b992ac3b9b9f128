"""Retention: the run store keeps a bounded history, and never takes runs from under a running flow.

Two ways in, one deletion (``prune``):

- ``daskflow.runs.keep`` (default ``30d``; ``null`` or ``0``: keep everything) is enforced
  by every process that records runs: its writer thread prunes when it first writes to
  a store, then again every ``daskflow.runs.prune-every`` (``1h``) of writing
  (``engine/tracking/tracker.py``). When nothing is old enough that costs one cursor step.
- ``daskflow runs prune --older-than 7d`` prunes on demand.

What is deleted: task runs submitted before the cutoff (their chunk record, its index
entries, logs and artifacts) and flow runs that started before it (with their own
logs). What is kept whatever its age: the runs a live owner (``daskflow.owners``) still
has in flight, that is a chunk that is not final and whose owner is alive, and every
run of a flow run that has not ended and whose owner is alive, with that flow run's
record. A finished flow run of a process that lives on (a server) is pruned by age like
any other, so a long-lived process does not pin its history forever.

Deletion goes oldest first in write transactions of at most ``BATCH`` chunks: a
writer of a running flow waits for one such transaction at most, and readers never
wait (LMDB readers see the snapshot they started with; a reader that looks a run up
after it was pruned gets "no task run", never an error).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

from daskflow import config
from daskflow.config import parse_timedelta
from daskflow.codes import CODE_STATES
from daskflow.owners import Owner, is_alive
from daskflow.store.indexes import Deltas, index_chunk, index_flow, time_key, write_counts
from daskflow.store import metrics
from daskflow.store.packing import unpack, unpack_chunk

if TYPE_CHECKING:
    from daskflow.store.runs import RunStore

__all__ = ["BATCH", "CHUNK_KEYED", "FLOW_KEYED", "Pruned", "delete_prefix", "enforce", "keep_seconds", "prune",
           "prune_every_seconds"]

BATCH = 1000
#: Databases of the run store whose records are keyed by a chunk key (24 bytes) + anything: a
#: pruned chunk's records there go with it. Records kept per run by other parts of daskflow
#: join by adding their database's name (and to ``runs.DBS``).
CHUNK_KEYED = ["logs", "artifacts", "inputs"]
#: The same for records keyed by a flow run id (16 bytes) + anything.
FLOW_KEYED = ["flowcounts"]
_FINAL_TYPES = frozenset(cs.type for cs in CODE_STATES.values())
_FLOW_OWNER = b"\xff" * 8


class Pruned(NamedTuple):
    """What a prune deleted."""

    task_runs: int
    flow_runs: int


class Keep(NamedTuple):
    """What a prune must leave whatever its age: owners alive, flow runs still going under one."""

    owners: frozenset[bytes]
    flows: frozenset[bytes]

    def chunk(self, rec: dict) -> bool:
        if rec.get("codes") is None and rec.get("owner") in self.owners:
            return True
        fid = rec.get("flow_run_id")
        return bool(fid) and _fid(fid) in self.flows


def keep_seconds() -> float | None:
    """``daskflow.runs.keep`` in seconds; None when runs are kept forever."""
    value = config.get("runs.keep", "30d")
    seconds = parse_timedelta(value) if value not in (None, "", 0, "0") else 0
    return float(seconds) if seconds else None


def prune_every_seconds() -> float:
    return float(parse_timedelta(config.get("runs.prune-every", "1h")))


def enforce(store: RunStore) -> Pruned:
    """Apply ``daskflow.runs.keep`` to a store (nothing when runs are kept forever)."""
    keep = keep_seconds()
    return prune(store, keep) if keep else Pruned(0, 0)


def prune(store: RunStore, older_than: float) -> Pruned:
    """Delete task runs submitted and flow runs started more than ``older_than`` seconds ago,
    except what a live owner still has in flight (see the module docstring)."""
    now = time.time()
    cutoff = time_key(now - older_than)
    db = store.dbs
    if not store.env.read(lambda txn: _has_old(txn, db, cutoff, now - older_than)):
        return Pruned(0, 0)  # the common case: one cursor step, no liveness checks
    keep = _what_to_keep(store, now)
    runs, position = 0, b""
    while position is not None:
        deleted, position = store.env.write(lambda txn: _prune_chunks(txn, db, cutoff, keep, position))
        runs += deleted
    flows = store.env.write(lambda txn: _prune_flows(txn, db, now - older_than, keep))
    return Pruned(runs, flows)


def _what_to_keep(store: RunStore, now: float) -> Keep:
    db = store.dbs

    def read(txn: Any) -> tuple[list, list]:
        return ([(bytes(k), unpack(v)) for k, v in txn.cursor(db=db["owners"])],
                [(bytes(k), unpack(v)) for k, v in txn.cursor(db=db["flows"])])

    known, flows = store.env.read(read)
    alive = frozenset(key for key, rec in known
                      if is_alive(Owner(rec["host"], rec["pid"], rec["started"]), rec.get("lease_until"), now))
    going = frozenset(key for key, rec in flows
                      if rec.get("state_type") not in _FINAL_TYPES and rec.get("owner") in alive)
    return Keep(alive, going)


def _prune_chunks(txn: Any, db: dict, cutoff: bytes, keep: Keep, position: bytes) -> tuple[int, bytes | None]:
    """Delete up to ``BATCH`` old chunks from ``position`` on; (runs deleted, where to go on or None)."""
    cur = txn.cursor(db=db["bytime"])
    if not cur.set_range(position):
        return 0, None
    runs, seen, deltas = 0, 0, {}
    doomed: list[tuple[bytes, int]] = []
    for key, nbytes in cur:
        if key[:8] >= cutoff:
            break
        if seen == BATCH:
            _delete_chunks(txn, db, doomed, deltas)
            return runs, bytes(key)
        seen += 1
        raw = txn.get(key[8:], db=db["chunks"])
        rec = None if raw is None else unpack_chunk(raw)
        if rec is not None and keep.chunk(rec):
            continue
        doomed.append((bytes(key), rec))
        runs += int.from_bytes(nbytes, "big")
    _delete_chunks(txn, db, doomed, deltas)
    return runs, None


def _delete_chunks(txn: Any, db: dict, doomed: list, deltas: Deltas) -> None:
    in_flight: metrics.Delta = {}
    for key, rec in doomed:
        ck = key[8:]
        if rec is not None:
            fid = _fid(rec.get("flow_run_id"))
            if fid:
                txn.delete(fid + ck, db=db["byflow"])
            index_chunk(txn, db, ck, rec, None, deltas)
            if rec.get("codes") is None:  # the counters stay (they only go up); runs in flight go down
                metrics.tally(rec, in_flight, -1)
        txn.delete(ck, db=db["chunks"])
        txn.delete(key, db=db["bytime"])
        for name in CHUNK_KEYED:
            if name in db:
                delete_prefix(txn, db[name], ck)
    write_counts(txn, db, deltas)
    if "metrics" in db:
        metrics.add(txn, db["metrics"], in_flight)


def _has_old(txn: Any, db: dict, cutoff: bytes, limit: float) -> bool:
    """Whether anything is old enough to prune: the oldest chunk, or any flow run."""
    cur = txn.cursor(db=db["bytime"])
    if cur.first() and cur.key()[:8] < cutoff:
        return True
    return any((unpack(raw).get("start") or 0) < limit for _, raw in txn.cursor(db=db["flows"]))


def _prune_flows(txn: Any, db: dict, limit: float, keep: Keep) -> int:
    flows = 0
    for key, raw in list(txn.cursor(db=db["flows"])):
        key = bytes(key)
        rec = unpack(raw)
        if (rec.get("start") or 0) < limit and key not in keep.flows:
            index_flow(txn, db, key, rec, None)
            txn.delete(key, db=db["flows"])
            for name in FLOW_KEYED:
                if name in db:
                    delete_prefix(txn, db[name], key)
            delete_prefix(txn, db["logs"], key + _FLOW_OWNER)
            flows += 1
    return flows


def delete_prefix(txn: Any, db: Any, prefix: bytes) -> None:
    """Delete every key that starts with ``prefix``."""
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    while cur.key().startswith(prefix):
        if not cur.delete():
            break


def _fid(text: str | None) -> bytes | None:
    try:
        return uuid.UUID(text).bytes if text else None
    except ValueError:
        return None
