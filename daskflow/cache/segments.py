"""Segments: the values of runs of consecutive small records, stored once more as one record.

A fully cached rerun of a 10^5-element map read 10^5 records one by one: an LMDB get, a
MAC check and an unpickle each, ~3-4 us a record, most of a rerun's time. A segment
record holds the values of ~64 consecutive keys of one map with one MAC, so the rerun
reads 1/64 as many records and checks 1/64 as many MACs.

Where segments start does not depend on how a run cut its map into chunks: a key whose
last byte (keys end with a hash) has its low ``BITS`` bits zero ends a segment (content-defined, as rsync and restic
cut files). The writer (a worker, for the fresh results of a chunk) and a later reader
(the client, for all the keys of a map) cut the same key sequence at the same keys, so
they name the same segments, ``v1/segment/<hash of the keys>``, with no index of which
segments exist. A segment is written only when every one of its keys has a fresh small
record in the same chunk: segments cut by a chunk's edge, holding a failed run or an
array are not written, and their keys are read one by one as before.

A segment is an ordinary signed record (serializer ``segment``): it expires, is listed,
counted against ``daskflow.cache.max-bytes``, evicted and cleared like the others. A
member's own record stays: a lookup of one key, a different map over some of the same
inputs, and ``refresh_cache`` (which rewrites both) work as before. Segments are local:
a result storage gets the members only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

from daskflow.cache import serialization as ser

__all__ = ["Found", "Segment", "cut", "build", "read", "PREFIX"]

PREFIX = b"v1/segment/"
BITS = 6  # ~64 keys a segment
MIN_KEYS = 8  # shorter segments are not worth a record
_MASK = (1 << BITS) - 1


@dataclasses.dataclass(frozen=True)
class Segment:
    """Keys ``[lo, hi)`` of a sequence, and the key of the record holding their values."""

    lo: int
    hi: int
    key: bytes


def cut(keys: list[bytes | None]) -> list[Segment]:
    """The complete segments of ``keys`` (None: a key that cannot be looked up, which no segment holds)."""
    # A cache key ends with a 16-byte hash (cache.keys): its last byte is as good as a new hash.
    if None in keys:  # -1: a break, the next segment starts after the next boundary
        ends = [-1 if k is None else i for i, k in enumerate(keys) if k is None or not k[-1] & _MASK]
    else:
        ends = [i for i, k in enumerate(keys) if not k[-1] & _MASK]
    out, join, blake = [], b"".join, hashlib.blake2b
    prev = None
    for end in ends:
        if end < 0:
            prev = None
            continue
        if prev is not None and end - prev >= MIN_KEYS:
            lo, hi = prev + 1, end + 1
            out.append(Segment(lo, hi, PREFIX + blake(join(keys[lo:hi]), digest_size=16).digest()))  # type: ignore[arg-type]
        prev = end
    return out


def build(keys: list[bytes | None], records: dict[int, bytes], secret: bytes) -> list[tuple[bytes, bytes]]:
    """``(segment key, record)`` of the complete segments of ``keys`` whose every key has a
    record in ``records`` (position -> a record this process encoded just now)."""
    out = []
    for seg in cut(keys):
        members = [records.get(i) for i in range(seg.lo, seg.hi)]
        if None in members:
            continue
        record = ser.segment(members, secret)  # type: ignore[arg-type]
        if record is not None:
            out.append((seg.key, record))
    return out


@dataclasses.dataclass
class Found:
    """What the segments of a lookup held: ``values`` by position, ``rest`` (the lookup's keys
    with None where a segment answered: still to read one by one), the keys of the segments
    that answered, and ``(segment, why)`` of damaged ones."""

    values: dict[int, Any]
    rest: list[bytes | None]
    keys: list[bytes]
    damaged: list[tuple[Segment, str]]


def read(get: Callable[[bytes], Any], keys: list[bytes | None], secret: bytes, now: float) -> Found:
    """The segments of ``keys``, read with ``get`` (a read transaction's)."""
    segs = cut(keys) if len(keys) >= MIN_KEYS else []
    if not segs:
        return Found({}, keys, [], [])
    records = [get(s.key) for s in segs]
    records = [None if r is None else bytes(r) for r in records]
    hits, bad = ser.load_many(records, secret, now)
    found = Found({}, keys, [], [(segs[j], why) for j, why in bad])
    for j, members in hits.items():
        seg = segs[j]
        if len(members) != seg.hi - seg.lo:
            continue
        if found.rest is keys:
            found.rest = list(keys)
        found.values.update(zip(range(seg.lo, seg.hi), members))
        found.rest[seg.lo:seg.hi] = [None] * (seg.hi - seg.lo)
        found.keys.append(seg.key)
    return found
