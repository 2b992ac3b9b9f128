"""The background store: the durable queue, run records and results of background runs.

One LMDB environment at ``$DASKFLOW_HOME/background`` on the server's host, written
only by the server (the scheduler plugin's writer thread) and read by anyone on that
host. Three databases, all keyed by run id:

- ``queue``: the serialized call of every run that has not reached a final state
  (msgpack: task key and name, Dask key, pickled task, pickled arguments). The plugin
  resubmits these after a restart; a final state deletes the entry in the same
  write transaction that records it, so a completed run is never queued again.
- ``runs``: one msgpack record per run, in the shape ``daskflow runs show -o json``
  prints (``id, name, task_key, flow_run_id, state, state_type, start, end,
  run_count, history, error``, plus ``worker`` and ``persisted``).
- ``results``: the cloudpickled value of a completed run whose task persists its
  result, or the exception of a failed run.

Queue entries and results hold pickles, and unpickling runs code: both are signed
with the MAC of cache records, keyed by the home's ``secret.key``
(``cache.serialization.sign``). An entry or result without a valid MAC (written by
anyone but this home's owner) is refused with a warning, never unpickled.

This module never imports distributed: the CLI and ``daskflow.background.result``
read the store without paying for it.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterable

import msgpack

from daskflow import _lmdb, config
from daskflow.background.records import Outcome, RunChange
from daskflow.cache import serialization as ser
from daskflow.exceptions import DamagedStore
from daskflow.ids import background_run_name

__all__ = ["list_records", "open_store", "queued", "read_records", "reconcile_run_store"]

DBS = ("queue", "runs", "results")
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def path() -> pathlib.Path:
    return config.home() / "background"


def open_store(where: str | pathlib.Path | None = None) -> _lmdb.Env:
    """This process's handle on the background store (default ``$DASKFLOW_HOME/background``).

    A damaged data file raises ``DamagedStore`` naming it and how to move it aside:
    the queue holds runs that were promised, so it is never dropped silently.
    """
    where = pathlib.Path(where or path())
    try:
        return _lmdb.open_env(where, dbs=DBS)
    except DamagedStore as exc:
        raise DamagedStore(exc.path, f"the background store is damaged ({exc.reason}); move it aside to "
                                     f"start an empty queue: mv {where} {where}.damaged") from None


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class RefusedRecord(UserWarning):
    """A queue entry or result of the background store whose signature does not verify."""


def _secret(env: _lmdb.Env) -> bytes:
    return ser.load_secret(pathlib.Path(env.path).parent)


def secret(env: _lmdb.Env) -> bytes:
    """The signing key of the home ``env`` lives in (read once per batch by the writer)."""
    return _secret(env)


def seal_entry(env: _lmdb.Env, entry: dict, key: bytes | None = None) -> bytes:
    """A queue entry as stored: msgpack, signed (with ``key``, the home's secret, when given)."""
    return ser.sign(key or _secret(env), pack(entry))


def seal_result(env: _lmdb.Env, blob: bytes, key: bytes | None = None) -> bytes:
    """A result blob (a pickle) as stored: signed (with ``key``, the home's secret, when given)."""
    return ser.sign(key or _secret(env), bytes(blob))


def _refuse(what: str, key: bytes, exc: Exception) -> None:
    import warnings

    warnings.warn(f"background store: {what} {bytes(key).decode(errors='replace')!r} refused, never unpickled: "
                  f"{exc}", RefusedRecord, stacklevel=3)


def new_record(entry: dict) -> dict:
    """The record of a run just enqueued: state Scheduled."""
    ts = entry["submitted"]
    return {
        "id": entry["id"], "name": background_run_name(entry["task_name"], entry["id"]), "task_key": entry["task_key"],
        "task_name": entry["task_name"], "flow_run_id": entry.get("flow_run_id"), "state": "Scheduled",
        "state_type": "SCHEDULED", "start": None, "end": None, "run_count": 0, "worker": None,
        "persisted": False, "error": None,
        "history": [{"name": "Scheduled", "type": "SCHEDULED", "timestamp": ts, "message": ""}],
    }


def is_final(record: dict | None) -> bool:
    return record is not None and record["state_type"] in FINAL


def write_records(env: _lmdb.Env, txn: Any, records: list[dict]) -> None:
    """Write whole run records (latest state plus history, oldest first) in ``txn``."""
    db = env.db("runs")
    for rec in records:
        txn.put(rec["id"].encode(), pack(rec), db=db)


def record_states(changes: list[RunChange]) -> None:
    """Hand new states of background runs to the run store: the one place that does.

    ``changes`` holds a ``RunChange`` per run whose state changed, after the background
    store committed it. A final run's ``run_count`` goes with its states, so that the run
    store counts the attempts the task worker reported (a retried run: 2), as the
    background record and the run's future do; so does what it took (``resources``: CPU time
    and peak RSS increase on its task worker). Without a run store this does nothing
    (the records above are the background runs' own bookkeeping).
    """
    try:
        from daskflow.engine.tracking import tracker
    except ImportError:  # no run store in this build
        return
    groups: dict[tuple, tuple[list[tuple[str, str, float, str]], dict[str, int], dict[str, dict]]] = {}
    for rec, entries in changes:
        key = (rec["task_name"], rec["task_key"], rec.get("flow_run_id"), rec.get("worker"))
        events, counts, used = groups.setdefault(key, ([], {}, {}))
        events.extend((rec["id"], h["name"], h["timestamp"], h["message"]) for h in entries)
        if is_final(rec):
            counts[rec["id"]] = rec["run_count"]
            if rec.get("resources"):
                used[rec["id"]] = rec["resources"]
    for (task_name, task_key, flow_run_id, worker), (events, counts, used) in groups.items():
        tracker.record_states(events, task_name=task_name, task_key=task_key, flow_run_id=flow_run_id,
                              worker=worker, run_counts=counts, resources=used)


def reconcile_run_store(env: _lmdb.Env, requeued: Iterable[str] = ()) -> int:
    """Make the run store agree with this store; how many runs it corrected.

    The server hands states to the run store after committing them here, in batches a
    few ms later; a server that dies in between leaves runs that are final here but
    Running or Pending there. On start, every run the run store has in another state
    (or lacks) gets this store's states again. ``requeued`` runs (those the server is
    about to submit again) are skipped: they are recorded Scheduled by the restart.
    """
    from daskflow.store.runs import open_run_store

    skip = set(requeued)
    records = [r for r in list_records(env) if r["id"] not in skip]
    recorded = open_run_store().run_states(r["id"] for r in records)
    changes = []
    for rec in records:
        have = recorded.get(rec["id"])
        if have is None:
            changes.append(RunChange(rec, rec["history"]))  # never reached the run store
        elif have != rec["state"]:
            changes.append(RunChange(rec, rec["history"][-1:]))
    record_states(changes)
    return len(changes)


def record_logs(records: list[list]) -> None:
    """Hand run log records of background runs to the run store (none: dropped)."""
    try:
        from daskflow.engine.tracking import tracker
    except ImportError:
        return
    tracker.record_logs(records)


# -- reading (any process on the server's host) ------------------------------------------


def read_records(run_ids: list[str], env: _lmdb.Env | None = None, results: bool = False
                 ) -> dict[str, Outcome]:
    """``{run id: Outcome(record, result blob or None)}`` for the known ones, in one read.

    The record may not be final yet (``is_final``); the blob is read only with ``results``.
    """
    env = env or open_store()
    runs, res = env.db("runs"), env.db("results")
    secret = _secret(env) if results else b""

    def read(txn: Any) -> dict:
        out = {}
        for rid in run_ids:
            raw = txn.get(rid.encode(), db=runs)
            if raw is not None:
                blob = txn.get(rid.encode(), db=res) if results else None
                out[rid] = Outcome(unpack(raw), None if blob is None else bytes(blob))
        return out

    found = env.read(read)
    for rid, (rec, blob) in found.items():
        if blob is not None:
            try:
                found[rid] = Outcome(rec, ser.verify(secret, blob))
            except ser.DamagedRecord as exc:
                _refuse("result", rid.encode(), exc)
                found[rid] = Outcome(rec, None)
    return found


def list_records(env: _lmdb.Env | None = None) -> list[dict]:
    """Every run record of the store, oldest submission first."""
    env = env or open_store()
    out = env.read(lambda txn: [unpack(v) for _, v in txn.cursor(db=env.db("runs"))])
    return sorted(out, key=lambda r: r["history"][0]["timestamp"] if r["history"] else 0)


def queued(env: _lmdb.Env | None = None, run_ids: Iterable[str] | None = None) -> list[dict]:
    """The queue entries whose signature verifies: runs not yet final (others are refused, with a warning).

    ``run_ids``: only those (the ones still queued), in that order.
    """
    env = env or open_store()
    secret = _secret(env)
    out = []
    db = env.db("queue")

    def read(txn: Any) -> list:
        if run_ids is None:
            return list(txn.cursor(db=db))
        found = ((rid.encode(), txn.get(rid.encode(), db=db)) for rid in run_ids)
        return [(key, bytes(raw)) for key, raw in found if raw is not None]

    for key, raw in env.read(read):
        try:
            out.append(unpack(ser.verify(secret, raw)))
        except ser.DamagedRecord as exc:
            _refuse("queue entry", key, exc)
    return out
