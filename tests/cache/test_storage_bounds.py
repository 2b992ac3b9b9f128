"""Result storage on file://: transactions, size limits, listings with foreign files, bad blobs, racing writers."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
import warnings

import dask.config
import pytest
from click.testing import CliRunner

from daskflow import flow, task, transaction, unmapped
from daskflow.cache import INPUTS
from daskflow.cache import packs
from daskflow.cache import serialization as ser
from daskflow.cache.keys import display
from daskflow.cache.storage import ObjectStorage, open_storage
from daskflow.cache.storage_spec import StorageSpec
from daskflow.cache.store import CacheWarning
from daskflow.cli import main
from daskflow.runners import ThreadPoolTaskRunner
from storage_procs import SIZES, check, race


@pytest.fixture
def shared_dir(tmp_path):
    """A file:// result storage and the secret file its users share."""
    key = tmp_path / "results.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    root = tmp_path / "results"
    with dask.config.set({"daskflow.results.storage": f"file://{root}", "daskflow.results.secret-file": str(key)}):
        yield root


def _records(root) -> list[str]:
    """The cache objects in a storage: packs and records of their own (not its read logs, nor
    the values kept for a flow run's retry)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                  and re.fullmatch(r"v1/[^/]+/(packs/[0-9a-f]{16}-[0-9a-f]{12}-\d+-\d+|[0-9a-f]{32})",
                                   str(p.relative_to(root))))


def _stored() -> list[bytes]:
    """The keys of the cache records in the configured storage, as a process with no index sees them."""
    return [e.key for e in ObjectStorage(StorageSpec.from_config(None)).entries()[0]]


@task(cache_policy=INPUTS - "counter")
def cube(x: int, counter: str) -> int:
    with open(os.path.join(counter, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass
    return x ** 3


def _count(counter) -> int:
    return len(os.listdir(counter))


def test_a_transaction_commits_its_records_to_the_result_storage(shared_dir, tmp_path, monkeypatch, runner):
    counter = tmp_path / "count"
    counter.mkdir()

    @flow(task_runner=runner)
    def block(n: int, fail: bool):
        with transaction(key=f"block-{n}-{fail}"):
            values = cube.map(range(n), unmapped(str(counter))).result()
            if fail:
                raise RuntimeError("the block fails")
        return values

    with pytest.raises(RuntimeError):
        block(5, True)
    assert not shared_dir.exists() or _records(shared_dir) == []  # rolled back: nothing stored
    assert block(12, False) == [x ** 3 for x in range(12)]
    assert len(_stored()) == 12  # committed: every record is in the storage
    assert len(_records(shared_dir)) < 12  # in packs: an object per chunk, not per record
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "colleague"))  # another home, cold
    ran = _count(counter)
    assert block(12, False) == [x ** 3 for x in range(12)]
    assert _count(counter) == ran  # read back from the storage: nothing ran


def _fill_storage(storage, n: int, size: int = 1000, per_pack: int | None = None) -> list[bytes]:
    """``n`` records of ``size`` bytes written ``per_pack`` at a time (one pack per write)."""
    keys = [b"v1/sized-00000000/" + i.to_bytes(16, "big") for i in range(n)]
    items = list(zip(keys, ser.encode_many([bytes(size)] * n, "sized-00000000", None, None, storage_secret())))
    step = per_pack or n
    for i in range(0, n, step):
        storage.put_many(items[i:i + step])
    return keys


def storage_secret() -> bytes:
    return open(dask.config.get("daskflow.results.secret-file"), "rb").read()


def _object_bytes(root) -> int:
    return sum((root / name).stat().st_size for name in _records(root))


def test_a_storage_over_max_bytes_evicts_least_recently_read_packs_and_ignores_foreign_files(shared_dir):
    storage = open_storage(StorageSpec.from_config(None))
    keys = _fill_storage(storage, 100, per_pack=10)  # 10 packs: pack p holds keys 10p .. 10p + 9
    assert len(_records(shared_dir)) == 10
    foreign = [shared_dir / "README.txt", shared_dir / "v1" / "sized-00000000" / "notes",
               shared_dir / "v1" / "sized-00000000" / "packs" / "not-a-pack"]
    for path in foreign:  # never listed, never deleted
        path.write_text("not a record")
    read = [k for i, k in enumerate(keys) if (i // 10) % 2 == 0]  # every record of the even packs
    assert all(r is not None for r in storage.get_many(read))
    storage.note_reads(read)
    storage.flush_reads()  # one small read log, beside the records
    entries, logs = storage.entries()
    assert len(entries) == 100 and len(logs) == 1
    assert {e.key for e in entries if e.last_read} == set(read)
    assert len({e.pack for e in entries}) == 10
    total = _object_bytes(shared_dir)
    limit = int(total * 0.6)
    with dask.config.set({"daskflow.cache.max-bytes": limit}):
        storage.total = None  # as in a fresh process: the next write lists the storage
        _fill_storage(storage, 1)  # key 0 again, in a pack of its own: the write checks the size and evicts
    entries, logs = storage.entries()
    left = {e.key for e in entries}
    assert _object_bytes(shared_dir) <= limit and len(_records(shared_dir)) == 6  # 5 unread packs went whole
    assert set(read) <= left and not any(keys[p * 10 + i] in left for p in (1, 3, 5, 7, 9) for i in range(10))
    assert all(path.exists() for path in foreign)
    assert len(logs) == 1  # folded into one
    fresh = ObjectStorage(StorageSpec.from_config(None))  # another process, no index: the same records
    assert sum(r is not None for r in fresh.get_many(keys)) == 50


def test_cli_ls_and_prune_on_a_storage(shared_dir):
    storage = open_storage(StorageSpec.from_config(None))
    keys = _fill_storage(storage, 30)
    (shared_dir / "stray.bin").write_bytes(b"x" * 10)
    result = CliRunner().invoke(main, ["cache", "ls", "--storage", "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(r["key"] for r in rows) == sorted(display(k) for k in keys)
    assert all(r["task_key"] == "sized-00000000" for r in rows)
    result = CliRunner().invoke(main, ["cache", "prune", "--storage", "--max-bytes", "10KB", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["evicted"] >= 20
    assert sum(e.size for e in storage.entries()[0]) <= 10_000 and (shared_dir / "stray.bin").exists()


@pytest.mark.parametrize("damage", ["truncated", "header", "altered"])
def test_a_damaged_pack_is_a_miss_with_one_warning_naming_it(shared_dir, tmp_path, damage, monkeypatch):
    counter = tmp_path / "count"
    counter.mkdir()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline(n):
        return cube.map(range(n), unmapped(str(counter))).result()

    assert pipeline(6) == [x ** 3 for x in range(6)]
    path = shared_dir / _records(shared_dir)[0]
    blob = path.read_bytes()
    inside = len(packs.parse_header(blob).lengths)
    cut = {"truncated": len(blob) - 3, "header": 12}
    path.write_bytes(blob[:cut[damage]] if damage in cut else blob[:-1] + bytes([blob[-1] ^ 1]))
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "cold"))  # no hot tier: every read goes to the storage
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert pipeline(6) == [x ** 3 for x in range(6)]
    damaged = [str(w.message) for w in seen if issubclass(w.category, CacheWarning) and "damaged" in str(w.message)]
    assert len(damaged) == 1, [str(w.message) for w in seen]
    assert str(path) in damaged[0]  # it names the pack
    # a truncated pack is a miss as a whole; an altered record fails its own signature
    assert _count(counter) == 6 + (1 if damage == "altered" else inside)


def test_two_processes_writing_one_key_both_read_a_complete_value(shared_dir, tmp_path):
    race(dask.config.get("daskflow.results.storage"), "{}", dask.config.get("daskflow.results.secret-file"), reps=20)
    names = _records(shared_dir)
    assert "v1/race-00000000/" + "0" * 32 in names  # the 1 MiB record: an object of its own, renamed whole
    assert len([n for n in names if "/packs/" in n]) == 40  # the small one: a whole pack per write
    assert not list(shared_dir.rglob("*.tmp"))  # no temporary name left behind
    fresh = ObjectStorage(StorageSpec.from_config(None))  # a reader with no index: either value, whole
    for key, record in zip(SIZES, fresh.get_many(list(SIZES))):
        check(record, SIZES[key], storage_secret())


def test_a_client_lookup_never_fetches_a_large_record_from_the_storage(shared_dir, daskflow_home):
    from daskflow.cache.store import get_store

    store = get_store(None, StorageSpec.from_config(None))  # a storage alone, as a client with a cold home
    big = ser.encode(bytes(500_000), "big-00000000", None, None, store.secret)
    small = ser.encode(b"tiny", "big-00000000", None, None, store.secret)
    keys = [b"v1/big-00000000/" + bytes(15) + bytes([i]) for i in range(2)]
    store.put_many([(keys[0], big), (keys[1], small)])
    hits = store.load_many(keys, max_bytes=65_536)  # a ranged read stops past the limit
    assert hits == {1: b"tiny"} and hits.too_large == 1
    assert store.storage.get_bounded(keys, 65_536)[1] == 1
    assert len(store.load_many(keys)) == 2  # a worker (no limit) reads it whole


def test_cli_clear_with_storage_clears_the_storage_too_and_leaves_foreign_files(shared_dir):
    storage = open_storage(StorageSpec.from_config(None))
    keys = _fill_storage(storage, 30, per_pack=10)
    other = [b"v1/other-00000000/" + bytes(15) + bytes([i]) for i in range(3)]
    storage.put_many(list(zip(other, ser.encode_many([1, 2, 3], "other-00000000", None, None, storage_secret()))))
    (shared_dir / "stray.bin").write_bytes(b"x")
    result = CliRunner().invoke(main, ["cache", "clear", "--yes"])  # the local store only, and a note
    assert result.exit_code == 0 and "was not cleared" in result.output
    assert len(_stored()) == 33
    result = CliRunner().invoke(main, ["cache", "clear", "--yes", "--storage", "--task", "other", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["removed_from_storage"] == 3 and sorted(_stored()) == sorted(keys)
    result = CliRunner().invoke(main, ["cache", "clear", "--yes", "--storage", "-o", "json"])
    assert json.loads(result.output)["removed_from_storage"] == 30
    assert _stored() == [] and _records(shared_dir) == [] and (shared_dir / "stray.bin").exists()


def test_kept_values_in_a_storage_older_than_the_keep_window_are_deleted(shared_dir, tmp_path):
    storage = open_storage(StorageSpec.from_config(None))
    old = b"kept/0123456789abcdef0123456789abcdef/" + bytes(16)
    storage.put_many([(old, ser.encode(1, "kept:old", None, None, storage_secret()))])
    aged = [p for p in (shared_dir / "kept").rglob("*") if p.is_file()]
    week = time.time() - 8 * 86400
    for path in aged:
        os.utime(path, (week, week))
    counter = tmp_path / "count"
    counter.mkdir()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline(n):
        return cube.map(range(n), unmapped(str(counter))).result()

    with dask.config.set({"daskflow.results.keep": "7d"}):
        assert pipeline(4) == [x ** 3 for x in range(4)]  # a flow run prunes (at most hourly per process)
    left = [p for p in (shared_dir / "kept").rglob("*") if p.is_file()]
    assert aged and not any(p.exists() for p in aged)
    assert left  # this flow run's kept values stay
    fresh = ObjectStorage(StorageSpec.from_config(None))
    assert fresh.keys_under(b"kept/0123456789abcdef0123456789abcdef/") == []


def test_records_of_the_layout_before_packs_still_load(shared_dir):
    key = b"v1/older-00000000/" + bytes(range(16))
    old = shared_dir / "v1" / "older-00000000" / bytes(range(16)).hex()  # one object per record, as before
    old.parent.mkdir(parents=True)
    old.write_bytes(ser.encode({"a": 1}, "older-00000000", None, None, storage_secret()))
    fresh = ObjectStorage(StorageSpec.from_config(None))
    _, value = ser.decode(bytearray(fresh.get_many([key])[0]), storage_secret())
    assert value == {"a": 1}
    assert [e.key for e in fresh.entries()[0]] == [key] and fresh.delete([key]) == 1 and not old.exists()


def test_a_cold_process_goes_straight_to_the_pack_its_home_remembers(shared_dir, daskflow_home):
    from daskflow.cache.store import TieredStore, get_store

    key = b"v1/middle-00000000/" + bytes(range(16))  # 200 kB: too large for the hot tier, in a pack
    storage = open_storage(StorageSpec.from_config(None))
    storage.put_many([(key, ser.encode(bytes(200_000), "middle-00000000", None, None, storage_secret()))])
    local = get_store(daskflow_home)

    def a_new_process() -> TieredStore:  # its own storage handle: nothing known about the packs
        return TieredStore(local, ObjectStorage(StorageSpec.from_config(None)), storage_secret())

    first = a_new_process()
    assert first.load_many([key]) == {0: bytes(200_000)} and first.storage.headers  # listed, header read
    assert local.get_many([key]) == [None]  # not in the hot tier ...
    second = a_new_process()
    assert second.load_many([key]) == {0: bytes(200_000)}
    assert second.storage.headers == {}  # ... but remembered: no listing, no header read
    second.storage.delete([key])  # the pack goes (as an eviction elsewhere would)
    storage.put_many([(key, ser.encode(bytes(200_000), "middle-00000000", None, None, storage_secret()))])
    third = a_new_process()
    assert third.load_many([key]) == {0: bytes(200_000)}  # the remembered pack is gone: listed again, found


def test_a_task_named_with_a_slash_is_found_in_its_packs(shared_dir):
    key = b"v1/etl/load-00000000/" + bytes(range(16))
    storage = open_storage(StorageSpec.from_config(None))
    storage.put_many([(key, ser.encode(7, "etl/load-00000000", None, None, storage_secret()))])
    fresh = ObjectStorage(StorageSpec.from_config(None))
    assert ser.decode(bytearray(fresh.get_many([key])[0]), storage_secret())[1] == 7
    assert [e.key for e in fresh.entries()[0]] == [key]
