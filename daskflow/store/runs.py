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
- ``inputs``   chunk key + index (4) → ``{argument: short repr}`` of a Failed, TimedOut or
  Crashed run (only those have one: kept apart from the chunk record, which stays compact)

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
from daskflow.codes import CODE_STATES, CRASHED
from daskflow.exceptions import DamagedStore
from daskflow.owners import Lease, Owner, is_alive
from daskflow.ids import parse_id_prefix, prefix_matches
from daskflow.store.artifacts import ARTIFACTS_LOGGER, put_artifact
from daskflow.store.rows import bad_runs, chunk_counts, expand, final_message, history, may_hold, slowest_runs

__all__ = ["ChunkUpdate", "FlowUpdate", "LogLine", "RunPage", "RunStore", "open_run_store"]

DBS = ("chunks", "bytime", "flows", "byflow", "logs", "owners", "owned", "artifacts", "artkeys", "inputs")
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
                rec = dict(op.fields, id=op.flow_run_id) if raw is None else _merge(unpack(raw), op.fields)
                _index_owned(txn, db["owned"], rec, b"f" + key, rec.get("state_type") not in _FINAL_TYPES)
                txn.put(key, pack(rec), db=db["flows"])
            else:
                key = (op.owner + op.index.to_bytes(4, "big") + _us(op.timestamp)
                       + (next(_seq) & 0xFFFFFFFF).to_bytes(4, "big"))
                if op.logger == ARTIFACTS_LOGGER:  # an artifact travels as a log record; kept apart
                    put_artifact(txn, db, key, op.message)
                    continue
                txn.put(key, pack({"timestamp": op.timestamp, "level": op.level, "message": op.message,
                                   "logger": op.logger}), db=db["logs"])
        for key, op in chunks.items():
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
            cur = txn.cursor(db=self._db["bytime"])
            upto = None
            if after:
                key, upto = _decode_cursor(after)
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
                rec = None if raw is None else unpack(raw)
                if rec is not None and _wanted_chunk(rec, task, flow_run_id, state_l):
                    indexes = range(rec["n"] if upto is None else upto)
                    if wanted is not None:
                        indexes = [i for i in prefix_matches(int.from_bytes(rec["base"], "big"), rec["start"],
                                                             len(indexes), *wanted)]
                    for i in reversed(indexes):
                        row = expand(rec, i)
                        if state_l and state_l not in (row["state"].lower(), row["state_type"].lower()):
                            continue
                        out.append(row)
                        if limit is not None and len(out) >= limit:
                            return RunPage(out, _encode_cursor(tkey, i))
                upto = None
                if deadline is not None and time.monotonic() > deadline:
                    return RunPage(out, _encode_cursor(tkey, 0))
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
        rec = unpack(self.env.read(lambda txn: txn.get(key, db=self._db["chunks"])))
        row = expand(rec, i)
        row["history"] = history(rec, i)
        row["error"] = (final_message(rec, i) or None) if row["state_type"] != "COMPLETED" else None
        row["traceback"] = (rec.get("tracebacks") or {}).get(i)
        row["cache_key"] = (rec.get("cache_keys") or {}).get(i)
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
        """Flow-run records, newest first."""
        def read(txn: Any) -> list[dict]:
            return [_flow_row(unpack(v)) for _, v in txn.cursor(db=self._db["flows"])]

        rows = sorted(self.env.read(read), key=lambda r: r.get("start") or 0, reverse=True)
        return rows[:limit] if limit else rows

    def flow_record(self, prefix: str) -> dict:
        """The record of the flow run whose id starts with ``prefix`` (``LookupError`` if none or several)."""
        matches = [r for r in self.flow_runs(limit=None) if r["id"].replace("-", "").startswith(prefix.replace("-", ""))]
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
        counts: dict[str, int] = {}
        durations: list[tuple[float, dict]] = []
        causes: list[dict] = []
        consequences: list[dict] = []
        for chunk in self.flow_chunks(rec["id"]):
            for name, count in chunk_counts(chunk).items():
                counts[name] = counts.get(name, 0) + count
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
                        chunks.append(unpack(raw))
            return chunks

        return self.env.read(read)

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
                if "artifacts" in db:
                    _delete_prefix(txn, db["artifacts"], ck)
                if "inputs" in db:
                    _delete_prefix(txn, db["inputs"], ck)
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


class RunPage(NamedTuple):
    """A page of task-run rows and the cursor of the next one (None: this was the last)."""

    rows: list[dict]
    next: str | None


def _encode_cursor(time_key: bytes, upto: int) -> str:
    return f"{time_key.hex()}.{upto}"


def _decode_cursor(cursor: str) -> tuple[bytes, int]:
    try:
        key, upto = cursor.split(".")
        return bytes.fromhex(key), int(upto)
    except ValueError:
        raise ValueError(f"{cursor!r} is not a page cursor (copy it from an earlier page)") from None


def _wanted_chunk(rec: dict, task: str | None, flow_run_id: str | None, state_l: str | None) -> bool:
    if task and task not in (rec.get("task"), rec.get("task_key")):
        return False
    if flow_run_id and not (rec.get("flow_run_id") or "").startswith(flow_run_id):
        return False
    return not state_l or may_hold(rec, state_l)  # decided from the packed codes, without expanding


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
        return RunStore(_lmdb.open_env(path, dbs=DBS, readonly=readonly))
    except DamagedStore as exc:
        raise DamagedStore(exc.path, f"the run store is damaged ({exc.reason}); move it aside to start an "
                                     f"empty one: mv {path} {path}.damaged (or restore it from a backup)") from None
