"""Final state codes: one byte per run in chunk envelopes and in run-store records.

The engine, the run store, the background server and the CLI all speak this one
table; the engine turns a code into a ``State`` (``engine.core.states``), the store and the
CLI into names, without importing the engine.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class CodeState(NamedTuple):
    """What a final state code means: its state type's name and its state name."""

    type: str
    name: str


COMPLETED, CACHED, FAILED, NOT_READY, TIMED_OUT, CRASHED, CANCELLED = range(7)

CODE_STATES: dict[int, CodeState] = {
    COMPLETED: CodeState("COMPLETED", "Completed"),
    CACHED: CodeState("COMPLETED", "Cached"),
    FAILED: CodeState("FAILED", "Failed"),
    NOT_READY: CodeState("FAILED", "NotReady"),
    TIMED_OUT: CodeState("FAILED", "TimedOut"),
    CRASHED: CodeState("CRASHED", "Crashed"),
    CANCELLED: CodeState("CANCELLED", "Cancelled"),
}
CODE_OF_NAME: dict[str, int] = {cs.name: code for code, cs in CODE_STATES.items()}

#: Codes of runs that produced a value.
OK_CODES = (COMPLETED, CACHED)
#: Codes of runs whose body never started (so they never entered Running).
NEVER_RAN = (CACHED, NOT_READY, CANCELLED)


def all_ok(codes: Any) -> bool:
    """Whether every run of a chunk produced a value: C-speed counts, not a Python step per run
    (``codes``: a ``bytearray`` or anything with its ``count`` and ``len``)."""
    return codes.count(COMPLETED) + codes.count(CACHED) == len(codes)


def run_count_of(code: int, recorded: int | None = None) -> int:
    """How many times a finished run's body was attempted: the one rule for futures and stores.

    As in Prefect, a run whose body never started (Cached, NotReady, Cancelled) counts 0,
    and a state history holds a Running state exactly when this is at least 1. A Crashed
    run counts what was recorded for it (its chunk was seen to start: 1), else 0; any
    other run counts its recorded attempts, 1 when nothing was recorded (no retries).
    """
    if code in NEVER_RAN:
        return 0
    if recorded is not None:
        return recorded
    return 0 if code == CRASHED else 1


class StateEvent(NamedTuple):
    """One entry of a run's state history: a state type's name, a state name, when, why."""

    type: str
    name: str
    timestamp: float
    message: str = ""


#: Names of the states a run passes through before a final one, with their types.
LIVE_STATES: dict[str, str] = {"Scheduled": "SCHEDULED", "Pending": "PENDING", "Running": "RUNNING",
                               "AwaitingRetry": "SCHEDULED", "Retrying": "RUNNING"}
#: Every state name a run record can show, in lifecycle order (what ``runs ls --state`` accepts).
STATE_NAMES: tuple[str, ...] = (*LIVE_STATES, *(cs.name for cs in CODE_STATES.values()))
#: Every state type name.
STATE_TYPES: tuple[str, ...] = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING")
