import datetime

import pytest

from daskflow import task
from daskflow.cache import DEFAULT, FLOW_PARAMETERS, INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE, CompoundPolicy, Inputs
from daskflow.cache.policies import is_caching


def test_policy_composition_is_order_free():
    assert INPUTS + TASK_SOURCE == TASK_SOURCE + INPUTS
    assert DEFAULT == RUN_ID + TASK_SOURCE + INPUTS
    assert isinstance(DEFAULT, CompoundPolicy)
    assert repr(DEFAULT) == "INPUTS + TASK_SOURCE + RUN_ID"


def test_policy_exclusion_of_inputs():
    p = INPUTS - "client" - "lock"
    assert p == Inputs(frozenset({"client", "lock"}))
    assert (DEFAULT - "x").parts()[0] == Inputs(frozenset({"x"}))
    assert TASK_SOURCE - "x" is TASK_SOURCE  # as in Prefect: nothing to exclude, no change
    with pytest.raises(TypeError):
        INPUTS - 3


def test_policy_no_cache_absorbs():
    assert INPUTS + NO_CACHE is NO_CACHE
    assert not is_caching(NO_CACHE, None, None)


def test_policy_opt_in_rules_as_in_prefect():
    assert not task(lambda x: x).caches
    assert task(cache_policy=INPUTS)(lambda x: x).caches
    assert task(cache_key_fn=lambda c, p: "k")(lambda x: x).caches
    assert task(persist_result=True)(lambda x: x).caches
    assert not task(cache_policy=INPUTS, persist_result=False)(lambda x: x).caches
    assert task(cache_policy=FLOW_PARAMETERS)(lambda x: x).caches


def test_policy_bad_options_name_the_task():
    with pytest.raises(TypeError, match="task 'f'.*cache_policy"):
        task(name="f", cache_policy="inputs")(lambda: 1)
    with pytest.raises(TypeError, match="task 'f'.*cache_expiration"):
        task(name="f", cache_policy=INPUTS, cache_expiration=60)(lambda: 1)
    with pytest.raises(ValueError, match="task 'f'.*result_serializer"):
        task(name="f", result_serializer="yaml")(lambda: 1)
    task(name="f", cache_expiration=datetime.timedelta(seconds=1), result_serializer="json")(lambda: 1)
