"""How a chunk record sits on disk: state codes and times packed so that a plain run costs ~1 byte.

In memory, the record a writer hands over and a reader expands holds ``codes`` (one
byte per run) and per-run times as packed 8-byte floats (``ends``; direct-call records
also ``starts`` and ``submits``): 9 bytes and more per run. A store of 10^8 runs would
be a gigabyte of mostly repeated bytes. On disk the same record holds instead:

- ``ucode``: one int when every run of the chunk ended with the same code (a chunk that
  simply completed), else ``zcodes``: the codes, zlib-compressed (a rare failure costs
  a few bytes, not a byte per run);
- ``zends`` (``zstarts``, ``zsubmits``): the first time exact, the others in whole
  microseconds after it, rounded *up* (so an end never reads as earlier than the start
  it followed), as differences from the previous run, zigzag-encoded, their 8 bytes shuffled into
  planes (every low byte, then every second byte, ...) and zlib-compressed. Runs of a
  chunk end microseconds to seconds apart: the high planes are all zero and vanish, the
  low ones compress well.

Only what is per run and unusual stays per run (messages, tracebacks, retries). Codes
are decoded when a record is read (``unpack_chunk``, cheap); times only when a reader
asks for them (``times``), since a listing by state never needs them, and without numpy
(the writer encodes with it; a reader need not import it). Records written
before this layout (raw ``codes``/``ends``) read as they are.
"""

from __future__ import annotations

import itertools
import struct
import sys
import zlib
from array import array
from typing import Any, NamedTuple

import msgpack

__all__ = ["PACK_ENDS_FROM", "TIME_FIELDS", "pack", "pack_chunk", "pack_ends", "pack_times", "times", "unpack", "unpack_chunk",
           "unpack_times"]

TIME_FIELDS = ("ends", "starts", "submits")
_LEVEL = 1  # zlib level: the planes compress as well at 1 as at 9, several times faster


def pack(obj: Any) -> bytes:
    """Any other record of the store (flow runs, owners, logs) as msgpack."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def pack_chunk(rec: dict) -> bytes:
    """The on-disk bytes of a chunk record (``codes`` and the time arrays packed)."""
    out = {k: v for k, v in rec.items() if not k.startswith("_")}  # readers cache decoded arrays as _name
    codes = out.pop("codes", None)
    if codes is not None:
        out.pop("ucode", None)
        out.pop("zcodes", None)
        if codes and codes.count(codes[0]) == len(codes):
            out["ucode"] = codes[0]
        else:
            out["zcodes"] = zlib.compress(bytes(codes), _LEVEL)
    for name in TIME_FIELDS:
        raw = out.pop(name, None)
        if raw is not None:
            out["z" + name] = pack_times(raw)
    return msgpack.packb(out, use_bin_type=True)


def known_times(old: dict, fields: dict) -> dict:
    """``fields`` without the per-run times ``old`` holds packed already: the envelope of a
    chunk carries the times its end event recorded (same runs, same codes, same first end),
    and packing them again cost the writer ~0.05 us a run. A chunk run again (other times)
    keeps its new times."""
    if old.get("codes") is None or fields.get("codes") != old.get("codes"):
        return fields
    drop = [name for name in TIME_FIELDS if (raw := fields.get(name)) is not None
            and (packed := old.get("z" + name)) is not None and raw[:8] == packed[:8]]
    return {k: v for k, v in fields.items() if k not in drop} if drop else fields


def unpack_chunk(data: bytes) -> dict:
    """A chunk record as readers use it: ``codes`` as bytes; times stay packed until asked for."""
    rec = msgpack.unpackb(data, raw=False, strict_map_key=False)
    code = rec.pop("ucode", None)
    if code is not None:
        rec["codes"] = bytes((code,)) * rec["n"]
    else:
        packed = rec.pop("zcodes", None)
        if packed is not None:
            rec["codes"] = zlib.decompress(packed)
    return rec


def pack_times(raw: bytes) -> bytes:
    """Packed native doubles (seconds) as the first one exact (8 bytes), then the rest as
    zlib-compressed, byte-shuffled microsecond deltas."""
    import numpy as np  # deferred: read-only commands that never touch times do not import it

    values = np.frombuffer(raw, dtype=np.float64)
    if not len(values):
        return b""
    us = np.ceil((values - values[0]) * 1e6).astype(np.int64)
    deltas = np.diff(us, prepend=np.int64(0))
    zigzag = ((deltas << 1) ^ (deltas >> 63)).astype("<u8")
    return values[:1].astype("<f8").tobytes() + zlib.compress(zigzag.view(np.uint8).reshape(-1, 8).T.tobytes(),
                                                              _LEVEL)


PACK_ENDS_FROM = 64  # runs from which a chunk's end times travel packed (below: numpy's call costs more)


def pack_ends(ends: Any) -> bytes | None:
    """A chunk's end times (native doubles) as ``pack_times`` packs them, for the wire: ~1 byte a
    run instead of 8. None when they would not come back as they are: too few to gain, or a
    run without an end yet (a zero, which must read back as zero) or ending before run 0."""
    if len(ends) < PACK_ENDS_FROM:
        return None
    import numpy as np

    values = np.frombuffer(ends, dtype=np.float64)
    if not values[0] > 0 or values.min() < values[0]:
        return None
    return pack_times(ends)


def unpack_times(packed: bytes) -> bytes:
    """The inverse of ``pack_times``: packed native doubles, in seconds.

    Pure Python on purpose (slice assignment to interleave the planes, ``accumulate`` to
    sum the deltas; ~2 ms for 10^4 runs): readers (the CLI, the UI within its page
    budget) then never pay numpy's import.
    """
    if not packed:
        return b""
    if "numpy" in sys.modules:  # loaded already (a client, a worker): ~10x faster on big chunks
        return _unpack_times_numpy(packed)
    first = struct.unpack("<d", packed[:8])[0]
    planes = zlib.decompress(packed[8:])
    n = len(planes) // 8
    interleaved = bytearray(8 * n)
    for k in range(8):
        interleaved[k::8] = planes[k * n:(k + 1) * n]
    zigzag = array("Q")
    zigzag.frombytes(bytes(interleaved))
    if sys.byteorder == "big":
        zigzag.byteswap()
    us = itertools.accumulate((z >> 1) ^ -(z & 1) for z in zigzag)
    out = array("d", (first + u / 1e6 for u in us))
    out[0] = first
    return out.tobytes()


_LOW_BIT = bytes(b & 1 for b in range(256))  # a byte -> its lowest bit, for bytes.translate


def time_at(packed: bytes, i: int) -> float | None:
    """Value ``i`` of ``pack_times`` output (None past the end), summing only the deltas up
    to ``i``: a listing that shows one run of each of 50 chunks of 10^4 runs then sums 50
    prefixes instead of decoding 500,000 times in Python. Equal to ``unpack_times`` at ``i``.
    """
    planes = time_planes(packed)
    return None if planes is None else time_in(planes, i)


class TimePlanes(NamedTuple):
    """Packed times with their deltas decompressed (still byte-shuffled): ``time_in`` reads them."""

    first: float
    planes: bytes


def time_planes(packed: bytes) -> TimePlanes | None:
    """``pack_times`` output decompressed once, for several ``time_in`` reads (None: no times)."""
    if not packed:
        return None
    return TimePlanes(struct.unpack("<d", packed[:8])[0], zlib.decompress(packed[8:]))


def time_in(times: TimePlanes, i: int) -> float | None:
    """Value ``i`` of decompressed packed times (``time_at``), None past the end."""
    first, planes = times
    n = len(planes) // 8
    if not 0 <= i < n:
        return None
    if i == 0:
        return first
    interleaved = bytearray(8 * (i + 1))
    for k in range(8):
        interleaved[k::8] = planes[k * n:k * n + i + 1]
    zigzag = array("Q")
    zigzag.frombytes(bytes(interleaved))
    if sys.byteorder == "big":
        zigzag.byteswap()
    if not planes[:i + 1].translate(_LOW_BIT).count(1):  # plane 0 holds the low bytes: no odd
        us = sum(zigzag) >> 1  # zigzag value, so no negative delta (ends in order): halves, summed in C
    else:
        us = sum((z >> 1) ^ -(z & 1) for z in zigzag)
    return first + us / 1e6


def _unpack_times_numpy(packed: bytes) -> bytes:
    import numpy as np

    first = np.frombuffer(packed[:8], dtype="<f8")[0]
    planes = np.frombuffer(zlib.decompress(packed[8:]), dtype=np.uint8).reshape(8, -1)
    zigzag = np.ascontiguousarray(planes.T).view("<u8").ravel()
    deltas = (zigzag >> np.uint64(1)).astype(np.int64) ^ -(zigzag & np.uint64(1)).astype(np.int64)
    out = first + np.cumsum(deltas) / 1e6
    out[0] = first
    return out.astype(np.float64).tobytes()


def times(rec: dict, name: str, keep: bool = True) -> Any:
    """A record's per-run time array ``name`` as packed doubles (bytes), or None when it has none.

    Decoded from its packed form if need be, and kept in ``rec`` unless ``keep`` is false (a
    record written back keeps the packed form it came with: decoded times left in it would be
    packed again)."""
    raw = rec.get(name)
    if raw is None:
        packed = rec.get("z" + name)
        if packed is not None:
            raw = unpack_times(packed)
            if keep:
                rec[name] = raw
    return raw
