"""Final state codes: one byte per run in chunk envelopes and in run-store records.

The engine, the run store, the background server and the CLI all speak this one
table; the engine turns a code into a ``State`` (``engine.states``), the store and the
CLI into names, without importing the engine.
"""

from __future__ import annotations

from typing import NamedTuple


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

#: Names of the states a run passes through before a final one, with their types.
LIVE_STATES: dict[str, str] = {"Scheduled": "SCHEDULED", "Pending": "PENDING", "Running": "RUNNING",
                               "AwaitingRetry": "SCHEDULED", "Retrying": "RUNNING"}
#: Every state name a run record can show, in lifecycle order (what ``runs ls --state`` accepts).
STATE_NAMES: tuple[str, ...] = (*LIVE_STATES, *(cs.name for cs in CODE_STATES.values()))
#: Every state type name.
STATE_TYPES: tuple[str, ...] = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED")
