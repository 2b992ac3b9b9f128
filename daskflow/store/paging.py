"""Pages of task-run listings: a page's rows, and the cursor of the next page.

A cursor names a place in the store's stable order of chunks (a time key and a run
within it), so pages stay consistent while runs arrive.
"""

from __future__ import annotations

from typing import NamedTuple


class RunPage(NamedTuple):
    """A page of task-run rows and the cursor of the next one (None: this was the last)."""

    rows: list[dict]
    next: str | None


def encode_cursor(time_key: bytes, upto: int) -> str:
    return f"{time_key.hex()}.{upto}"


def decode_cursor(cursor: str) -> tuple[bytes, int]:
    try:
        key, upto = cursor.split(".")
        return bytes.fromhex(key), int(upto)
    except ValueError:
        raise ValueError(f"{cursor!r} is not a page cursor (copy it from an earlier page)") from None
