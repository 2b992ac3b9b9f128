"""Run ids: the arithmetic the engine and the run store share.

Element ``i`` of a submission gets the id ``base + i * STRIDE (mod 2**128)``, printed
as a UUID: unique, cheap (no ``uuid4`` per element), and spread over the high bits so
that id prefixes stay distinguishable. Because ``STRIDE`` is odd, the index of an id is
computable from its base (``index_of``), so the run store keeps no per-run id records.
"""

from __future__ import annotations

import random
import uuid
from typing import Iterator

STRIDE = 0x9E3779B97F4A7C15F39CC0605CEDC835
MASK = (1 << 128) - 1
_INVERSE = pow(STRIDE, -1, 1 << 128)


def new_run_base() -> int:
    """A random 128-bit base from which the run ids of one submission are derived."""
    # random (re-seeded in forked children) is 20x cheaper than uuid4 and as unique here
    return random.getrandbits(128)


def run_id(base: int, index: int = 0) -> str:
    """The id of run ``index`` of the submission with id base ``base``."""
    return str(uuid.UUID(int=(base + index * STRIDE) & MASK))


def background_run_name(task_name: str, rid: str) -> str:
    """A ``.delay()`` run's name, ``{task}-{first 8 hex of its id}``: distinct, as Prefect's ``task-<short id>``."""
    return f"{task_name}-{rid[:8]}"


def index_of(base: int, rid: str | int) -> int:
    """The index ``i`` with ``run_id(base, i) == rid`` (any base gives one; check its range)."""
    value = uuid.UUID(rid).int if isinstance(rid, str) else rid
    return ((value - base) * _INVERSE) & MASK


def parse_id_prefix(prefix: str) -> tuple[int, int]:
    """``(value, shift)``: a run id has the prefix when its 128-bit value >> shift == value.

    Raises ``LookupError`` for text that is not hex digits (dashes allowed), at most 32.
    """
    digits = prefix.replace("-", "").lower()
    try:
        wanted = int(digits, 16) if digits else None
    except ValueError:
        wanted = None
    if wanted is None or len(digits) > 32:
        raise LookupError(f"{prefix!r} is not a task run id (hex digits, optionally with dashes)")
    return wanted, 128 - 4 * len(digits)


def prefix_matches(base: int, start: int, n: int, wanted: int, shift: int) -> Iterator[int]:
    """Indexes ``i < n`` of a chunk whose run id (``run_id(base, start + i)``) has the prefix."""
    if shift == 0:
        i = index_of(base, wanted) - start
        if 0 <= i < n:
            yield i
        return
    # Run ids of a chunk step by STRIDE (mod 2**128): the next one inside the prefix's window
    # is found in O(log) steps (``first_multiple_in``), not by testing each of the chunk's runs.
    low, width = wanted << shift, 1 << shift
    value = (base + start * STRIDE) & MASK
    i = 0
    while i < n:
        offset = (low - value) & MASK  # x * STRIDE (mod 2**128) must land in [offset, offset + width)
        x = 0 if offset == 0 or offset + width > MASK + 1 else first_multiple_in(STRIDE, MASK + 1, offset,
                                                                                 offset + width - 1, n - i)
        if x is None or i + x >= n:
            return
        yield i + x
        i += x + 1
        value = (value + (x + 1) * STRIDE) & MASK


def first_multiple_in(a: int, m: int, lo: int, hi: int, below: int | None = None) -> int | None:
    """The least ``x >= 0`` with ``lo <= a * x % m <= hi`` (``0 <= lo <= hi < m``), or None;
    None too when that ``x`` is not ``< below``.

    Euclid-like: if no multiple of ``a`` lands in ``[lo, hi]`` before wrapping, the number
    of wraps ``y`` is itself the least solution of a smaller instance (modulo ``a``), and
    the least ``x`` follows from it: O(log m) steps, fewer with ``below`` (the bound
    shrinks with the instance, and the search stops once it allows nothing).
    """
    if below is not None and below <= 0:
        return None
    if lo == 0:
        return 0
    a %= m
    if a == 0:
        return None
    x = -(-lo // a)
    if a * x <= hi:
        return x if below is None or x < below else None
    y_below = None if below is None else ((below - 1) * a - lo) // m + 1
    y = first_multiple_in(m % a, a, (-hi) % a, (-lo) % a, y_below)
    return None if y is None else -(-(lo + m * y) // a)
