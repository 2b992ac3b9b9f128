"""Indexes kept beside the chunk records, so that listings cost what they show, not what the store holds.

A store of 10^8 runs holds ~10^4 to 10^5 chunk records. Two questions would otherwise
read every one of them:

- ``runs ls --state Failed``: the ``odd`` database holds the time key (submitted µs, 8
  bytes, + chunk key) of every chunk that has a run not simply Completed (live, failed,
  cached, crashed, ...). A state filter other than Completed walks it, newest first,
  with the very keys (and page cursors) of ``bytime``; a store of plain completed runs
  leaves it empty.
- ``flow-runs ls``: ``flowcounts`` holds, per flow run id, its task runs per state name,
  changed by each chunk write by the difference between the chunk's old and new counts
  (one read and write per flow run and batch).

- ``flow-runs ls`` again: ``flowtime`` holds start µs (8) + flow run id (16) of every flow
  run, so the newest 50 are read from its end, however many flow runs the store keeps.

All are maintained in the write transaction that changes a record (``RunStore.apply``,
the ending of dead owners' runs, prune). ``meta`` says whether they cover the whole
store (``b"layout"`` = 3): a store written before them is indexed once, when a process
first opens it to write; until then readers do without.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgpack

from daskflow.codes import COMPLETED
from daskflow.store.packing import unpack, unpack_chunk
from daskflow.store.rows import chunk_counts

__all__ = ["LAYOUT", "Deltas", "build_indexes", "count_chunk", "flow_counts", "index_chunk", "index_flow", "indexed",
           "is_odd", "time_key", "write_counts"]

LAYOUT = 3
_LAYOUT_KEY = b"layout"
Deltas = dict[bytes, dict[str, int]]  # flow run id (16 bytes) -> state name -> change in runs


def time_key(ts: float) -> bytes:
    """8 big-endian bytes of a time in µs: keys sort by time."""
    return int(max(ts, 0) * 1e6).to_bytes(8, "big")


def is_odd(rec: dict) -> bool:
    """Whether a chunk holds a run that is not simply Completed (live, or any other final state)."""
    codes = rec.get("codes")
    return codes is None or bool(rec.get("events")) or codes.count(COMPLETED) != len(codes)


def index_chunk(txn: Any, db: dict, key: bytes, old: dict | None, rec: dict | None, deltas: Deltas) -> None:
    """Keep the indexes in step with chunk ``key`` going from ``old`` to ``rec`` (None: absent)."""
    if "odd" in db:
        if rec is not None and is_odd(rec):
            txn.put(time_key(rec["submitted"]) + key, b"", db=db["odd"])
        elif old is not None and is_odd(old):
            txn.delete(time_key(old["submitted"]) + key, db=db["odd"])
    for sign, side in ((-1, old), (1, rec)):
        if side is not None:
            count_chunk(deltas, side, sign)


def count_chunk(deltas: Deltas, rec: dict, sign: int = 1) -> None:
    """Add (``sign`` 1) or take away (-1) a chunk's runs per state to its flow run's counts."""
    fid = _fid(rec.get("flow_run_id"))
    if fid is not None:
        into = deltas.setdefault(fid, {})
        for name, n in chunk_counts(rec).items():
            into[name] = into.get(name, 0) + sign * n


def write_counts(txn: Any, db: dict, deltas: Deltas) -> None:
    """Fold a batch's count changes into ``flowcounts``."""
    if "flowcounts" not in db:
        return
    for fid, change in deltas.items():
        raw = txn.get(fid, db=db["flowcounts"])
        counts = {} if raw is None else msgpack.unpackb(raw, raw=False)
        for name, n in change.items():
            counts[name] = counts.get(name, 0) + n
        counts = {name: n for name, n in counts.items() if n}
        if counts:
            txn.put(fid, msgpack.packb(counts), db=db["flowcounts"])
        elif raw is not None:
            txn.delete(fid, db=db["flowcounts"])


def index_flow(txn: Any, db: dict, key: bytes, old: dict | None, rec: dict | None) -> None:
    """Keep ``flowtime`` in step with flow run ``key`` going from ``old`` to ``rec`` (None: absent)."""
    if "flowtime" not in db:
        return
    before = None if old is None else time_key(old.get("start") or 0) + key
    after = None if rec is None else time_key(rec.get("start") or 0) + key
    if before != after:
        if before is not None:
            txn.delete(before, db=db["flowtime"])
        if after is not None:
            txn.put(after, b"", db=db["flowtime"])


def indexed(txn: Any, db: dict) -> bool:
    """Whether the indexes cover every record of the store."""
    if "meta" not in db or "flowtime" not in db:
        return False
    raw = txn.get(_LAYOUT_KEY, db=db["meta"])
    return raw is not None and int(raw) >= LAYOUT


def flow_counts(txn: Any, db: dict, flow_run_id: str) -> dict[str, int] | None:
    """A flow run's task runs per state name from the index; None when the store is not indexed."""
    if not indexed(txn, db):
        return None
    raw = txn.get(uuid.UUID(flow_run_id).bytes, db=db["flowcounts"])
    return {} if raw is None else msgpack.unpackb(raw, raw=False)


def build_indexes(txn: Any, db: dict) -> None:
    """Index every chunk of a store written before the indexes existed (once, in one transaction)."""
    if indexed(txn, db):
        return
    for name in ("odd", "flowcounts", "flowtime"):
        txn.drop(db[name], delete=False)
    deltas: Deltas = {}
    for key, raw in txn.cursor(db=db["chunks"]):
        index_chunk(txn, db, bytes(key), None, unpack_chunk(raw), deltas)
    for key, raw in txn.cursor(db=db["flows"]):
        index_flow(txn, db, bytes(key), None, unpack(raw))
    write_counts(txn, db, deltas)
    txn.put(_LAYOUT_KEY, str(LAYOUT).encode(), db=db["meta"])


def _fid(text: str | None) -> bytes | None:
    try:
        return uuid.UUID(text).bytes if text else None
    except ValueError:  # not a flow run id (a hand-made context)
        return None


def index_owned(txn: Any, db: Any, rec: dict, suffix: bytes, in_flight: bool) -> None:
    """Keep ``owned`` in step with a record of an owner: indexed while not final."""
    owner = rec.get("owner")
    if owner:
        if in_flight:
            txn.put(owner + suffix, b"", db=db)
        else:
            txn.delete(owner + suffix, db=db)
