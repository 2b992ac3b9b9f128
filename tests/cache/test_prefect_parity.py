"""Cache policies and transactions behave as Prefect 3's."""

import pytest

from daskflow import task, transaction
from daskflow.cache import DEFAULT, FLOW_PARAMETERS, INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE
from daskflow.cache.policies import CompoundPolicy


class Ctx:
    """A stand-in for the context a cache_key_fn receives: ``.task`` and ``.task_run``."""

    class task_run:
        id = "run-1"
        flow_run_id = None

    class task:
        @staticmethod
        def fn(x):
            return x


def test_compute_key_is_public_on_every_policy():
    k1 = INPUTS.compute_key(Ctx, {"x": 1, "y": 2}, {})
    assert isinstance(k1, str) and k1 == INPUTS.compute_key(Ctx, {"x": 1, "y": 2}, {})
    assert (INPUTS - "y").compute_key(Ctx, {"x": 1, "y": 2}, {}) == (INPUTS - "y").compute_key(Ctx, {"x": 1, "y": 3}, {})
    assert INPUTS.compute_key(Ctx, {}, {}) is None
    assert RUN_ID.compute_key(Ctx, {}, {}) == "run-1"
    assert isinstance(TASK_SOURCE.compute_key(Ctx, {}, {}), str)
    assert FLOW_PARAMETERS.compute_key(Ctx, {}, {}) is None and FLOW_PARAMETERS.compute_key(Ctx, {}, {"n": 1})
    assert NO_CACHE.compute_key(Ctx, {"x": 1}, {}) is None
    assert isinstance(DEFAULT.compute_key(Ctx, {"x": 1}, {}), str)
    assert DEFAULT.compute_key(Ctx, {"x": 1}, {}) != DEFAULT.compute_key(Ctx, {"x": 2}, {})


def test_policy_arithmetic_as_prefect():
    assert RUN_ID - "x" is RUN_ID
    with pytest.raises(TypeError):
        RUN_ID - 1
    compound = TASK_SOURCE + RUN_ID
    assert isinstance(compound - "x", CompoundPolicy) and compound - "x" is compound
    assert isinstance(DEFAULT - "x", CompoundPolicy)
    assert isinstance(INPUTS + INPUTS, CompoundPolicy)


def test_cache_key_fn_context_exposes_task_run():
    seen = []

    def key(context, parameters):
        seen.append((context.task_run.id, context.task_run.flow_run_id, parameters))
        return "k"

    @task(cache_key_fn=key)
    def t(x):
        return x

    t(3)
    (run_id, flow_run_id, params), = seen
    assert run_id and flow_run_id is None and params == {"x": 3}


def test_transaction_state_predicates():
    txn = transaction()
    assert txn.is_pending() and not txn.is_active()
    with txn:
        assert txn.is_active() and not txn.is_committed()
    assert txn.is_committed() and not txn.is_active()
    failing = transaction()
    with pytest.raises(RuntimeError):
        with failing:
            raise RuntimeError("x")
    assert failing.is_rolled_back()


def test_nested_transaction_commits_only_with_its_outermost():
    with transaction() as outer:
        with transaction() as inner:
            pass
        assert not inner.is_committed() and inner.is_active()
    assert inner.is_committed() and outer.is_committed()

    with pytest.raises(ValueError):
        with transaction() as outer2:
            with transaction() as inner2:
                pass
            raise ValueError("outer fails")
    assert inner2.is_rolled_back() and outer2.is_rolled_back()


def test_transaction_get_raises_without_default_and_copies_parent_values():
    with transaction() as outer:
        outer.set("items", [1])
        with transaction() as inner:
            got = inner.get("items")
            got.append(2)
            assert inner.get("items") == [1]
            with pytest.raises(KeyError):
                inner.get("missing")
            assert inner.get("missing", 0) == 0
    assert outer.get("items") == [1]


def test_each_task_run_gets_its_own_nested_transaction():
    got = []

    @task(on_commit=[lambda txn: got.append((txn is not block, txn.parent is block, txn.get("who")))])
    def t(x):
        return x

    with transaction() as block:
        block.set("who", "block")
        t(1)
        t(2)
    assert got == [(True, True, "block"), (True, True, "block")]
