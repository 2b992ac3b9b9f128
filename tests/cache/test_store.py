import os
import stat
import time

import numpy as np
import pytest

from daskflow.cache import serialization as ser
from daskflow.cache.store import CacheWarning, LMDBResultStore, get_store


def _rec(store, value, expires=None, serializer=None):
    return ser.encode(value, "t-00000000", expires, serializer, store.secret)


def test_store_roundtrip_and_private_files(store, daskflow_home):
    store.put_many([(b"k1", _rec(store, {"a": 1})), (b"k2", _rec(store, [1, 2], serializer="json"))])
    assert store.load_many([b"k1", b"missing", None, b"k2"]) == {0: {"a": 1}, 3: [1, 2]}
    assert stat.S_IMODE(os.stat(daskflow_home / "cache").st_mode) == 0o700
    for name in ("cache/data.mdb", "cache/lock.mdb", "secret.key"):
        assert stat.S_IMODE(os.stat(daskflow_home / name).st_mode) == 0o600, name


def test_store_numpy_loads_without_copies(store):
    arr = np.arange(1 << 20, dtype="f8")
    store.put_many([(b"arr", _rec(store, arr))])
    [record] = store.get_many([b"arr"])
    header, value = ser.decode(record, store.secret)
    assert np.array_equal(value, arr)
    # the array is a writable view of the record's buffer, aligned for SIMD loads
    assert value.base is not None and value.flags.writeable
    assert (value.ctypes.data - np.frombuffer(record, dtype="u1").ctypes.data) % 64 == 0
    assert np.shares_memory(value, np.frombuffer(record, dtype="u1"))


def test_store_expired_entry_is_a_miss(store):
    store.put_many([(b"old", _rec(store, 1, expires=time.time() - 1)), (b"new", _rec(store, 2, expires=time.time() + 60))])
    assert store.load_many([b"old", b"new"]) == {1: 2}


def test_store_damaged_entry_is_a_miss_with_warning(store):
    good = _rec(store, "value")
    store.put_many([(b"cut", good[:20]), (b"flipped", good[:-1] + bytes([good[-1] ^ 1])), (b"ok", good)])
    with pytest.warns(CacheWarning, match="damaged cache entry.*and 1 more"):
        assert store.load_many([b"cut", b"flipped", b"ok"]) == {2: "value"}


def test_store_bad_signature_is_a_miss(store):
    planted = ser.encode("pwned", "t-00000000", None, None, b"\x00" * 32)  # another secret
    store.put_many([(b"planted", planted)])
    with pytest.warns(CacheWarning, match="bad signature"):
        assert store.load_many([b"planted"]) == {}


def test_store_transaction_marker_and_delete(store):
    store.put_many([(b"a", _rec(store, 1))], txn_key="block-1")
    assert store.is_committed("block-1") and not store.is_committed("block-2")
    assert store.delete([b"a", b"zzz"]) == 1
    assert store.load_many([b"a"]) == {}


def test_store_compact_keeps_entries(store, daskflow_home):
    store.put_many([(str(i).encode(), _rec(store, np.zeros(10_000))) for i in range(50)])
    store.delete([str(i).encode() for i in range(1, 50)])
    before, after = store.compact()
    assert after < before
    fresh = get_store(daskflow_home)
    assert list(fresh.load_many([b"0"])) == [0]
    assert isinstance(fresh, LMDBResultStore)


def test_store_secret_is_stable(daskflow_home):
    a = ser.load_secret(daskflow_home)
    assert a == ser.load_secret(daskflow_home) and len(a) == 32


def test_threads_making_the_secret_at_once_all_get_the_one_key(tmp_path):
    # Many threads of one process (a scheduler plugin's, a thread runner's) read a home's
    # key for the first time together: none fails, none sees a half-written key.
    import threading
    import warnings

    for trial in range(30):
        home = tmp_path / str(trial)
        barrier = threading.Barrier(8)
        keys, errors = [], []

        def load():
            barrier.wait()
            try:
                keys.append(ser.load_secret(home))
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a "holds 0 bytes" warning is a failure too
            threads = [threading.Thread(target=load) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert errors == [] and len(keys) == 8 and len(set(keys)) == 1
        assert (home / "secret.key").read_bytes() == keys[0] and len(keys[0]) == 32
        assert sorted(p.name for p in home.iterdir()) == ["secret.key"]  # no temporary file left


def test_store_batch_encoding_equals_one_by_one(store):
    values = [1, "a", 2.5, None, True, b"x", [1, 2], {"a": 1}, np.arange(3), lambda: 1]
    batch = ser.encode_many(values, "t-00000000", 9e9, None, store.secret, created=5.0)
    for value, record in zip(values[:-1], batch):
        assert record == ser.encode(value, "t-00000000", 9e9, None, store.secret, created=5.0)
    assert batch[-1] is not None and ser.decode(batch[-1], store.secret)[1]() == 1


def test_store_one_forged_record_among_many_is_the_only_miss(store):
    keys = [b"k%d" % i for i in range(1000)]
    records = ser.encode_many(list(range(1000)), "t-00000000", None, None, store.secret)
    records[617] = ser.encode("pwned", "t-00000000", None, None, b"\x01" * 32)  # another secret
    store.put_many(list(zip(keys, records)))
    with pytest.warns(CacheWarning, match="bad signature") as caught:
        hits = store.load_many(keys)
    assert len(caught) == 1
    assert len(hits) == 999 and 617 not in hits and hits[618] == 618


def test_store_put_many_last_record_of_a_repeated_key_wins(store):
    store.put_many([(b"b", _rec(store, 1)), (b"a", _rec(store, 2)), (b"b", _rec(store, 3))])
    assert store.load_many([b"a", b"b"]) == {0: 2, 1: 3}


def _rss_file_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile")) / 1024


def test_a_reader_with_max_bytes_leaves_large_records_unread(store):
    """The client looks up with ``max_bytes``: a record it cannot take is known too large from its
    mark, not read (reading a value of the map, even as a view, maps all its pages here)."""
    big, small = b"v1/t-00000000/" + bytes(16), b"v1/t-00000000/" + bytes(range(16))
    array = np.full(2 * 2**20, 1.5)  # 16 MB
    store.put_many([(big, ser.encode(array, "t-00000000", None, None, store.secret)),
                    (small, ser.encode(7, "t-00000000", None, None, store.secret))])
    before = _rss_file_mb()
    hits = store.load_many([big, small], max_bytes=64 * 1024)
    assert hits == {1: 7} and hits.too_large == 1
    assert _rss_file_mb() - before < 6  # the 16 MB record's pages were not mapped in
    assert (store.load_many([big])[0] == array).all()  # without a limit: read as before
    store.delete([big])
    assert store.load_many([big], max_bytes=64 * 1024).too_large == 0  # its mark went with it
