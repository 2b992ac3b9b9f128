"""One run's time from a chunk's packed times, without decoding the others (``runs ls --state Failed``)."""

from __future__ import annotations

import random
import sys
import time
from array import array

import pytest

from daskflow.codes import COMPLETED
from daskflow.store.packing import pack_times, time_at, unpack_times
from daskflow.store.rows import end_at, ends_of, expand


def _packed(values: list[float]) -> tuple[bytes, array]:
    packed = pack_times(array("d", values).tobytes())
    back = array("d")
    back.frombytes(unpack_times(packed))
    return packed, back


@pytest.mark.parametrize("shape", ["monotone", "not monotone", "one", "two", "equal"])
def test_time_at_equals_the_full_decode_at_every_index(shape):
    t, rng = time.time(), random.Random(7)
    values = {"monotone": [t + i * 3.7e-6 + rng.random() * 1e-6 for i in range(5000)],
              "not monotone": [t + rng.uniform(-2, 2) for _ in range(3000)],
              "one": [t], "two": [t, t - 1.5], "equal": [t] * 100}[shape]
    packed, full = _packed(values)
    some = sorted({*range(0, len(values), 97), *range(max(0, len(values) - 5), len(values))})
    assert [time_at(packed, i) for i in some] == [full[i] for i in some]
    assert time_at(packed, len(values)) is None and time_at(packed, -1) is None and time_at(b"", 0) is None


def test_a_row_reads_the_same_end_and_start_either_way(monkeypatch):
    t = time.time()
    ends = [t + 0.001 * i for i in range(1, 10_001)]
    packed, _ = _packed(ends)  # (packing imports numpy)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)  # as in the CLI: reading does not import it
    rec = {"base": (1 << 64).to_bytes(16, "big"), "start": 0, "n": 10_000, "codes": bytes([COMPLETED]) * 10_000, "zends": packed,
           "first": t, "task": "inc"}
    decoded = dict(rec)
    ends_of(decoded)  # every end decoded up front, as before
    for i in (0, 1, 5000, 9999):
        single = dict(rec)
        assert expand(single, i) == expand(decoded, i) and "_ends" not in single  # read from a prefix
    once = dict(rec)
    for i in range(12):  # past a few single reads, the record is decoded once and for all
        assert end_at(once, i) == ends_of(decoded)[i]
    assert "_ends" in once
