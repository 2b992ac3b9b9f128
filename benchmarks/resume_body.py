"""The body of ``bench_resume.py``'s map, in a module workers import (so each counts its executions)."""

from __future__ import annotations

import os

EXECUTED = 0  # bodies executed in this process


def body(x: int, flag: str) -> int:
    """``x + 1``; runs ``x % 100 == 0`` fail while the file ``flag`` exists."""
    global EXECUTED
    EXECUTED += 1
    if x % 100 == 0 and os.path.exists(flag):
        raise ValueError(f"run {x} failed")
    return x + 1


def executed() -> int:
    return EXECUTED


def reset() -> None:
    global EXECUTED
    EXECUTED = 0
