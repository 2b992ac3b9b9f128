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
    value = (base + start * STRIDE) & MASK
    for i in range(n):
        if value >> shift == wanted:
            yield i
        value = (value + STRIDE) & MASK
