"""Public face of run states: ``State``, ``StateType`` and their constructors."""

from daskflow.engine.core.states import (
    Cached,
    Cancelled,
    Cancelling,
    Completed,
    Crashed,
    Failed,
    NotReady,
    Pending,
    Retrying,
    Running,
    Scheduled,
    State,
    StateType,
    TimedOut,
)

__all__ = [
    "Cached", "Cancelled", "Cancelling", "Completed", "Crashed", "Failed", "NotReady", "Pending",
    "Retrying", "Running", "Scheduled", "State", "StateType", "TimedOut",
]
