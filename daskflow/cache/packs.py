"""Packs: the records of one chunk, written to a result storage as ONE object.

A storage round trip costs far more than a small record (an object PUT or GET is
milliseconds; creating a file a few hundred µs), so a worker writes a chunk's records of
one task together, and a reader fetches many records with one read of the pack.

Layout of a pack (every record inside stays the signed ``cache.serialization`` blob)::

    b"DFPACK1\\n"  u32 little-endian header length H  header (H bytes)  record 0  record 1 ...

The header is msgpack ``[digests, lengths]``: the 16-byte key digests of the records, joined,
and their lengths; record ``i`` starts where record ``i - 1`` ends. Every record of a pack
shares the key's task segment (``v1/{task_key}/``, ``kept/{flow run}/``), and the pack lives
under it, at ``{url}/{segment}packs/{name}``: a reader that knows nothing lists the segment
once (one LIST) and reads the headers of the packs it has not seen. A name is unique to its
writer (time, a per-process token, pid, counter), so two writers of one key write two
whole packs, and a reader takes either: each holds a complete, signed value.

Records of ``SINGLE_BYTES`` or more keep an object of their own, at ``{url}/{key as text}``
(the layout before packs, which readers still find).
"""

from __future__ import annotations

import itertools
import operator
import os
import re
import struct
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import msgpack

MAGIC = b"DFPACK1\n"
_HEAD = struct.Struct("<I")
PREFIX_BYTES = len(MAGIC) + _HEAD.size
HEAD_READ = 256 * 1024  # the first read of a pack: its header, and the whole of a pack of small records
SINGLE_BYTES = 1 << 20  # a record this large is an object of its own
DIR = "packs"
# {segment}packs/{name}: a cache segment (v1/{task}/) or a kept one (kept/{flow run}/)
# (matched against paths relative to the storage's URL: a task's name may hold a "/")
PACK_NAME = re.compile(r"((?:v\d+|kept)/.+/)packs/([0-9a-f]{16}-[0-9a-f]{12}-\d+-\d+)")

_TOKEN = os.urandom(6).hex()  # pids repeat across hosts: a token per process keeps names apart
_COUNTER = itertools.count()


class DamagedPack(ValueError):
    """A pack whose header cannot be read (truncated, altered, not a pack)."""


class PackRef(NamedTuple):
    """Where one record is: its pack's path, offset and length (a named tuple, not a frozen
    dataclass: a cold lookup makes one per record, and this one is built ~7x faster)."""

    pack: str
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(slots=True)
class PackHeader:
    """A pack's records: their key digests, where each starts and its length."""

    digests: list[bytes]
    offsets: list[int]
    lengths: list[int]

    @property
    def size(self) -> int:
        """The pack's size in bytes, as its header says."""
        return self.offsets[-1] + self.lengths[-1] if self.offsets else 0


def segment(key: bytes) -> str:
    """The task segment of a key, as text (``v1/{task_key}/``): where its packs live."""
    return key[:-16].decode()


def new_name() -> str:
    """A pack name no other writer uses."""
    return f"{time.time_ns():016x}-{_TOKEN}-{os.getpid()}-{next(_COUNTER)}"


def encode(records: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The pack of ``records`` (keys of one segment) as parts to write one after another."""
    digests = b"".join(k[-16:] for k, _ in records)
    header = msgpack.packb([digests, [len(r) for _, r in records]])
    return [MAGIC + _HEAD.pack(len(header)) + header, *(r for _, r in records)]


def header_length(head: bytes) -> int:
    """How many leading bytes hold the header (the prefix included); raises ``DamagedPack``."""
    if len(head) < PREFIX_BYTES or head[:len(MAGIC)] != MAGIC:
        raise DamagedPack("not a pack (no header)")
    return PREFIX_BYTES + _HEAD.unpack_from(head, len(MAGIC))[0]


def parse_header(head: bytes) -> PackHeader:
    """The header at the start of ``head`` (which must hold all of it); raises ``DamagedPack``."""
    end = header_length(head)
    if len(head) < end:
        raise DamagedPack("truncated in its header")
    try:
        digests, lengths = msgpack.unpackb(head[PREFIX_BYTES:end])
    except Exception as exc:  # noqa: BLE001 - any garbage in a header is a damaged pack
        raise DamagedPack(f"unreadable header ({type(exc).__name__})") from None
    if not isinstance(digests, bytes) or not isinstance(lengths, list) or len(digests) != 16 * len(lengths):
        raise DamagedPack("inconsistent header")
    offsets = list(itertools.accumulate(lengths, initial=end))[:-1]
    return PackHeader([digests[i:i + 16] for i in range(0, len(digests), 16)], offsets, lengths)


def refs(path: str, prefix: bytes, header: PackHeader) -> dict[bytes, PackRef]:
    """``{key: PackRef}`` of every record of the pack at ``path`` (keys of segment ``prefix``);
    built by C loops (``map``, ``zip``): ~0.5 µs a record, a cold lookup's share of the index."""
    keys = [prefix + d for d in header.digests]
    return dict(zip(keys, map(PackRef._make, zip(itertools.repeat(path), header.offsets, header.lengths))))


def spans(wanted: list[PackRef], gap: int = HEAD_READ) -> list[tuple[int, int]]:
    """Byte ranges of one pack covering ``wanted`` records, joined where they are at most
    ``gap`` apart: reading many records of a pack is one ranged read, a few is a few."""
    lo, hi = min(r.offset for r in wanted), max(r.end for r in wanted)
    if hi - lo - sum(r.length for r in wanted) <= gap:  # together (a chunk's records): one read
        return [(lo, hi)]
    out: list[list[int]] = []
    for ref in sorted(wanted, key=lambda r: r.offset):
        if out and ref.offset - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], ref.end)
        else:
            out.append([ref.offset, ref.end])
    return [(a, b) for a, b in out]


def by_segment(items: list[tuple[bytes, bytes]], alone: dict[str, list],
               path: Callable[[bytes], str]) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Small records by task segment (their pack's); large ones into ``alone`` at ``path(key)``.
    The common write, small records of one task, is found by C loops (no per-record Python)."""
    first = items[0][0][:-16]
    if max(map(len, map(_SECOND, items))) < SINGLE_BYTES and \
            all(map(first.__eq__, map(_PREFIX, map(_FIRST, items)))):
        return {first: items}
    out: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for key, record in items:
        if len(record) >= SINGLE_BYTES:
            alone[path(key)] = [record]
        else:
            out.setdefault(key[:-16], []).append((key, record))
    return out


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_PREFIX = operator.itemgetter(slice(None, -16))
