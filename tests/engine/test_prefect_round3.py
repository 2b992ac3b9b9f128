"""Prefect parity, round 3 (issue 26): behaviour Prefect 3 documents and tests, bug by bug.

Each test names the Prefect behaviour it pins; each failed on the code before the fix.
"""

import asyncio

import pytest

from daskflow import flow, task, transaction
from daskflow.cache import INPUTS, TASK_SOURCE
from daskflow.cache.policies import CompoundPolicy
from daskflow.runners import ThreadPoolTaskRunner
from daskflow.states import Completed, State, StateType

# -- cached methods: self is a parameter ------------------------------------------------------


def test_cache_key_fn_receives_self_and_instances_do_not_share():
    """Prefect's test_cache_key_fn_receives_self_if_method: the key function sees ``self``."""
    seen = []

    def stringed_inputs(context, parameters):
        seen.append(dict(parameters))
        return str(parameters)

    class Adder:
        def __init__(self, x):
            self.x = x

        @task(cache_key_fn=stringed_inputs)
        def add(self, a):
            return a + self.x

    one, hundred = Adder(1), Adder(100)
    states = [one.add(5, return_state=True), one.add(5, return_state=True),
              hundred.add(5, return_state=True), hundred.add(5, return_state=True)]
    assert [s.name for s in states] == ["Completed", "Cached", "Completed", "Cached"]
    assert [s.result() for s in states] == [6, 6, 105, 105]
    assert seen == [{"self": one, "a": 5}, {"self": one, "a": 5}, {"self": hundred, "a": 5},
                    {"self": hundred, "a": 5}]


def test_instance_methods_share_a_cache_only_when_the_key_fn_drops_self():
    def without_self(context, parameters):
        rest = dict(parameters)
        rest.pop("self")
        return str(rest)

    class Adder:
        def __init__(self, x):
            self.x = x

        @task(cache_key_fn=without_self)
        def add(self, a):
            return a + self.x

    assert [Adder(1).add(5), Adder(100).add(5)] == [6, 6]  # the user said so


class Scaled:
    def __init__(self, k):
        self.k = k

    @task(cache_policy=INPUTS)
    def scale(self, x):
        return self.k * x

    @task(cache_policy=INPUTS - "self")
    def scale_shared(self, x):
        return self.k * x


def test_default_inputs_key_includes_the_instance(runner):
    """Two instances with different state never share an entry; equal ones do (their fingerprint)."""
    two, three = Scaled(2), Scaled(3)
    assert two.scale(5) == 10
    assert three.scale(5) == 15  # was 10: the first instance's cached value
    assert Scaled(2).scale(5, return_state=True).name == "Cached"  # same class, same attributes

    @flow(task_runner=runner)
    def f():
        return Scaled(4).scale.submit(5).result(), Scaled(4).scale.map([1, 2]).result()

    assert f() == (20, [4, 8])
    assert Scaled(7).scale_shared(5) == 35
    assert Scaled(8).scale_shared(5) == 35  # INPUTS - "self": shared on purpose


def test_an_instance_that_cannot_be_hashed_runs_uncached_with_a_warning_naming_self():
    import threading

    from daskflow.cache.store import CacheWarning

    class Holder:
        def __init__(self):
            self.lock = threading.Lock()
            self.calls = 0

        @task(cache_policy=INPUTS)
        def work(self, x):
            self.calls += 1
            return x

    h = Holder()
    with pytest.warns(CacheWarning, match="'self'"):
        h.work(1)
    with pytest.warns(CacheWarning):
        h.work(1)
    assert h.calls == 2


def test_plain_function_keys_do_not_change():
    """The golden key of a plain function's inputs (tests/cache/test_keys.py) is untouched."""
    from daskflow.cache.keys import display, make_plan

    @task(cache_policy=INPUTS)
    def double(x):
        return 2 * x

    plan = make_plan(double, None, None)
    assert plan.head == b"v1\x00inputs"
    assert display(plan.key(double, (21,), lambda: "")).endswith("e1c71eabbbeed8a8e46306070e43e568")


# -- states ------------------------------------------------------------------------------------


def test_returned_state_keeps_message_and_data(runner):
    @task
    def passed():
        return Completed(data=80, message="passed with 80")

    @task
    def failed_with_data():
        return State(StateType.FAILED, data=True)

    s = passed(return_state=True)
    assert (s.message, s.result()) == ("passed with 80", 80)
    f = failed_with_data(return_state=True)
    assert f.is_failed() and f.result(raise_on_failure=False) is True

    @flow(task_runner=runner)
    def on_runner():
        a = passed.submit(return_state=True)
        b = failed_with_data.submit(return_state=True)
        return a.message, b.result(raise_on_failure=False)

    assert on_runner() == ("passed with 80", True)


def test_state_result_is_awaitable_in_async_code():
    @task
    async def answer():
        return 42

    @flow
    async def f():
        state = await answer(return_state=True)
        return await state.result()

    assert asyncio.run(f()) == 42

    async def outside():
        return await Completed(7).result()

    assert asyncio.run(outside()) == 7
    assert Completed(7).result() == 7  # sync code: the value


def test_cancelling_is_a_state_type_and_fires_on_cancellation():
    from daskflow.states import Cancelling

    s = Cancelling()
    assert s.type is StateType.CANCELLING and s.is_cancelling() and not s.is_final()
    seen = []

    @flow(on_cancellation=[lambda fl, run, state: seen.append(state.type)])
    def f():
        return Cancelling()

    assert f(return_state=True).type is StateType.CANCELLING
    assert seen == [StateType.CANCELLING]


# -- tasks and flows -------------------------------------------------------------------------


def test_task_tags_is_the_tasks_own_set():
    @task(tags={"a"})
    def t():
        return 1

    t.tags.add("b")
    assert t.tags == {"a", "b"}
    assert t.with_options(retries=1).tags == {"a", "b"}


def test_run_names_set_after_decoration_take_effect():
    from daskflow import runtime

    @task
    def t():
        return runtime.task_run.name

    t.task_run_name = "renamed"
    assert t() == "renamed"

    @flow
    def f():
        return runtime.flow_run.name

    f.flow_run_name = "flow-renamed"
    assert f() == "flow-renamed"


def test_flow_default_names_follow_prefect():
    def my_fn():
        return 1

    assert flow(my_fn).name == "my-fn"
    assert flow(lambda: 1).name == "unknown-lambda"


def test_flow_with_options_timeout_zero_removes_the_timeout():
    @flow(timeout_seconds=5)
    def f():
        return 1

    g = f.with_options(timeout_seconds=0)
    assert g.timeout_seconds is None and g() == 1


def test_wait_for_containing_itself_raises_the_deadlock_error():
    """Prefect's test_raises_if_depends_on_itself."""

    @task
    def say_hello(name):
        return f"Hello {name}!"

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def my_flow():
        queue = []
        for i in range(3):
            wait_for = queue if queue else []
            queue.append(say_hello.submit(name=f"Person {i}", wait_for=wait_for))
        return [fut.result() for fut in queue]

    with pytest.raises(ValueError, match="deadlock"):
        my_flow()


# -- transactions and policies -----------------------------------------------------------------


def test_transaction_get_without_default_raises_value_error():
    with transaction() as txn:
        with pytest.raises(ValueError, match="Could not retrieve value for unknown key: missing"):
            txn.get("missing")
        with pytest.raises(KeyError):  # daskflow's users caught KeyError: still caught
            txn.get("missing")


def test_compound_policy_as_prefect():
    c = INPUTS + CompoundPolicy(policies=[TASK_SOURCE])
    assert isinstance(c, CompoundPolicy)
    assert isinstance(INPUTS + CompoundPolicy(), CompoundPolicy)
    assert TASK_SOURCE in c.policies and any(p == INPUTS for p in c.policies)
    assert (INPUTS - "x").exclude == ["x"]
    assert isinstance((INPUTS - "x" - "y").exclude, list)


def test_task_source_computes_a_key_for_any_function():
    def plain(x):
        return x

    class Ctx:
        task = plain

    key = TASK_SOURCE.compute_key(Ctx, {}, {})
    assert isinstance(key, str) and key

    def other(x):
        return x + 1

    class Ctx2:
        task = other

    assert TASK_SOURCE.compute_key(Ctx2, {}, {}) != key


# -- Prefect's wording for the messages users search for ------------------------------------


def _noop():
    return None


@pytest.mark.parametrize("make, error, words", [
    (lambda: task(on_completion=_noop)(_noop), TypeError,
     "Expected iterable for 'on_completion'; got function instead. Please provide a list of hooks to 'on_completion'"),
    (lambda: task(on_failure=[1])(_noop), TypeError, "Expected callables in 'on_failure'; got int instead."),
    (lambda: flow(on_crashed=_noop)(_noop), TypeError, "Expected iterable for 'on_crashed'; got function instead."),
    (lambda: task(_return_state_fn), TypeError, "'return_state' is a reserved argument name and cannot be used."),
    (lambda: flow(_wait_for_fn), TypeError, "'wait_for' is a reserved argument name and cannot be used."),
    (lambda: task(task_run_name=3)(_noop), TypeError, "Expected string or callable for 'task_run_name'; got int instead."),
    (lambda: flow(flow_run_name=3)(_noop), TypeError, "Expected string or callable for 'flow_run_name'; got int instead."),
    (lambda: task(retries=60, retry_delay_seconds=[1] * 60)(_noop), ValueError,
     "Can not configure more than 50 retry delays per task."),
    (lambda: task(retry_jitter_factor=-1)(_noop), ValueError, "`retry_jitter_factor` must be >= 0."),
    (lambda: task(retry_condition_fn=3)(_noop), TypeError, "Expected `retry_condition_fn` to be callable, got int instead."),
    (lambda: task(retries=1, retry_delay_seconds="x")(_noop), TypeError,
     "Invalid `retry_delay_seconds` provided; must be an int, float, list or callable."),
], ids=["hooks-iterable", "hooks-callables", "flow-hooks", "reserved-task", "reserved-flow", "task-run-name",
        "flow-run-name", "retry-delays", "jitter", "retry-condition", "retry-delay-type"])
def test_definition_errors_use_prefects_words(make, error, words):
    with pytest.raises(error) as info:
        make()
    assert words in str(info.value)


def _return_state_fn(return_state):
    return return_state


def _wait_for_fn(wait_for):
    return wait_for


def test_run_name_callables_use_prefects_words_and_may_take_parameters():
    @task(task_run_name=lambda: 3)
    def bad():
        return 1

    with pytest.raises(TypeError, match="for 'task_run_name' returned type int but a string is required."):
        bad()

    @task(task_run_name=lambda parameters: f"sum-{parameters['x']}", on_completion=[lambda t, run, s: names.append(run.name)])
    def good(x):
        return x

    names = []
    good(4)
    assert names == ["sum-4"]


def test_timeouts_use_prefects_words():
    import threading

    from daskflow.exceptions import FlowRunTimeoutError, TaskRunTimeoutError

    release = threading.Event()

    @task(timeout_seconds=0.2)
    def slow_task():
        release.wait(10)

    @flow(timeout_seconds=0.2)
    def slow_flow():
        release.wait(10)

    try:
        with pytest.raises(TaskRunTimeoutError, match=r"Task run exceeded timeout of 0.2 second\(s\)"):
            slow_task()
        with pytest.raises(FlowRunTimeoutError, match=r"Flow run exceeded timeout of 0.2 second\(s\)"):
            slow_flow()
    finally:
        release.set()


def test_wait_and_as_completed_timeouts_use_prefects_words():
    from daskflow import as_completed, wait

    with pytest.raises(ValueError, match="'timeout' must be a non-negative number, got -1"):
        wait([], timeout=-1)
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number, got -1"):
        list(as_completed([], timeout=-1))
