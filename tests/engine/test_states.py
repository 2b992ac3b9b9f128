import pytest

from daskflow.exceptions import UnfinishedRun
from daskflow.states import (
    Cached,
    Cancelled,
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

PREDICATES = ["is_scheduled", "is_pending", "is_running", "is_completed", "is_failed", "is_crashed",
              "is_cancelled"]


@pytest.mark.parametrize(
    "state, true_predicate, final",
    [
        (Scheduled(), "is_scheduled", False),
        (Pending(), "is_pending", False),
        (Running(), "is_running", False),
        (Retrying(), "is_running", False),
        (Completed(1), "is_completed", True),
        (Cached(1), "is_completed", True),
        (Failed(ValueError("x")), "is_failed", True),
        (TimedOut(), "is_failed", True),
        (NotReady("upstream failed"), "is_failed", True),
        (Crashed(), "is_crashed", True),
        (Cancelled(), "is_cancelled", True),
    ],
)
def test_state_predicates(state, true_predicate, final):
    for predicate in PREDICATES:
        assert getattr(state, predicate)() is (predicate == true_predicate), predicate
    assert state.is_final() is final


def test_state_names_and_types():
    assert Cached(3).name == "Cached" and Cached(3).type is StateType.COMPLETED
    assert Retrying().name == "Retrying" and Retrying().type is StateType.RUNNING
    assert TimedOut().name == "TimedOut" and NotReady().name == "NotReady"
    assert {t.value for t in StateType} == {"SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED",
                                            "CANCELLED", "CANCELLING"}


def test_state_result_returns_value_or_raises():
    assert Completed(42).result() == 42
    err = ValueError("bad")
    with pytest.raises(ValueError, match="bad"):
        Failed(err).result()
    assert Failed(err).result(raise_on_failure=False) is err
    assert "ValueError: bad" in Failed(err).message
    with pytest.raises(UnfinishedRun, match="NotReady"):
        NotReady("upstream x failed").result()
    with pytest.raises(UnfinishedRun):
        Pending().result()


def test_state_has_timestamp_and_repr():
    s = Completed(1)
    assert s.timestamp > 0 and "Completed" in repr(s)
    assert isinstance(s, State)
