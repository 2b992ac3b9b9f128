"""Property-based tests (issue 13) for what takes arbitrary user values: cache keys and map arguments."""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
import threading
import warnings

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from daskflow import flow, task, unmapped
from daskflow.cache import INPUTS
from daskflow.cache.keys import Unhashable, fingerprint
from daskflow.cache.store import CacheWarning
from daskflow.exceptions import MappingLengthMismatch, MappingMissingIterable
from daskflow.runners import ThreadPoolTaskRunner

ROOT = pathlib.Path(__file__).resolve().parents[2]

atoms = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
         | st.binary(max_size=20))
hashable = st.recursive(atoms, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
                        max_leaves=8)
values = st.recursive(atoms | hashable, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
                      | st.sets(hashable, max_size=4), max_leaves=12)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=4, deadline=None)
@given(st.lists(values, min_size=1, max_size=40))
def test_same_value_same_key_in_a_fresh_process(batch):
    code = ("import pickle, sys; from daskflow.cache.keys import fingerprint\n"
            "print(' '.join(fingerprint(v).hex() for v in pickle.load(sys.stdin.buffer)))")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(batch), capture_output=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="random"), check=True)
    assert out.stdout.decode().split() == [fingerprint(v).hex() for v in batch]


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), values, min_size=2, max_size=6), st.randoms())
def test_dict_order_never_matters(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    assert fingerprint(dict(items)) == fingerprint(d)


@SETTINGS
@given(st.lists(hashable, min_size=2, max_size=8, unique=True), st.randoms())
def test_set_order_never_matters(xs, rnd):
    ys = list(xs)
    rnd.shuffle(ys)
    assert fingerprint(set(ys)) == fingerprint(set(xs)) and fingerprint(frozenset(ys)) == fingerprint(frozenset(xs))


def _same(a, b):
    """Equal, and of the same types all the way down (1 == 1.0 == True are different inputs).

    A set and a frozenset of the same items are the same input: they are equal in Python, and
    the key scheme encodes both as one set (``keys._enc``, pinned by the golden keys).
    """
    if type(a) is not type(b) and {type(a), type(b)} != {set, frozenset}:
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a) and \
            all(type(k) is type(next(j for j in b if j == k)) for k in a)
    if isinstance(a, float):
        return a.hex() == b.hex()  # 0.0 and -0.0 differ
    if isinstance(a, (set, frozenset)):
        return a == b and sorted(map(repr, a)) == sorted(map(repr, b))
    return a == b


@SETTINGS
@given(values, values)
def test_different_values_different_keys(a, b):
    assume(not _same(a, b))
    assert fingerprint(a) != fingerprint(b)


@SETTINGS
@given(st.lists(values, max_size=4), st.integers(min_value=0, max_value=4))
def test_unhashable_value_is_the_documented_warning_never_a_crash(xs, at):
    @task(cache_policy=INPUTS)
    def keyed(payload, n):
        return n

    payload = list(xs)
    payload.insert(min(at, len(payload)), {"deep": [threading.Lock()]})
    with pytest.raises(Unhashable):
        fingerprint(payload)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert keyed(payload, len(xs)) == len(xs)
    mine = [str(w.message) for w in seen if issubclass(w.category, CacheWarning)]
    assert len(mine) == 1 and "'payload'" in mine[0] and "INPUTS - 'payload'" in mine[0]


@task
def row3(a, b, c):
    return (a, b, c)


@flow(task_runner=ThreadPoolTaskRunner(2))
def mapped(a, b, c):
    return row3.map(a, b, c).result()


@SETTINGS
@given(st.lists(st.integers(min_value=0, max_value=6), min_size=3, max_size=3), st.sampled_from("abc"))
def test_map_argument_rules(lengths, broadcast):
    """Lists are split, an unmapped value is passed whole, lengths must agree (the error names each)."""
    args = {name: [f"{name}{i}" for i in range(n)] for name, n in zip("abc", lengths)}
    whole = args[broadcast]
    args[broadcast] = unmapped(whole)
    mapped_lengths = {name: n for name, n in zip("abc", lengths) if name != broadcast}
    if len(set(mapped_lengths.values())) > 1:
        with pytest.raises(MappingLengthMismatch) as info:
            mapped(**args)
        assert isinstance(info.value, ValueError)
        for name, n in mapped_lengths.items():
            assert name in str(info.value) and str(n) in str(info.value)
        return
    n = next(iter(mapped_lengths.values()))
    expected = [tuple(whole if k == broadcast else args[k][i] for k in "abc") for i in range(n)]
    assert mapped(**args) == expected


@SETTINGS
@given(atoms)  # the values that are not collections: drawn directly, not filtered (a health check fails)
def test_map_without_an_iterable_is_a_type_error(v):
    with pytest.raises(MappingMissingIterable) as info:
        row3.map(v, unmapped([1]), unmapped(2))
    assert isinstance(info.value, TypeError)
