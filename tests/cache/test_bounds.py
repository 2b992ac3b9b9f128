"""Size limits: daskflow.cache.max-bytes, least recently read first, enforced after writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dask.config
import numpy as np
import pytest

from daskflow.cache import serialization as ser
from daskflow.cache.store import READ_LOGS, READS


def _key(i: int) -> bytes:
    return b"v1/sized-00000000/" + i.to_bytes(16, "big")


def _fill(store, n: int, size: int = 2000) -> None:
    values = [bytes([i % 251]) * size for i in range(n)]
    store.put_many(list(zip(map(_key, range(n)), ser.encode_many(values, "sized-00000000", None, None,
                                                                    store.secret))))


def _logs(store) -> int:
    return store.env.read(lambda txn: txn.stat(store.env.db(READ_LOGS))["entries"])


def test_reads_are_stamped_in_batches_not_per_hit(store):
    _fill(store, 50)
    assert len(store.load_many([_key(i) for i in range(10)])) == 10
    assert _logs(store) == 0  # the read path wrote nothing
    assert len(store.reads.keys) == 10
    _fill(store, 1)  # the next write carries the pending stamps in its own transaction: one log value
    assert _logs(store) == 1 and store.reads.keys == []
    last = {e.key: e.last_read for e in store.entries()}
    assert all(last[_key(i)] is not None for i in range(10)) and last[_key(20)] is None
    for _ in range(40):  # logs pile up, then fold into per-key stamps (of entries that exist)
        store.load_many([_key(30), b"v1/sized-00000000/" + b"gone" * 4])
        store.flush_reads()
    assert _logs(store) < 32
    folded = store.env.read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=store.env.db(READS)).iternext()])
    assert set(folded) == {_key(i) for i in range(10)} | {_key(30)}
    assert {e.key: e.last_read for e in store.entries()}[_key(30)] > last[_key(0)]


def test_a_write_over_max_bytes_evicts_least_recently_read_to_the_low_water_mark(store):
    _fill(store, 400)
    store.load_many([_key(i) for i in range(0, 400, 4)])  # every 4th entry is read ...
    store.flush_reads()
    used = store.used_bytes()
    limit = used // 2
    with dask.config.set({"daskflow.cache.max-bytes": limit}):
        fresh = ser.encode(b"new", "sized-00000000", None, None, store.secret)
        store.put_many([(_key(10_000), fresh)])  # ... then one write goes over the limit
    after = store.used_bytes()
    assert after <= limit, (after, limit)
    kept = {e.key for e in store.entries()}
    assert all(_key(i) in kept for i in range(0, 400, 4))  # read ones stay
    assert _key(10_000) in kept  # the entry just written is the most recent: it stays
    assert not any(_key(i) in kept for i in (1, 2, 3, 5))  # the oldest unread ones went first
    assert len(store.load_many([_key(1)])) == 0  # an evicted entry is a plain miss


def test_max_bytes_unset_never_evicts(store):
    _fill(store, 200)
    assert len(store.entries()) == 200


def test_a_bad_max_bytes_is_a_clear_error(store):
    with dask.config.set({"daskflow.cache.max-bytes": "lots"}):
        with pytest.raises(ValueError, match="daskflow.cache.max-bytes.*'lots'"):
            _fill(store, 1)


READER = textwrap.dedent("""
    import sys, numpy as np
    from daskflow.cache.store import get_store
    store = get_store(sys.argv[1])
    keys = [b"v1/race-00000000/" + i.to_bytes(16, "big") for i in range(int(sys.argv[2]))]
    hits = misses = 0
    for _ in range(int(sys.argv[3])):
        found = store.load_many(keys)
        for i, value in found.items():
            assert value.shape == (4096,) and (value == i).all(), ("partial or wrong value", i)
        hits += len(found)
        misses += len(keys) - len(found)
    print(hits, misses)
""")


def test_eviction_by_another_process_gives_readers_complete_values_or_misses(store, daskflow_home, tmp_path):
    n = 60
    arrays = [np.full(4096, i, dtype="f8") for i in range(n)]  # 32 KiB each: overflow pages, reused when freed
    keys = [b"v1/race-00000000/" + i.to_bytes(16, "big") for i in range(n)]
    store.put_many(list(zip(keys, ser.encode_many(arrays, "race-00000000", None, None, store.secret))))
    script = tmp_path / "reader.py"
    script.write_text(READER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    reader = subprocess.Popen([sys.executable, str(script), str(daskflow_home), str(n), "150"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    evicted = 0
    try:
        with dask.config.set({"daskflow.cache.max-bytes": 20 * 33_000}):
            while reader.poll() is None and evicted < 2000:  # evict and rewrite while the reader reads
                for lo in range(0, n, 10):
                    batch = list(zip(keys[lo:lo + 10], ser.encode_many(arrays[lo:lo + 10], "race-00000000", None,
                                                                       None, store.secret)))
                    store.put_many(batch)
                    evicted += len(store.entries()) < n  # this write made the store evict
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err
    hits, misses = map(int, out.split())
    assert evicted > 0 and hits > 0 and misses > 0  # both outcomes happened, and no value was partial
