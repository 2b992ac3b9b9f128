"""Kept results: the value of every completed task run of a flow run, for ``flow-runs retry``.

A flow run that failed, crashed or was interrupted is resumed by running it again with its
recorded parameters; runs that completed the first time come back from their kept values
instead of executing. So every completed run's value is kept, whether or not its task
caches, for ``daskflow.results.keep`` (default 7 days), here:

- ``$DASKFLOW_HOME/kept``: an LMDB environment of its own (the same signed records as the
  result cache, ``cache.serialization``), written without an fsync per commit (~10 µs a
  chunk instead of ~250 µs: a commit survives the death of any process, which is what a
  resume needs, not a crash of the machine);
- and the result storage (``result_storage`` of the task or flow, or
  ``daskflow.results.storage``) when there is one, so that another host can resume.

One record per chunk of runs (never one per run): the chunk's completed positions and their
values, written by the process that computed them (a Dask worker writes its own chunks; a
value never travels to the client to be kept). A run whose value the chunk's cache write
holds, or read from the cache (a run of a caching task, in the same home and result storage),
is kept as a *reference*: its cache key, not a second copy of its value (a 50 MB array is
written once, and a rerun whose runs all came from the cache writes only their keys). A retry
reads the referred values from the cache in one batch; a reference whose cache record went
(evicted, expired) is a miss: that run executes again, never a wrong value. Keys::

    kept/{flow run id}/{16-byte digest of (call, first run, attempt)}

``call`` names which call of the flow the chunk belongs to (see ``engine.worker.keep``),
``attempt`` the flow run's attempt, so a retry's records never overwrite the first
attempt's. All records of a flow run share the prefix: a retry lists them (one LMDB range
read, or one listing of the storage), checks every signature, and joins them. The flow
run's *source* (entrypoint and pickled parameters, ``FlowSource``) is one more record under
the same prefix: a retry on another host reads it from the storage.

Expired records are dropped from the local environment by ``prune_expired``, and from the
result storage by ``prune_storage`` (objects written longer ago than ``daskflow.results.keep``),
at most hourly per process by a process that starts flow runs. In a result storage a chunk's
records are in a pack (``cache/packs.py``), under ``kept/{flow run id}/packs/``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import cloudpickle
import xxhash

from daskflow.cache import serialization as ser
from daskflow.cache.storage import open_storage
from daskflow.cache.storage_spec import StorageSpec
from daskflow.cache.store import ENTRIES, LMDBResultStore, ResultStore, TieredStore, get_store

__all__ = ["FlowSource", "KeptCallRuns", "KeptCalls", "KeptChunk", "KeptRuns", "KeptStore", "cache_of", "chunk_key",
           "get_kept_store", "load_kept",
           "load_source", "prune_expired", "prune_storage", "source_key"]

PREFIX = b"kept/"
_SOURCE = xxhash.xxh3_128_digest(b"flow-source")


@dataclass(slots=True)
class KeptChunk:
    """The completed runs of one chunk: their positions in the call and their values.

    A chunk whose runs all completed keeps ``positions`` None (``start`` and on) and its
    values as the chunk's envelope pickled them already (``blob``): not pickled twice.
    """

    call: str
    positions: list[int] | None
    values: list | None
    start: int = 0
    blob: bytes | None = None  # the values, pickled (cloudpickle), instead of ``values``
    ref_positions: list[int] | None = None  # runs whose value is in the cache, not here (None: start and on) ...
    ref_keys: list[bytes] | None = None  # ... under these cache keys

    def items(self) -> Iterable[tuple[int, Any]]:
        """``(position in the call, value)`` of the runs kept with their values."""
        if self.values is None and self.blob is None:
            return ()
        values = self.values if self.blob is None else cloudpickle.loads(self.blob)
        positions = self.positions if self.positions is not None else range(self.start, self.start + len(values))
        return zip(positions, values)

    def refs(self) -> Iterable[tuple[int, bytes]]:
        """``(position in the call, cache key)`` of the runs kept as references to the cache."""
        keys = getattr(self, "ref_keys", None)  # unset in a record written before references
        if not keys:
            return ()
        positions = self.ref_positions if self.ref_positions is not None else range(self.start, self.start + len(keys))
        return zip(positions, keys)


@dataclass(slots=True)
class KeptCalls:
    """Direct calls of a flow run kept together (each call's one run): their calls and values.
    As written before ``KeptCallRuns``: still read."""

    calls: list[str]
    values: list


@dataclass(slots=True)
class KeptCallRuns:
    """Direct calls of a flow run kept together, by runs of consecutive calls of one task: the
    calls ``{calls[j]}#{firsts[j]}`` and on hold ``values[j]`` (each call's one run). A loop of
    256 calls of one task is one name, one number and a list of values, not 256 names.
    """

    calls: list[str]  # a call's name without its number: "{subflow path}{task name}"
    firsts: list[int]
    values: list[list]

    def items(self) -> Iterable[tuple[str, Any]]:
        """``(call, value)`` of every call kept."""
        for call, first, values in zip(self.calls, self.firsts, self.values):
            for i, value in enumerate(values, first):
                yield f"{call}#{i}", value


@dataclass(slots=True)
class FlowSource:
    """How to run a flow run again: its entrypoint and parameters (None: it cannot be, ``reason`` says why)."""

    flow_run_id: str
    flow_name: str
    entrypoint: str | None
    parameters_blob: bytes | None  # cloudpickled; inside a signed record, so loaded only when verified
    reason: str | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        import cloudpickle

        return cloudpickle.loads(self.parameters_blob) if self.parameters_blob is not None else {}


@dataclass
class KeptRuns:
    """What a flow run kept: values by call and position, and its source record."""

    calls: dict[str, dict[int, Any]] = field(default_factory=dict)
    source: FlowSource | None = None
    records: int = 0
    storages: set[str | None] = field(default_factory=set)  # the result storages read (None: the config's)

    def add(self, more: KeptRuns) -> None:
        """Fold in what another store kept (the runs of tasks with a result storage of their own)."""
        for call, runs in more.calls.items():
            self.calls.setdefault(call, {}).update(runs)
        self.records += more.records

    def reused(self) -> int:
        return sum(len(v) for v in self.calls.values())


class KeptStore(LMDBResultStore):
    """Kept records at ``{home}/kept`` (an ``LMDBResultStore`` in its own environment, no fsync);
    ``daskflow.results.keep`` bounds them by age, not the cache's ``max-bytes``."""

    bounded = False
    segmented = False

    def __init__(self, home: str | os.PathLike) -> None:  # noqa: D107 - LMDBResultStore's, another path
        super().__init__(home, name="kept", sync=False)


_stores: dict[tuple, ResultStore] = {}
_lock = threading.Lock()


def get_kept_store(home: str | os.PathLike | None, storage: StorageSpec | None = None) -> ResultStore:
    """This process's kept store of ``home``, in front of ``storage`` when given (``home`` None:
    the storage alone, for a process that does not see the home)."""
    key = (str(home), storage, os.getpid())
    store = _stores.get(key)
    if store is None:
        with _lock:
            store = _stores.get(key)
            if store is None:
                local = KeptStore(home) if home is not None else None
                if storage is None:
                    store = local
                else:
                    secret = storage.secret(home)
                    if secret is None:
                        raise ValueError(f"result storage {storage.url}: no secret here to sign kept results "
                                         "with: set daskflow.results.secret-file")
                    store = TieredStore(local, open_storage(storage), secret)
                _stores[key] = store  # type: ignore[assignment]
    return store  # type: ignore[return-value]


def flow_prefix(flow_run_id: str) -> bytes:
    return PREFIX + flow_run_id.encode() + b"/"


def chunk_key(flow_run_id: str, call: str, start: int, attempt: str) -> bytes:
    """The key of the record of the chunk of ``call`` that starts at ``start``, in ``attempt``."""
    return flow_prefix(flow_run_id) + xxhash.xxh3_128_digest(f"{call}|{start}|{attempt}".encode())


def source_key(flow_run_id: str) -> bytes:
    return flow_prefix(flow_run_id) + _SOURCE


def _local(store: ResultStore) -> KeptStore | None:
    if isinstance(store, KeptStore):
        return store
    return getattr(store, "local", None)


def list_keys(store: ResultStore, flow_run_id: str) -> list[bytes]:
    """Keys of every record of the flow run: one range read of the local environment, one
    listing of the storage."""
    prefix = flow_prefix(flow_run_id)
    keys: set[bytes] = set()
    local = _local(store)
    if local is not None:
        db = local.env.db(ENTRIES)

        def read(txn: Any) -> list[bytes]:
            cur = txn.cursor(db=db)
            out = []
            if cur.set_range(prefix):
                for k in cur.iternext(values=False):
                    if not k.startswith(prefix):
                        break
                    out.append(bytes(k))
            return out

        keys.update(local.env.read(read))
    storage = getattr(store, "storage", None)
    if storage is not None and not storage.broken:
        keys.update(storage.keys_under(prefix))
    return sorted(keys)


def load_kept(store: ResultStore, flow_run_id: str, cache: ResultStore | None = None) -> KeptRuns:
    """Every kept value of the flow run, by call and position, and its source record.

    Records are verified before anything is unpickled; a damaged or foreign one is left out
    (its runs execute again). Runs kept as references are read from ``cache`` (default: the
    result cache of the kept store's home and storage) in one batch; a reference the cache
    no longer holds is left out (that run executes again).
    """
    keys = list_keys(store, flow_run_id)
    out = KeptRuns()
    if not keys:
        return out
    hits, _bad = ser.load_many(store.get_many(keys), store.secret, time.time())
    refs: list[tuple[str, int, bytes]] = []
    for value in hits.values():
        if isinstance(value, KeptChunk):
            found = out.calls.setdefault(value.call, {})
            found.update(value.items())
            refs.extend((value.call, pos, key) for pos, key in value.refs())
            out.records += 1
        elif isinstance(value, (KeptCallRuns, KeptCalls)):
            pairs = value.items() if isinstance(value, KeptCallRuns) else zip(value.calls, value.values)
            for call, kept in pairs:
                out.calls.setdefault(call, {})[0] = kept
            out.records += 1
        elif isinstance(value, FlowSource):
            out.source = value
    if refs:
        _resolve(refs, cache if cache is not None else cache_of(store), out)
    return out


def _resolve(refs: list[tuple[str, int, bytes]], cache: ResultStore | None, out: KeptRuns) -> None:
    """Read the values kept as references from the cache, in one batch; misses are left out."""
    if cache is None:
        return
    found = cache.load_many([key for _, _, key in refs])
    for i, value in found.items():
        call, pos, _key = refs[i]
        out.calls.setdefault(call, {})[pos] = value


def cache_of(store: ResultStore) -> ResultStore | None:
    """The result cache beside a kept store: the same home's, in front of the same result storage."""
    local, storage = _local(store), getattr(store, "storage", None)
    home = local.home if local is not None else None
    if storage is None:
        return get_store(home) if home is not None else None
    return get_store(home, storage.spec)


def load_source(store: ResultStore, flow_run_id: str) -> FlowSource | None:
    """The flow run's source record (verified), or None."""
    records = store.get_many([source_key(flow_run_id)])
    hits, _bad = ser.load_many(records, store.secret, time.time())
    value = hits.get(0)
    return value if isinstance(value, FlowSource) else None


def prune_storage(storage: Any, keep_seconds: float) -> int:
    """Delete the kept records in a result storage written more than ``keep_seconds`` ago (the
    keep window: their values have expired); returns how many objects went."""
    return storage.remove_older(PREFIX.decode().rstrip("/"), keep_seconds)


def encode(value: KeptChunk | KeptCallRuns | KeptCalls | FlowSource, name: str, keep_seconds: float,
           secret: bytes) -> bytes:
    """A signed record of ``value``, expiring after ``keep_seconds``."""
    return ser.encode(value, f"kept:{name}", time.time() + keep_seconds, "cloudpickle", secret)


def prune_expired(store: KeptStore) -> int:
    """Delete the expired records of the local environment; returns how many."""
    now = time.time()
    doomed = [key for key, header, _size in store.headers() if header is None or (header["e"] and header["e"] <= now)]
    return store.delete(doomed) if doomed else 0
