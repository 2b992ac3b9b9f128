"""The result store: signed cache records by key, behind a small interface.

``ResultStore`` (``cache.results``) is what the engine and the CLI use: ``get_many`` (one read for a whole
chunk or map), ``put_many`` (one atomic write for a chunk or a ``transaction()``
block, with an optional transaction marker), ``delete`` and ``iterate``. The only
implementation today is ``LMDBResultStore`` at ``$DASKFLOW_HOME/cache``, shared by the
client and every LocalCluster worker process of the host. A store hosted by the
cluster (for clusters spanning hosts) would implement the same five methods.

Reading verifies the signature and loads the value; a damaged or forged record is a
miss with one warning per read, never an exception.

A damaged *environment* (a truncated or overwritten ``data.mdb``) is moved aside to
``cache.damaged-{time}`` and an empty cache takes its place, with one warning naming
both paths; runs go on. A home that cannot hold a cache (unsafe, not a directory, not
writable) gives a ``NullStore``: every lookup misses and nothing is written, with one
warning per process naming the path and the fix. LMDB errors while reading are misses.

Who may open the store at a path: ``cache/tokens.py``. A result storage behind this store:
``cache/tiered.py``.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import struct
import threading
import time
import warnings
from operator import itemgetter
from typing import Any, Iterator

import msgpack

import lmdb

from daskflow import _lmdb, config
from daskflow.cache import bounds, segments
from daskflow.cache.results import CacheWarning, Hits, ResultStore, gc_paused
from daskflow.cache import serialization as ser
from daskflow.cache.storage import open_storage
from daskflow.cache.storage_spec import StorageSpec
from daskflow.cache.tiered import TieredStore
from daskflow.exceptions import StoreError

ENTRIES, TXNS, READS, READ_LOGS = "entries", "txns", "reads", "read-logs"  # see cache/bounds.py
PACKED = "packed"  # key -> where a result storage holds it: msgpack [pack path, offset, length]
# key -> the size (u64) of a record over LARGE_MARK: a reader with ``max_bytes`` (the client)
# learns a record is too large for it without reading it. Reading a value of the map, even as a
# view, maps all of its pages into the reader (an LMDB get of a 20 MB value: +20 MB RssFile).
LARGE = "large"
LARGE_MARK = 64 * 1024
_SIZE = struct.Struct("<Q")


class LMDBResultStore(ResultStore):
    """The result store in an LMDB environment at ``{home}/cache``.

    Example:
        >>> store = get_store(config.home())  # doctest: +SKIP
        >>> store.put_many([(key, record)])   # doctest: +SKIP
    """

    bounded = True  # daskflow.cache.max-bytes applies to it
    segmented = True  # fresh results of a chunk also go in segment records (cache/segments.py)

    def __init__(self, home: str | os.PathLike, recover: bool = True, readonly: bool = False, name: str = "cache",
                 sync: bool = True) -> None:
        self.home = pathlib.Path(home)
        self.path = self.home / name
        self.secret = ser.load_secret(self.home)
        self.env = _lmdb.open_env(self.path, dbs=(ENTRIES, TXNS, READS, READ_LOGS, PACKED, LARGE), recover=recover,
                                  readonly=readonly, sync=sync)
        self.reads = bounds.ReadStamps()
        self.next_keep = 0.0  # when (monotonic) this process next applies daskflow.cache.keep
        if not self.env.readonly:
            atexit.register(self._flush_at_exit)
        if self.env.moved_aside is not None:
            aside, why = self.env.moved_aside
            warnings.warn(f"the result cache {self.path} was damaged ({why}); it was moved aside to {aside} "
                          "and an empty cache replaces it: runs execute until they are cached again",
                          CacheWarning, stacklevel=4)

    def get_many(self, keys: list[bytes]) -> list[bytearray | None]:
        db = self.env.db(ENTRIES)

        def read(txn: Any) -> list:
            if not txn.stat(db)["entries"]:  # an empty store (a new home's hot tier): no get per key
                return [None] * len(keys)
            get = txn.get
            # one copy out of the map, into a bytearray that loaded arrays then share
            return [None if (v := get(k, db=db)) is None else bytearray(v) for k in keys]

        records = self._misses_on_error(lambda: self.env.read(read, buffers=True), [None] * len(keys))
        self._note_reads([k for k, r in zip(keys, records) if r is not None])
        return records

    def _misses_on_error(self, read: Any, misses: Any) -> Any:
        """A read that LMDB cannot do (a damaged page) is all misses, with one warning."""
        try:
            return read()
        except lmdb.Error as exc:
            warnings.warn(f"the result cache {self.path} cannot be read ({type(exc).__name__}: {exc}); "
                          "treated as misses: the runs execute", CacheWarning, stacklevel=4)
            return misses

    def load_many(self, keys: list[bytes | None], now: float | None = None, max_bytes: int | None = None) -> Hits:
        """``{position: value}`` of the keys that hit; with ``max_bytes``, larger records are not
        read (counted in ``Hits.too_large``)."""
        # Decoded inside the read transaction, straight from the map: only values with
        # out-of-band buffers (arrays) are copied out, once, into a bytearray they share.
        db = self.env.db(ENTRIES)
        if all(k is None for k in keys):
            return Hits()

        small = ser.SMALL
        limit = max_bytes if max_bytes is not None else float("inf")

        now = time.time() if now is None else now
        seg_keys: list[bytes] = []

        def read(txn: Any) -> Hits:
            get = txn.get
            found = self._segments(lambda k: get(k, db=db), keys, now)
            seg_keys.extend(found.keys)
            rest = found.rest
            over = self._over(txn, rest, limit)
            if over:  # records known to be too large: not read (their pages stay out of this process)
                rest = [None if i in over else k for i, k in enumerate(rest)]
            # Small records are copied to bytes at once: a list of 10^5 live map views
            # (GC-tracked objects) would make the collector scan them again and again.
            records = [None if k is None or (v := get(k, db=db)) is None else bytes(v) if len(v) <= small else v
                       for k in rest]
            large = len(over)
            if limit != float("inf"):
                for i, v in enumerate(records):
                    if v is not None and len(v) > limit:
                        records[i], large = None, large + 1
            hits = Hits(self._decode_all(rest, records, now))
            hits.update(found.values)
            hits.too_large = large
            return hits

        with gc_paused(len(keys)):
            hits = self._misses_on_error(lambda: self.env.read(read, buffers=True), Hits())
        if hits:
            self._note_reads([keys[i] for i in hits] + seg_keys)
        return hits

    def _over(self, txn: Any, keys: list, limit: float) -> set[int]:
        """Positions of ``keys`` whose record the LARGE marks say is over ``limit`` (none
        without a limit, or in a store that never held a record over LARGE_MARK)."""
        if limit == float("inf") or not self.env.has_db(LARGE):
            return set()
        marks = self.env.db(LARGE)
        if not txn.stat(marks)["entries"]:
            return set()
        get, size = txn.get, _SIZE.unpack
        return {i for i, k in enumerate(keys) if k is not None and (m := get(k, db=marks)) is not None
                and size(m)[0] > limit}

    def _segments(self, get: Any, keys: list, now: float) -> segments.Found:
        """What segment records (``cache.segments``) hold of ``keys``: one warning for damaged ones."""
        if not self.segmented:
            return segments.Found({}, keys, [], [])
        found = segments.read(get, keys, self.secret, now)
        if found.damaged:
            seg, why = found.damaged[0]
            warnings.warn(f"damaged cache segment treated as a miss: {seg.key!r}: {why}; its members are "
                          "read one by one", CacheWarning, stacklevel=4)
        return found

    # -- read stamps and the size limit (see cache/bounds.py) ----------------------------
    def _note_reads(self, keys: list) -> None:
        """Remember hits for their read stamps (no write here, unless a batch is due)."""
        if self.reads.note(keys) and not self.env.readonly:
            self.flush_reads()

    def flush_reads(self) -> None:
        """Write the pending read stamps, in one write transaction."""
        keys = self.reads.take()
        if keys:
            try:
                self.env.write(self._stamp_writer(keys))
            except lmdb.Error:  # stamps are a hint: lost ones only make entries look older
                pass

    def _stamp_writer(self, keys: list[bytes]) -> Any:
        """What a write transaction does with pending read stamps: one log value, folded into
        per-key stamps once logs pile up (see cache/bounds.py)."""
        if not keys:
            return lambda txn: None
        entries, stamps, logs, now = self.env.db(ENTRIES), self.env.db(READS), self.env.db(READ_LOGS), time.time()

        def write(txn: Any) -> None:
            bounds.write_log(txn, logs, keys, now)
            if txn.stat(logs)["entries"] >= bounds.FOLD_LOGS:
                bounds.fold(txn, entries, stamps, logs)

        return write

    def _flush_at_exit(self) -> None:
        try:
            self.flush_reads()
        except Exception:  # a process going away: its last stamps are lost, nothing else
            pass

    def used_bytes(self, txn: Any = None) -> int:
        """Bytes the entries and their stamps occupy (LMDB's page counts: no scan)."""
        if txn is None:
            return self.env.read(self.used_bytes)
        total = 0
        for name in (ENTRIES, READS, READ_LOGS):
            if self.env.has_db(name):
                s = txn.stat(self.env.db(name))
                total += (s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]) * s["psize"]
        return total

    def entries(self) -> list[bounds.Entry]:
        """Every entry with its size, task, write, expiry and last read time (headers read from
        views of the map, one struct read each: a listing of 10^5 entries copies no value)."""
        db = self.env.db(ENTRIES)
        stamps = (self.env.db(READS), self.env.db(READ_LOGS)) if self.env.has_db(READ_LOGS) else None
        head, Entry, names = ser.SUMMARY.unpack_from, bounds.Entry, ser.SERIALIZERS
        tasks: dict[bytes, str] = {}  # the task key is the key's middle part: decoded once per task

        def read(txn: Any) -> list:
            out: list = []
            add, magic_ok = out.append, ser.MAGIC  # bound once: 10^5 iterations
            last = {} if stamps is None else bounds.last_reads(txn, *stamps)
            read_at = last.get
            for key, record in txn.cursor(db=db).iternext():
                key = bytes(key)
                prefix = key[:-16]
                task = tasks.get(prefix) or tasks.setdefault(prefix, prefix[3:-1].decode(errors="replace"))
                try:
                    magic, _h, created, expires, code, _n, _p, _k = head(record)
                    serializer = names[code] if magic == magic_ok else None
                except (struct.error, IndexError):
                    serializer = None
                if serializer is None:
                    created, expires, task, serializer = None, None, "?", "damaged"
                add(Entry(key, len(record), created, read_at(key), task, expires or None, serializer))
            return out

        return self.env.read(read, buffers=True)

    def evict(self, limit: int, target: float | None = None) -> int:
        """Delete the least recently used entries until the store holds at most ``target`` bytes
        (default: ``LOW_WATER`` of ``limit``); returns how many went. One process evicts at a
        time (others return 0)."""
        target = limit * bounds.LOW_WATER if target is None else target
        removed = 0
        with bounds.evicting(self.home / ".cache-evict.lock") as mine:
            if not mine:
                return 0
            for _ in range(4):  # page counts move in steps: measure again after each round
                used = self.used_bytes()
                if used <= target:
                    break
                gone = bounds.victims(self.entries(), used, target)
                if not gone:
                    break
                removed += self.delete([e.key for e in gone])
            dbs = self.env.db(ENTRIES), self.env.db(READS), self.env.db(READ_LOGS)
            self.env.write(lambda txn: bounds.fold(txn, *dbs))
        return removed

    def put_many(self, items: list[tuple[bytes, bytes]], txn_key: str | None = None) -> None:
        if not items and txn_key is None:
            return
        entries, txns = self.env.db(ENTRIES), self.env.db(TXNS)
        marker = msgpack.packb({"committed": time.time(), "entries": len(items)}) if txn_key else None

        # Inserting in key order halves the cost of a chunk's write (B-tree locality);
        # the sort is stable, so the last record of a repeated key still wins.
        ordered = sorted(items, key=itemgetter(0)) if len(items) > 1 else items

        if self.bounded and time.monotonic() >= self.next_keep:
            self.apply_keep()
        stamps = self._stamp_writer(self.reads.take())  # pending read stamps ride along
        limit = bounds.max_bytes() if self.bounded else None

        marks = [(k, _SIZE.pack(len(r))) for k, r in ordered if len(r) > LARGE_MARK]
        large = self.env.db(LARGE) if marks else None

        def write(txn: Any) -> int:
            txn.cursor(db=entries).putmulti(ordered)  # one C loop (a Python put per record was half the write)
            if marks:
                txn.cursor(db=large).putmulti(marks)
            if marker is not None:
                txn.put(txn_key.encode(), marker, db=txns)  # type: ignore[union-attr]
            stamps(txn)
            return self.used_bytes(txn) if limit is not None else 0

        used = self.env.write(write)
        if limit is not None and used > limit:  # amortised: an eviction frees a tenth of the limit
            self.evict(limit)

    def apply_keep(self) -> int:
        """Delete the entries unused for ``daskflow.cache.keep`` if no process did within
        ``cache.prune-every``; returns how many went. Called by writes: at this process's
        first, then once per ``prune-every`` (see ``bounds.apply_keep``)."""
        self.next_keep = time.monotonic() + bounds.prune_every_seconds()
        return bounds.apply_keep(self.home, self.entries, self.delete)

    def delete(self, keys: list[bytes]) -> int:
        db, reads = self.env.db(ENTRIES), self.env.db(READS)

        marks = self.env.db(LARGE) if self.env.has_db(LARGE) else None

        def write(txn: Any) -> int:
            for k in keys:
                txn.delete(k, db=reads)
                if marks is not None:
                    txn.delete(k, db=marks)
            return sum(1 for k in keys if txn.delete(k, db=db))

        return self.env.write(write)

    def iterate(self) -> Iterator[tuple[bytes, bytes]]:
        db = self.env.db(ENTRIES)
        # Copied out in one read transaction: a long-lived reader would pin old pages.
        return iter(self.env.read(lambda txn: list(txn.cursor(db=db).iternext())))

    def headers(self) -> list[tuple[bytes, dict | None, int]]:
        # Headers parsed from views of the map: a listing never copies the values.
        db = self.env.db(ENTRIES)

        def read(txn: Any) -> list:
            out = []
            for key, record in txn.cursor(db=db).iternext():
                try:
                    header = ser.read_header(record)
                except ser.DamagedRecord:
                    header = None
                out.append((bytes(key), header, len(record)))
            return out

        return self.env.read(read, buffers=True)

    def is_committed(self, txn_key: str) -> bool:
        db = self.env.db(TXNS)
        return self.env.read(lambda txn: txn.get(txn_key.encode(), db=db)) is not None

    # -- where a result storage holds records too large for this hot tier ----------------------
    def packed(self, keys: list[bytes]) -> dict[bytes, tuple[str, int, int]]:
        """``{key: (pack path, offset, length)}`` of the keys remembered (see ``remember_packed``)."""
        if not self.env.has_db(PACKED):
            return {}
        db = self.env.db(PACKED)

        def read(txn: Any) -> dict:
            if not txn.stat(db)["entries"]:  # nothing remembered (a new home): no get per key
                return {}
            get = txn.get
            return {k: tuple(msgpack.unpackb(v)) for k in keys if (v := get(k, db=db)) is not None}

        return self._misses_on_error(lambda: self.env.read(read), {})

    def remember_packed(self, refs: list[tuple[bytes, str, int, int]]) -> None:
        """Remember where records are in a storage's packs, so that the next process reading
        them here goes straight to them (no listing, no header)."""
        if not refs or self.env.readonly:
            return
        db = self.env.db(PACKED)

        def write(txn: Any) -> None:
            for key, path, offset, length in refs:
                txn.put(key, msgpack.packb([path, offset, length]), db=db)

        try:
            self.env.write(write)
        except lmdb.Error:  # a hint: without it the next process lists the storage again
            pass

    def clear(self) -> int:
        """Delete every entry and transaction marker in one write transaction; returns the entry count."""
        entries, txns = self.env.db(ENTRIES), self.env.db(TXNS)

        def write(txn: Any) -> int:
            n = txn.stat(entries)["entries"]
            for db in (entries, txns, self.env.db(READS), self.env.db(READ_LOGS), self.env.db(PACKED),
                       self.env.db(LARGE)):
                txn.drop(db, delete=False)
            return n

        return self.env.write(write)

    def compact(self) -> tuple[int, int]:
        """Rewrite the environment without free pages; returns (bytes before, bytes after).

        Run it when no pipeline is using the cache: other processes keep the old file open.
        """
        data = self.path / "data.mdb"
        before = data.stat().st_size
        tmp = self.home / f".cache-compact-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.env.copy_compact(tmp)
        _lmdb.close_env(self.path)
        os.chmod(tmp / "data.mdb", 0o600)
        os.replace(tmp / "data.mdb", data)
        shutil.rmtree(tmp, ignore_errors=True)
        _stores.pop((str(self.home), os.getpid()), None)
        self.env = _lmdb.open_env(self.path, dbs=(ENTRIES, TXNS, READS, READ_LOGS, PACKED, LARGE))
        return before, data.stat().st_size


class NullStore(ResultStore):
    """The store of a home that cannot hold a cache: every lookup misses, nothing is kept.

    Its secret is random and never written anywhere, so nothing it signs is ever read back.
    """

    def __init__(self, home: str | os.PathLike) -> None:
        self.home = pathlib.Path(home)
        self.path = self.home / "cache"
        self.secret = os.urandom(ser.SECRET_BYTES)

    def get_many(self, keys: list[bytes]) -> list[bytearray | None]:
        return [None] * len(keys)

    def put_many(self, items: list[tuple[bytes, bytes]], txn_key: str | None = None) -> None:
        return None

    def delete(self, keys: list[bytes]) -> int:
        return 0

    def iterate(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(())

    def is_committed(self, txn_key: str) -> bool:
        return False


_stores: dict[tuple[str, int], ResultStore] = {}
_lock = threading.Lock()


def get_store(home: str | os.PathLike | None, storage: StorageSpec | None = None) -> LMDBResultStore:
    """This process's store of the daskflow home ``home`` (opened once per process), in front
    of the result ``storage`` when there is one (``home`` None: the storage alone).

    Never raises for a bad home or a damaged file (see the module docstring): a
    ``NullStore`` stands in, after one warning.
    """
    if storage is not None:
        return _tiered(home, storage)  # type: ignore[return-value]
    key = (str(home), os.getpid())
    store = _stores.get(key)
    if store is None:
        with _lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = _open(home)  # type: ignore[arg-type]
    return store  # type: ignore[return-value]


def _tiered(home: str | os.PathLike | None, storage: StorageSpec) -> TieredStore:
    key = (str(home), storage, os.getpid())
    store = _stores.get(key)
    if store is None:
        local = get_store(home) if home is not None else None
        secret = storage.secret(home)
        if secret is None:
            raise StoreError(f"result storage {storage.url}: no secret to sign results with here: set "
                             "daskflow.results.secret-file to a key file every host can read")
        with _lock:
            store = _stores.setdefault(key, TieredStore(local, open_storage(storage), secret))
    return store  # type: ignore[return-value]


def _open(home: str | os.PathLike) -> ResultStore:
    try:
        config.check_home(home, create=True)
        return LMDBResultStore(home)
    except (StoreError, OSError, lmdb.Error) as exc:
        warnings.warn(f"no result cache: {exc}; runs execute uncached", CacheWarning, stacklevel=4)
        return NullStore(home)


def open_existing(home: str | os.PathLike) -> LMDBResultStore | None:
    """The cache of ``home`` for read-only commands, opened read-only (LMDB ``readonly``, unless
    this process has it open for writing): None when there is none (nothing is created).

    Raises ``StoreError`` (``DamagedStore`` for a damaged file) instead of repairing anything.
    """
    home = config.check_home(home)
    if not (home / "cache" / "data.mdb").exists() or not (home / "secret.key").exists():
        return None
    key = (str(home), os.getpid())
    store = _stores.get(key)
    if isinstance(store, LMDBResultStore):  # this process writes it already
        return store
    return LMDBResultStore(home, recover=False, readonly=True)


def close_reader(store: ResultStore) -> None:
    """Close a store ``open_existing`` opened read-only (so this process may open it writable later)."""
    if isinstance(store, LMDBResultStore) and store.env.readonly:
        _lmdb.close_env(store.path)


def close_store(home: str | os.PathLike) -> None:
    """Forget this process's handle (tests; the CLI after replacing files)."""
    store = _stores.pop((str(home), os.getpid()), None)
    if store is not None:
        if isinstance(store, LMDBResultStore):
            store.flush_reads()
        _lmdb.close_env(store.path)
