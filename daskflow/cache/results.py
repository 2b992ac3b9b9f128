"""What every result store is: ``ResultStore`` (records in, values out), its hits and its warning.

``cache.store`` holds the LMDB store and the process's stores; ``cache.tiered`` puts a result
storage behind a local store. Both build on this.
"""

from __future__ import annotations

import abc
import contextlib
import gc
import time
import warnings
from typing import Any, Iterator

from daskflow.cache import serialization as ser

__all__ = ["CacheWarning", "Hits", "ResultStore", "WRITTEN", "display_key", "gc_paused"]

GC_PAUSE_KEYS = 1024  # lookups of this many keys or more run with the cyclic collector paused


class CacheWarning(UserWarning):
    """A cache problem that made a run execute (or a value load) without the cache."""


class Hits(dict):
    """``{position: value}`` of a lookup; ``too_large`` counts records left unread because they
    were over the reader's ``max_bytes`` (a client leaves those to the workers)."""

    too_large = 0


class Written:
    """A write that has ended: what ``ResultStore.start_many`` answers for a store that writes at once."""

    def wait(self) -> None:
        """Nothing to wait for."""


WRITTEN = Written()


class ResultStore(abc.ABC):
    """Where cache records live. Keys are bytes; records are signed ``serialization`` blobs."""

    @abc.abstractmethod
    def get_many(self, keys: list[bytes]) -> list[bytearray | None]:
        """The raw records of ``keys`` (None where missing), read in one transaction."""

    @abc.abstractmethod
    def put_many(self, items: list[tuple[bytes, bytes]], txn_key: str | None = None) -> None:
        """Write every record (and the transaction marker) atomically: all or nothing."""

    def start_many(self, items: list[tuple[bytes, bytes]]) -> Any:
        """``put_many`` that may return while the write is under way (a result storage's PUTs):
        the caller starts other writes meanwhile, then calls ``wait()`` on the answer, which
        ends the write and raises what ``put_many`` would. Here: written at once."""
        self.put_many(items)
        return WRITTEN

    @abc.abstractmethod
    def delete(self, keys: list[bytes]) -> int:
        """Remove records; returns how many existed."""

    @abc.abstractmethod
    def iterate(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, record)``; records are copies, safe to keep."""

    @abc.abstractmethod
    def is_committed(self, txn_key: str) -> bool:
        """Whether a ``transaction(key=txn_key)`` block was committed."""

    secret: bytes

    # -- shared: values rather than records -----------------------------------------
    def load_many(self, keys: list[bytes | None], now: float | None = None, max_bytes: int | None = None) -> Hits:
        """``{position: value}`` of the keys that hit (fresh, verified, loadable)."""
        wanted = [(i, k) for i, k in enumerate(keys) if k is not None]
        if not wanted:
            return Hits()
        records = self.get_many([k for _, k in wanted])
        found = self._decode_all([k for _, k in wanted], records, now)
        return Hits({wanted[pos][0]: value for pos, value in found.items()})

    def headers(self) -> list[tuple[bytes, dict | None, int]]:
        """``(key, header or None if unreadable, record size)`` of every entry (for listings)."""
        out = []
        for key, record in self.iterate():
            try:
                out.append((key, ser.read_header(record), len(record)))
            except ser.DamagedRecord:
                out.append((key, None, len(record)))
        return out

    def _decode_all(self, keys: list, records: list, now: float | None) -> dict[int, Any]:
        """``{position: value}`` of the verified, fresh ``records`` (aligned with ``keys``)."""
        now = time.time() if now is None else now
        hits, bad = ser.load_many(records, self.secret, now)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            pos, why = min(bad)
            warnings.warn(f"damaged cache entry treated as a miss: {self.describe(keys[pos])}: {why}{more}; it "
                          "will be overwritten when the run completes", CacheWarning, stacklevel=3)
        return hits

    def describe(self, key: bytes) -> str:
        """A key as a warning names it."""
        return display_key(key)

    # -- where a result storage's packs hold records (an LMDB store remembers it) -------
    def packed(self, keys: list[bytes]) -> dict:
        """``{key: (pack, offset, length)}`` this store remembers of ``keys`` (none here)."""
        return {}

    def remember_packed(self, refs: list[tuple[bytes, str, int, int]]) -> None:
        """Remember where a storage's packs hold records (``(key, pack, offset, length)``)."""


def display_key(key: bytes) -> str:
    """A key as warnings and listings name it."""
    from daskflow.cache.keys import display

    try:
        return display(key)
    except Exception:
        return repr(key)


@contextlib.contextmanager
def gc_paused(n: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a lookup of ``n`` keys builds its values.

    A batch lookup allocates a few objects per key (records, values, index entries) and
    frees none of them meanwhile: the collector's passes over the young generation find
    nothing to collect, and its older-generation passes scan every object of the process
    (a Dask client holds many). Measured on a cold lookup of 10^4 records from a storage: a
    quarter of its CPU. Reference counting still frees what dies; collection resumes at the
    end (nested or concurrent pauses leave it to the outermost, which found it enabled).
    """
    if n < GC_PAUSE_KEYS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
