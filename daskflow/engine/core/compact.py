"""A chunk envelope's per-run arrays in compact form, as the client keeps them.

A chunk of 10^5 runs that all ended alike needs one state code, not 10^5
(``UniformCodes``); its end times travel and wait packed, ~1 byte a run, with the first
and last beside them (``PackedEnds``), decoded only when a run's own time is read. Both
read as the ``bytearray`` and ``array("d")`` they stand for.
"""

from __future__ import annotations

import itertools
import math
from array import array
from typing import Any, Iterator

from daskflow.store.packing import pack_ends, unpack_times


class UniformCodes:
    """The state codes of a chunk whose runs all ended alike: one code for ``n`` runs.

    Reads as the ``bytearray`` it replaces does (index, length, iteration, ``count``).
    """

    __slots__ = ("code", "n")

    def __init__(self, code: int, n: int) -> None:
        self.code, self.n = code, n

    def __getitem__(self, i: int) -> int:
        if not -self.n <= i < self.n:
            raise IndexError("run index out of range")
        return self.code

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return itertools.repeat(self.code, self.n)

    def __bytes__(self) -> bytes:
        return bytes([self.code]) * self.n

    def count(self, code: int) -> int:
        return self.n if code == self.code else 0


class PackedEnds:
    """A chunk's end times as they came packed (``pack_ends``), decoded when a run's time is read.

    The client holds the envelopes of chunks that ended and that nobody read yet (a reader
    slower than the cluster holds many): packed, ~1 byte a run instead of 8. The first and
    last ends (what a chunk's record and its size model read) travel beside the packed
    bytes, so nothing is decoded on arrival: decoding 10^5 ends costs ~5 ms, and a chunk
    arrives on the client twice (its end event's summary, then its values), which made
    decoding a fifth of the client's CPU per element of a streamed map.
    Reads as the ``array("d")`` it stands for does (index, slice, length, ``tobytes``).
    """

    __slots__ = ("packed", "n", "first", "last", "_raw")

    def __init__(self, packed: bytes, n: int, first: float | None = None, last: float | None = None) -> None:
        self.packed, self.n, self._raw = packed, n, None
        if first is None or last is None:  # not told (an older sender): decoded once to know them
            raw = self.array()
            first, last = raw[0], raw[-1]
        self.first, self.last = first, last

    @classmethod
    def packing(cls, ends: array) -> PackedEnds | array:
        """``ends`` packed for the wire, their first and last as decoding will read them (the
        last rounded up to whole microseconds after the first, as ``pack_times`` does); the
        raw array when ``pack_ends`` keeps them raw."""
        if type(ends) is PackedEnds:
            ends = ends.array()
        packed = pack_ends(ends)
        if packed is None:
            return ends
        first = ends[0]
        return cls(packed, len(ends), first, first + math.ceil((ends[-1] - first) * 1e6) / 1e6)

    def __reduce__(self) -> tuple:
        if not self.packed:  # changed since it came: as it is now
            return PackedEnds.packing(self.array()).__reduce_ex__(5)
        return PackedEnds, (self.packed, self.n, self.first, self.last)

    @staticmethod
    def _decode(packed: bytes) -> array:
        raw = array("d")
        raw.frombytes(unpack_times(packed))
        return raw

    def array(self) -> array:
        """The decoded times (kept once read)."""
        if self._raw is None:
            self._raw = self._decode(self.packed)
        return self._raw

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if type(i) is int:
            if i == 0 or i == -self.n:
                return self.first
            if i == -1 or i == self.n - 1:
                return self.last
        elif i == slice(-1, None):
            return array("d", [self.last])
        return self.array()[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        raw = self.array()
        raw[i] = value
        self.packed = b""  # stale: packed again if sent on (``packed_ends``)
        self.first, self.last = raw[0], raw[-1]

    def __iter__(self) -> Iterator[float]:
        return iter(self.array())

    def tobytes(self) -> bytes:
        return self.array().tobytes()


def packed_ends(ends: Any) -> bytes | None:
    """``pack_ends`` of a chunk's end times, the packed form they came in if they did."""
    if type(ends) is PackedEnds:
        return ends.packed or pack_ends(ends.array())
    return pack_ends(ends)
