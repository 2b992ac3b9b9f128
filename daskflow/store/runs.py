"""The run store: flow runs, task runs, state history and logs in LMDB, read by the CLI.

Layout, and why. A ``.map()`` over 10^6 elements must not become 10^6 records, so the
unit of storage is the *chunk* (the runs one Dask task executed): one msgpack record
holding its final state codes and end times as packed arrays, plus per-run extras only
for the runs that have some (errors, tracebacks, retries). Readers expand a chunk into
per-run rows. Run ids need no storage: run ``i`` of a submission is
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
import time
import uuid
from array import array
from typing import Any, Iterable, Iterator, NamedTuple

import msgpack

from daskflow import _lmdb, config
from daskflow.codes import CODE_OF_NAME, CODE_STATES, CRASHED, run_count_of
from daskflow.exceptions import DamagedStore
from daskflow.owners import Lease, Owner, is_alive
from daskflow.ids import MASK, STRIDE, index_of, run_id

__all__ = ["ChunkUpdate", "FlowUpdate", "LogLine", "RunStore", "open_run_store"]

DBS = ("chunks", "bytime", "flows", "byflow", "logs", "owners", "owned")
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


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def chunk_key(base: int, start: int) -> bytes:
    return base.to_bytes(16, "big") + start.to_bytes(8, "big")


def _us(ts: float) -> bytes:
    return int(max(ts, 0) * 1e6).to_bytes(8, "big")


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
        self._db = {name: env.db(name) for name in DBS}

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
        for op in ops:
            if isinstance(op, ChunkUpdate):
                key = chunk_key(op.base, op.start)
                raw = None if op.new else txn.get(key, db=db["chunks"])
                if raw is None:
                    rec = dict(op.fields, base=op.base.to_bytes(16, "big"), start=op.start)
                    rec.setdefault("submitted", time.time())
                    txn.put(_us(rec["submitted"]) + key, rec.get("n", 1).to_bytes(4, "big"), db=db["bytime"])
                    fid = _uuid_bytes(rec.get("flow_run_id"))
                    if fid:
                        txn.put(fid + key, b"", db=db["byflow"])
                else:
                    rec = _merge(unpack(raw), op.fields)
                _index_owned(txn, db["owned"], rec, b"c" + key, rec.get("codes") is None)
                txn.put(key, pack(rec), db=db["chunks"])
            elif isinstance(op, FlowUpdate):
                key = uuid.UUID(op.flow_run_id).bytes
                raw = txn.get(key, db=db["flows"])
                rec = dict(op.fields, id=op.flow_run_id) if raw is None else _merge(unpack(raw), op.fields)
                _index_owned(txn, db["owned"], rec, b"f" + key, rec.get("state_type") not in _FINAL_TYPES)
                txn.put(key, pack(rec), db=db["flows"])
            else:
                key = (op.owner + op.index.to_bytes(4, "big") + _us(op.timestamp)
                       + (next(_seq) & 0xFFFFFFFF).to_bytes(4, "big"))
                txn.put(key, pack({"timestamp": op.timestamp, "level": op.level, "message": op.message,
                                   "logger": op.logger}), db=db["logs"])

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
        for k in entries:
            kind, rkey = k[16:17], k[17:]
            table = db["chunks"] if kind == b"c" else db["flows"]
            raw = txn.get(rkey, db=table)
            if raw is not None:
                rec = unpack(raw)
                if kind == b"c" and rec.get("codes") is None:
                    rec.update(codes=bytes([CRASHED]) * rec["n"], ends=array("d", [now]).tobytes() * rec["n"],
                               live=None, message=message)
                elif kind == b"f" and rec.get("state_type") not in _FINAL_TYPES:
                    rec.update(state="Crashed", state_type="CRASHED", end=now, message=message)
                txn.put(rkey, pack(rec), db=table)
            txn.delete(k, db=db["owned"])
        txn.delete(key, db=db["owners"])

    # -- reading ----------------------------------------------------------------------
    def _chunks_newest_first(self, txn: Any) -> Iterator[tuple[bytes, dict]]:
        cur = txn.cursor(db=self._db["bytime"])
        if not cur.last():
            return
        chunks = self._db["chunks"]
        while True:
            key = cur.key()[8:]
            raw = txn.get(key, db=chunks)
            if raw is not None:
                yield key, unpack(raw)
            if not cur.prev():
                return

    def task_runs(self, state: str | None = None, task: str | None = None, flow_run_id: str | None = None,
                  limit: int | None = 50) -> list[dict]:
        """Task-run rows, newest first, filtered by state name, task name and flow run."""
        state_l = state.lower() if state else None

        def read(txn: Any) -> list[dict]:
            out: list[dict] = []
            for _, rec in self._chunks_newest_first(txn):
                if task and task not in (rec.get("task"), rec.get("task_key")):
                    continue
                if flow_run_id and not (rec.get("flow_run_id") or "").startswith(flow_run_id):
                    continue
                if state_l and not _may_hold(rec, state_l):
                    continue  # decided from the packed codes, without expanding the chunk
                for i in reversed(range(rec["n"])):
                    row = expand(rec, i)
                    if state_l and state_l not in (row["state"].lower(), row["state_type"].lower()):
                        continue
                    out.append(row)
                    if limit is not None and len(out) >= limit:
                        return out
            return out

        rows = self.env.read(read)
        rows.sort(key=lambda r: r["start"] or r["submitted"] or 0, reverse=True)
        return rows

    def run_states(self, run_ids: Iterable[str]) -> dict[str, str]:
        """State names of runs recorded one record per run id (background runs); unknown ids are left out."""
        def read(txn: Any) -> dict[str, str]:
            out = {}
            for rid in run_ids:
                raw = txn.get(chunk_key(uuid.UUID(rid).int, 0), db=self._db["chunks"])
                if raw is not None:
                    out[rid] = expand(unpack(raw), 0)["state"]
            return out

        return self.env.read(read)

    def count(self) -> int:
        """How many task runs the store holds (from the time index; expands nothing)."""
        return self.env.read(lambda txn: sum(int.from_bytes(v, "big") for _, v in txn.cursor(db=self._db["bytime"])))

    def resolve(self, prefix: str) -> tuple[bytes, int]:
        """The chunk key and index of the task run whose id starts with ``prefix``.

        Raises ``LookupError`` when no run or more than one run matches.
        """
        digits = prefix.replace("-", "").lower()
        try:
            wanted = int(digits, 16) if digits else None
        except ValueError:
            wanted = None
        if wanted is None or len(digits) > 32:
            raise LookupError(f"{prefix!r} is not a task run id (hex digits, optionally with dashes)")
        shift = 128 - 4 * len(digits)

        def read(txn: Any) -> list[tuple[bytes, int]]:
            found: list[tuple[bytes, int]] = []
            cur = txn.cursor(db=self._db["bytime"])
            for key, nbytes in cur:
                ck = key[8:]
                base, start, n = int.from_bytes(ck[:16], "big"), int.from_bytes(ck[16:], "big"), int.from_bytes(nbytes, "big")
                if shift == 0:
                    i = index_of(base, wanted)
                    if start <= i < start + n:
                        found.append((ck, i - start))
                    continue
                value = (base + start * STRIDE) & MASK
                for i in range(n):
                    if value >> shift == wanted:
                        found.append((ck, i))
                        if len(found) > 1:
                            return found
                    value = (value + STRIDE) & MASK
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
        rec = unpack(self.env.read(lambda txn: txn.get(key, db=self._db["chunks"])))
        row = expand(rec, i)
        row["history"] = history(rec, i)
        row["error"] = (_message(rec, i) or None) if row["state_type"] != "COMPLETED" else None
        row["traceback"] = (rec.get("tracebacks") or {}).get(i)
        row["cache_key"] = (rec.get("cache_keys") or {}).get(i)
        return row

    def logs(self, prefix: str, tail: int | None = None) -> list[dict]:
        """Log records of a task run (id prefix) or a flow run (full id or prefix), oldest first."""
        try:
            key, i = self.resolve(prefix)
            owner = key + i.to_bytes(4, "big")
        except LookupError:
            owner = uuid.UUID(self.flow_run(prefix)["id"]).bytes + _FLOW_OWNER + bytes(4)

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
        """Flow-run records, newest first."""
        def read(txn: Any) -> list[dict]:
            return [_flow_row(unpack(v)) for _, v in txn.cursor(db=self._db["flows"])]

        rows = sorted(self.env.read(read), key=lambda r: r.get("start") or 0, reverse=True)
        return rows[:limit] if limit else rows

    def flow_run(self, prefix: str, slowest: int = 5) -> dict:
        """One flow run with its task runs' counts per state and its slowest task runs."""
        matches = [r for r in self.flow_runs(limit=None) if r["id"].replace("-", "").startswith(prefix.replace("-", ""))]
        if not matches:
            raise LookupError(f"no flow run with id {prefix!r}")
        if len(matches) > 1:
            raise LookupError(f"flow run id prefix {prefix!r} is ambiguous; give more digits")
        rec = dict(matches[0])
        fid = uuid.UUID(rec["id"]).bytes

        def read(txn: Any) -> list[dict]:
            cur = txn.cursor(db=self._db["byflow"])
            chunks = []
            if cur.set_range(fid):
                for k, _ in cur:
                    if not k.startswith(fid):
                        break
                    raw = txn.get(k[16:], db=self._db["chunks"])
                    if raw is not None:
                        chunks.append(unpack(raw))
            return chunks

        counts: dict[str, int] = {}
        durations: list[tuple[float, dict]] = []
        for chunk in self.env.read(read):
            for name, count in chunk_counts(chunk).items():
                counts[name] = counts.get(name, 0) + count
            durations.extend(_slowest(chunk, slowest))
        durations.sort(key=lambda d: d[0], reverse=True)
        rec["counts"] = counts
        rec["task_runs"] = sum(counts.values())
        rec["slowest"] = [dict(row, duration=d) for d, row in durations[:slowest]]
        return rec

    # -- pruning ------------------------------------------------------------------------
    def prune(self, older_than: float) -> tuple[int, int]:
        """Delete task runs submitted and flow runs started more than ``older_than`` seconds ago.

        Returns ``(task runs, flow runs)`` deleted.
        """
        cutoff = _us(time.time() - older_than)
        db = self._db

        def write(txn: Any) -> tuple[int, int]:
            runs = flows = 0
            cur = txn.cursor(db=db["bytime"])
            doomed = []
            for key, nbytes in cur:
                if key[:8] >= cutoff:
                    break
                doomed.append(key)
                runs += int.from_bytes(nbytes, "big")
            for key in doomed:
                ck = key[8:]
                raw = txn.get(ck, db=db["chunks"])
                if raw is not None:
                    fid = _uuid_bytes(unpack(raw).get("flow_run_id"))
                    if fid:
                        txn.delete(fid + ck, db=db["byflow"])
                txn.delete(ck, db=db["chunks"])
                txn.delete(key, db=db["bytime"])
                _delete_prefix(txn, db["logs"], ck)
            limit = time.time() - older_than
            for key, raw in list(txn.cursor(db=db["flows"])):
                if (unpack(raw).get("start") or 0) < limit:
                    txn.delete(key, db=db["flows"])
                    _delete_prefix(txn, db["logs"], key + _FLOW_OWNER)
                    flows += 1
            return runs, flows

        return self.env.write(write)


def _flow_row(rec: dict) -> dict:
    if isinstance(rec.get("owner"), bytes):  # the owner key, as text for JSON readers
        rec["owner"] = rec["owner"].hex()
    return rec


def _index_owned(txn: Any, db: Any, rec: dict, suffix: bytes, in_flight: bool) -> None:
    """Keep ``owned`` in step with a record of an owner: indexed while not final."""
    owner = rec.get("owner")
    if owner:
        if in_flight:
            txn.put(owner + suffix, b"", db=db)
        else:
            txn.delete(owner + suffix, db=db)


def _uuid_bytes(text: str | None) -> bytes | None:
    try:
        return uuid.UUID(text).bytes if text else None
    except ValueError:  # not a flow run id we can index (a hand-made context)
        return None


def _delete_prefix(txn: Any, db: Any, prefix: bytes) -> None:
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    while cur.key().startswith(prefix):
        if not cur.delete():
            break


# -- expanding a chunk record into per-run rows ---------------------------------------------


def _ends(rec: dict) -> array:
    ends = rec.get("_ends")
    if ends is None:
        ends = array("d")
        if rec.get("ends"):
            ends.frombytes(rec["ends"])
        rec["_ends"] = ends
    return ends


def _packed(rec: dict, name: str) -> array | None:
    """A per-run packed time array of a direct-call record (``starts``, ``submits``), or None."""
    raw = rec.get(name)
    if raw is None:
        return None
    values = rec.get("_" + name)
    if values is None:
        values = rec["_" + name] = array("d")
        values.frombytes(raw)
    return values


def _submitted(rec: dict, i: int) -> float | None:
    submits = _packed(rec, "submits")
    return submits[i] if submits is not None and i < len(submits) else rec.get("submitted")


def _started_at(rec: dict, i: int) -> float | None:
    starts = _packed(rec, "starts")  # direct calls folded into one record did not run back to back
    if starts is not None and i < len(starts):
        return starts[i]
    ends = _ends(rec)
    if 0 < i <= len(ends):
        return ends[i - 1]
    return rec.get("started")


def expand(rec: dict, i: int) -> dict:
    """Run ``i`` of a chunk record as a row (the ``runs ls -o json`` shape)."""
    base = int.from_bytes(rec["base"], "big")
    index = rec["start"] + i
    codes = rec.get("codes")
    recorded = (rec.get("run_counts") or {}).get(i)
    end = None
    if codes is not None:
        state_type, state = CODE_STATES[codes[i]]
        end = _ends(rec)[i] if i < len(_ends(rec)) else None
        run_count = run_count_of(codes[i], recorded)
        start = _started_at(rec, i) if run_count else None
        message = _message(rec, i) if state_type != "COMPLETED" else ""
    else:
        events = (rec.get("events") or {}).get(i)
        live = events[-1] if events else rec.get("live") or ["PENDING", "Pending", rec.get("submitted"), ""]
        state_type, state = live[0], live[1]
        start = rec.get("started") if state_type == "RUNNING" else None
        run_count = 0 if state_type in ("PENDING", "SCHEDULED") else recorded or 1
        message = live[3] or ""
    return {
        "id": run_id(base, index),
        "name": (rec.get("names") or {}).get(i) or f"{rec.get('task')}-{index}",
        "task_name": rec.get("task"),
        "task_key": rec.get("task_key"),
        "flow_run_id": rec.get("flow_run_id"),
        "state": state,
        "state_type": state_type,
        "submitted": _submitted(rec, i),
        "start": start,
        "end": end,
        "run_count": run_count,
        "worker": rec.get("worker"),
        "message": message,
    }


def history(rec: dict, i: int) -> list[dict]:
    """Run ``i``'s states, oldest first: Pending, [recorded events], Running, [retries], final."""
    events = (rec.get("events") or {}).get(i, ())
    out = []
    if not events or events[0][1] not in ("Scheduled", "Pending"):
        # a chunk may start before its future (and submission time) is recorded
        sub = _submitted(rec, i)
        pending = min(t for t in (sub, _started_at(rec, i) if rec.get("starts") else rec.get("started")) if t) \
            if sub else None
        out.append({"name": "Pending", "type": "PENDING", "timestamp": pending, "message": ""})
    extra = (rec.get("history") or {}).get(i)
    for t, name, ts, msg in events:
        if extra and name in ("Running", "Retrying", "AwaitingRetry"):
            continue  # the envelope's history holds these, with the first Running
        out.append({"name": name, "type": t, "timestamp": ts, "message": msg or ""})
    codes = rec.get("codes")
    if codes is None:
        live = rec.get("live")
        if live and live[1] != "Pending" and not (rec.get("events") or {}).get(i):
            out.append({"name": live[1], "type": live[0], "timestamp": live[2], "message": live[3] or ""})
        return out
    row = expand(rec, i)
    if extra:
        out.extend({"name": n, "type": t, "timestamp": ts, "message": m or ""} for t, n, ts, m in extra)
    elif row["run_count"] and not any(h["type"] == "RUNNING" for h in out):
        out.append({"name": "Running", "type": "RUNNING", "timestamp": row["start"], "message": ""})
    if not out or out[-1]["name"] != row["state"]:
        out.append({"name": row["state"], "type": row["state_type"], "timestamp": row["end"],
                    "message": _message(rec, i)})
    return out


def _message(rec: dict, i: int) -> str:
    """Run ``i``'s final message: its own, else the chunk's (one for all, e.g. its owner died)."""
    return (rec.get("messages") or {}).get(i) or rec.get("message") or ""


def _may_hold(rec: dict, state_l: str) -> bool:
    if rec.get("codes") is None or rec.get("events"):
        return True
    names = set(chunk_counts(rec))
    kinds = {n.lower() for n in names} | {CODE_STATES[CODE_OF_NAME[n]].type.lower() for n in names}
    return state_l in kinds


def chunk_counts(rec: dict) -> dict[str, int]:
    """How many runs of a chunk are in each state (by name)."""
    codes = rec.get("codes")
    if codes is None:
        live = rec.get("live") or ["PENDING", "Pending"]
        return {live[1]: rec["n"]}
    out: dict[str, int] = {}
    for code in set(codes):
        out[CODE_STATES[code].name] = codes.count(code)
    return out


def _slowest(rec: dict, k: int) -> list[tuple[float, dict]]:
    ends = _ends(rec)
    if rec.get("codes") is None or not ends:
        return []
    starts = _packed(rec, "starts")
    prev = list(starts) if starts is not None else [rec.get("started") or ends[0], *ends[:-1]]
    durations = sorted(((e - s, i) for i, (s, e) in enumerate(zip(prev, ends))), reverse=True)[:k]
    return [(d, expand(rec, i)) for d, i in durations]


def open_run_store(home: str | None = None, create: bool = True) -> RunStore:
    """This process's run store at ``$DASKFLOW_HOME/runs`` (or under ``home``).

    Raises ``StoreError`` for an unsafe or unusable home, and ``DamagedStore`` (one
    line: the file and what to do) for a damaged data file: the run store is never
    moved aside on its own, its records are the user's history. With ``create=False``
    (read-only commands) a missing store raises ``LookupError`` instead of being created.
    """
    root = config.check_home(home or config.home_path(), create=create)
    path = root / "runs"
    if not create and not (path / "data.mdb").exists():
        raise LookupError(f"no runs recorded under {root}")
    try:
        return RunStore(_lmdb.open_env(path, dbs=DBS))
    except DamagedStore as exc:
        raise DamagedStore(exc.path, f"the run store is damaged ({exc.reason}); move it aside to start an "
                                     f"empty one: mv {path} {path}.damaged (or restore it from a backup)") from None
