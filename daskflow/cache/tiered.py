"""A result storage behind a local store: ``TieredStore``, the cache of tasks with ``result_storage``.

The local LMDB store (``cache.store``) is the index and the hot tier; the storage
(``cache.storage``, records in packs: ``cache.packs``) is where every record lives.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Iterator

from daskflow.cache.results import Hits, ResultStore, display_key, gc_paused

__all__ = ["TieredStore"]


class TieredStore(ResultStore):
    """A result storage (``cache.storage``) behind the local store, which is its hot tier.

    Reads try the local store, then the storage for what it lacks (one batched read);
    small records found there are copied into the local store. Writes go to the storage,
    and small records to the local store too (large ones live in the storage only).
    ``local`` is None on a worker that does not reach the submitter's home.
    """

    HOT_BYTES = 64 * 1024

    def __init__(self, local: ResultStore | None, storage: Any, secret: bytes) -> None:
        self.local, self.storage, self.secret = local, storage, secret
        self._copying: concurrent.futures.Future | None = None  # the hot tier's copy of a lookup's records

    def get_many(self, keys: list[bytes]) -> list[bytearray | None]:
        return self._get(keys, None)[0]

    def _copy(self, records: list[tuple[bytes, bytes]]) -> None:
        """Copy records read from the storage into the hot tier without the lookup waiting for
        it: the copy (a sort, an LMDB write, its fsync) runs on a thread of its own while the
        lookup verifies and loads the values. One copy at a time; every write or read of the
        hot tier here waits for it first (``settle``), and so does the process's exit. A copy
        that fails is lost (the records are still in the storage)."""
        self.settle()
        self._copying = _copier().submit(self.local.put_many, records)  # type: ignore[union-attr]

    def settle(self) -> None:
        """Until the hot tier's copy under way (if any) has ended."""
        copying, self._copying = self._copying, None
        if copying is not None:
            try:
                copying.result()
            except Exception:  # noqa: BLE001 - a copy is a hint: the storage holds the records
                pass

    def load_many(self, keys: list[bytes | None], now: float | None = None, max_bytes: int | None = None) -> Hits:
        """As ``ResultStore.load_many``; with ``max_bytes`` no larger record is fetched from the
        storage (a ranged read stops there): the client leaves those to the workers."""
        with gc_paused(len(keys)):
            wanted = [(i, k) for i, k in enumerate(keys) if k is not None]
            if not wanted:
                return Hits()
            records, large = self._get([k for _, k in wanted], max_bytes)
            found = self._decode_all([k for _, k in wanted], records, now)
            hits = Hits({wanted[pos][0]: value for pos, value in found.items()})
        hits.too_large = large
        return hits

    def _get(self, keys: list[bytes], max_bytes: int | None) -> tuple[list, int]:
        """The records of ``keys`` (None: missing, or over ``max_bytes``) and how many were too large."""
        self.settle()
        records: list = self.local.get_many(keys) if self.local is not None else [None] * len(keys)
        large = 0
        if max_bytes is not None:
            for i, r in enumerate(records):
                if r is not None and len(r) > max_bytes:
                    records[i], large = None, large + 1
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            hot, far = [], []
            wanted = [keys[i] for i in missing]
            self._recall(wanted)
            fetched, over = self.storage.get_bounded(wanted, max_bytes)
            large += over
            for i, record in zip(missing, fetched):
                if record is not None:
                    records[i] = record
                    if len(record) <= self.HOT_BYTES:
                        hot.append((keys[i], record))
                    else:
                        far.append(keys[i])
            if hot and self.local is not None:
                self._copy(hot)
            if far:
                self._remember(far)
        # the storage's read stamps count hot-tier hits too: a record read here every day
        # must not be evicted from the storage other hosts read
        self.storage.note_reads([k for k, r in zip(keys, records) if r is not None])
        return records, large

    def describe(self, key: bytes) -> str:
        pack = self.storage.where(key)
        return display_key(key) + (f" (in the pack {pack})" if pack else "")

    def _recall(self, keys: list[bytes]) -> None:
        """Tell the storage where the local index remembers keys it does not know yet to be."""
        local, storage = self.local, self.storage
        if local is None:
            return
        unknown = [k for k in keys if k not in storage.refs and k not in storage.singles]
        if unknown:
            storage.adopt(local.packed(unknown))

    def _remember(self, keys: list[bytes]) -> None:
        """Remember in the local index where the storage's packs hold records the hot tier does not."""
        if self.local is not None:
            refs = self.storage.refs
            self.local.remember_packed([(k, r.pack, r.offset, r.length) for k in keys if (r := refs.get(k))])

    def put_many(self, items: list[tuple[bytes, bytes]], txn_key: str | None = None) -> None:
        self.start_many(items, txn_key).wait()

    def start_many(self, items: list[tuple[bytes, bytes]], txn_key: str | None = None) -> Any:
        """Write to the storage and the hot tier at once: the storage's PUTs go out first and
        the local LMDB write runs while they are under way; ``wait()`` on the answer ends the
        PUTs (a chunk waits for the slower of the two writes, not for both in a row). A write
        the storage refuses raises there, after the local write (which holds valid, signed
        records: a hot tier may hold more than its storage)."""
        pending = self.storage.start_put(items)
        try:
            self.put_hot(items, txn_key)
        except BaseException:
            pending.wait()
            raise
        return pending

    def put_hot(self, items: list[tuple[bytes, bytes]], txn_key: str | None = None) -> None:
        """The hot tier's share of a write (records up to ``HOT_BYTES``) alone: the caller writes
        the storage's itself (``engine.worker.write_behind``: with other chunks', later)."""
        self.settle()
        if self.local is not None:
            self.local.put_many([(k, r) for k, r in items if len(r) <= self.HOT_BYTES], txn_key=txn_key)

    def put_storage(self, items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Write the records to the storage; returns those the local hot tier keeps (the caller
        writes them, e.g. with a ``transaction()`` block's other records, in one transaction)."""
        self.storage.put_many(items)
        self.settle()
        return [(k, r) for k, r in items if len(r) <= self.HOT_BYTES]

    def delete(self, keys: list[bytes]) -> int:
        self.settle()
        return self.local.delete(keys) if self.local is not None else 0

    def iterate(self) -> Iterator[tuple[bytes, bytes]]:
        self.settle()
        return self.local.iterate() if self.local is not None else iter(())

    def is_committed(self, txn_key: str) -> bool:
        self.settle()
        return self.local is not None and self.local.is_committed(txn_key)


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _copier() -> concurrent.futures.ThreadPoolExecutor:
    """The process's one thread for hot-tier copies (started at the first; its pending copies
    end before the process exits: ``concurrent.futures`` joins its threads at exit)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskflow-hot-tier")
    return _pool
