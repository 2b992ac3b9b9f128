"""Segments: a map's consecutive small records also stored as one record, cut where the keys say."""

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskflow import flow, task
from daskflow.cache import INPUTS
from daskflow.cache import segments
from daskflow.cache import serialization as ser
from daskflow.cache.store import CacheWarning, get_store
from daskflow.runners import ThreadPoolTaskRunner


def _keys(n, salt=b""):
    return [b"v1/t-00000000/" + hashlib.blake2b(salt + i.to_bytes(8, "little"), digest_size=16).digest()
            for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3000), start=st.integers(0, 3000), stop=st.integers(0, 3000))
def test_a_slice_of_a_sequence_names_the_same_segments_inside_it(n, start, stop):
    """Where a chunk's edges fall does not move segments: a writer that saw only ``keys[start:stop]``
    names exactly the segments of the whole sequence that lie inside its slice."""
    keys = _keys(n)
    whole = {(s.lo, s.hi, s.key) for s in segments.cut(keys)}
    part = {(s.lo + start, s.hi + start, s.key) for s in segments.cut(keys[start:stop])}
    inside = {s for s in whole if s[0] > start and s[1] <= max(start, min(stop, n))}
    assert inside <= part <= whole
    assert all(b - a >= segments.MIN_KEYS for a, b, _ in whole)


def test_unhashable_keys_break_segments():
    keys = _keys(2000)
    keys[1000] = None
    assert not any(s.lo <= 1000 < s.hi for s in segments.cut(keys))
    assert len(segments.cut(keys)) >= 10  # the rest still have theirs


def _written(store, values, keys, expires=None):
    records = ser.encode_many(values, "t-00000000", expires, None, store.secret)
    items = list(zip(keys, records))
    items += segments.build(keys, dict(enumerate(records)), store.secret)
    store.put_many(items)
    return items


def test_a_rerun_reads_segments_not_members(store):
    keys = _keys(3000)
    values = [{"i": i} for i in range(3000)]
    items = _written(store, values, keys)
    segs = [k for k, _ in items if k.startswith(segments.PREFIX)]
    assert len(segs) >= 20
    # members deleted: whatever the segments hold still loads, exactly
    covered = {i for s in segments.cut(keys) for i in range(s.lo, s.hi)}
    store.delete([keys[i] for i in covered])
    hits = store.load_many(keys)
    assert hits == dict(enumerate(values))  # the covered from segments, the rest from their own records
    assert len(covered) > 2500


def test_an_altered_segment_is_a_miss_and_its_members_load(store):
    keys = _keys(2000)
    values = list(range(2000))
    items = _written(store, values, keys)
    seg_key, record = next((k, r) for k, r in items if k.startswith(segments.PREFIX))
    store.put_many([(seg_key, record[:-1] + bytes([record[-1] ^ 1]))])
    with pytest.warns(CacheWarning, match="damaged cache segment"):
        hits = store.load_many(keys)
    assert hits == dict(enumerate(values))


def test_an_expired_segment_is_a_miss(store):
    keys = _keys(2000)
    _written(store, list(range(2000)), keys, expires=time.time() + 60)
    assert len(store.load_many(keys)) == 2000
    assert store.load_many(keys, now=time.time() + 120) == {}


def test_arrays_and_json_are_never_members(store):
    np = pytest.importorskip("numpy")
    records = ser.encode_many([np.arange(3)] * 2000, "t-00000000", None, None, store.secret)
    assert segments.build(_keys(2000), dict(enumerate(records)), store.secret) == []
    records = ser.encode_many(list(range(2000)), "t-00000000", None, "json", store.secret)
    assert segments.build(_keys(2000), dict(enumerate(records)), store.secret) == []


calls = []
failed = []


@task(cache_policy=INPUTS, persist_result=True)
def tenth(x):
    calls.append(x)
    if x == 777 and not failed:
        failed.append(x)
        raise ValueError("once")
    return x / 10


def test_a_map_with_a_failed_run_reruns_it_and_reads_the_rest_from_segments(daskflow_home):
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline(n):
        return tenth.map(range(n)).result(raise_on_failure=False)

    calls.clear()
    failed.clear()
    first = pipeline(3000)
    assert isinstance(first[777], ValueError) and first[776] == 77.6
    store = get_store(daskflow_home)
    seg_count = sum(1 for k, _ in store.iterate() if k.startswith(segments.PREFIX))
    assert seg_count >= 20
    calls.clear()
    second = pipeline(3000)
    assert calls == [777]  # only the failed run executes
    assert second == [x / 10 for x in range(3000)]
