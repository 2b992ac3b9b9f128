"""Age limit: daskflow.cache.keep, applied by the local store's writers (issue 24, "cache likewise")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import dask.config
import numpy as np
import pytest
from click.testing import CliRunner

from daskflow.cache import serialization as ser
from daskflow.cache.store import close_store, get_store
from daskflow.cli import main

DAY = 86400.0


def _key(i: int) -> bytes:
    return b"v1/aged-00000000/" + i.to_bytes(16, "big")


def _write(store, ids, days_ago: float = 0.0) -> None:
    created = time.time() - days_ago * DAY
    records = ser.encode_many([b"v%d" % i for i in ids], "aged-00000000", None, None, store.secret, created=created)
    store.put_many(list(zip(map(_key, ids), records)))


WRITER = textwrap.dedent("""
    import sys
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import get_store
    store = get_store(sys.argv[1])
    key = b"v1/aged-00000000/" + int(sys.argv[2]).to_bytes(16, "big")
    store.put_many([(key, ser.encode(b"new", "aged-00000000", None, None, store.secret))])
    print(len(store.entries()), "dask" in sys.modules)
""")


def _second_process(home, i: int) -> int:
    """A fresh process's first write to the store; the entries it then sees."""
    out = subprocess.run([sys.executable, "-c", WRITER, str(home), str(i)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    count, imported_dask = out.stdout.split()
    assert imported_dask == "False"
    return int(count)


def test_a_second_process_first_write_deletes_entries_unused_for_cache_keep(store, daskflow_home):
    _write(store, range(10), days_ago=40)  # this process's first write: nothing old yet
    _write(store, range(10, 15), days_ago=20)  # younger than the default keep (30d)
    store.load_many([_key(0), _key(1)])  # read now: young again
    store.flush_reads()
    close_store(daskflow_home)
    stamp = daskflow_home / ".cache-keep.stamp"
    assert stamp.exists()
    # Another process pruned less than cache.prune-every (1h) ago: a new writer does not scan again.
    assert _second_process(daskflow_home, 100) == 16
    os.utime(stamp, (time.time() - 7200,) * 2)  # ... two hours ago: the next writer's first write prunes
    assert _second_process(daskflow_home, 101) == 2 + 5 + 2  # the read two, the 20-day-old five, the new two
    left = {e.key for e in get_store(daskflow_home).entries()}
    assert _key(0) in left and _key(1) in left and _key(2) not in left and _key(12) in left
    assert time.time() - stamp.stat().st_mtime < 60


def test_cache_keep_null_keeps_entries_until_expiry(store, daskflow_home):
    with dask.config.set({"daskflow.cache.keep": None, "daskflow.cache.prune-every": 0}):
        _write(store, range(5), days_ago=400)
        _write(store, range(5, 6))
    assert len(store.entries()) == 6


def test_a_long_running_writer_prunes_again_every_prune_every(store):
    with dask.config.set({"daskflow.cache.keep": "1d", "daskflow.cache.prune-every": "1h"}):
        _write(store, range(3), days_ago=2)  # first write: pruned before it, so these stay for now
        _write(store, range(3, 4))
        assert len(store.entries()) == 4  # not due again within the hour
        store.next_keep = time.monotonic()  # an hour later in this process ...
        os.utime(store.home / ".cache-keep.stamp", (time.time() - 3601,) * 2)  # ... and for the store
        _write(store, range(4, 5))
    assert sorted(e.key for e in store.entries()) == [_key(3), _key(4)]


def test_a_bad_cache_keep_is_a_clear_error(store):
    with dask.config.set({"daskflow.cache.keep": "soon"}):
        with pytest.raises(ValueError, match="daskflow.cache.keep.*'soon'"):
            _write(store, [1])


def test_cli_cache_prune_applies_cache_keep_by_default(store, daskflow_home):
    _write(store, range(6), days_ago=31)
    _write(store, range(6, 8))
    close_store(daskflow_home)
    result = CliRunner().invoke(main, ["cache", "prune", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["removed"] == 6
    assert len(get_store(daskflow_home).entries()) == 2


READER = textwrap.dedent("""
    import sys, time
    from daskflow.cache.store import get_store
    store = get_store(sys.argv[1])
    keys = [b"v1/aged-00000000/" + i.to_bytes(16, "big") for i in range(int(sys.argv[2]))]
    hits, rounds, deadline = 0, 0, time.monotonic() + 60
    # at least the rounds asked for, and on until a value was read (a loaded machine can
    # schedule every round of this process between a write and its prune)
    while rounds < int(sys.argv[3]) or (not hits and time.monotonic() < deadline):
        found = store.load_many(keys)
        for i, value in found.items():
            assert value.shape == (4096,) and (value == i).all(), ("partial or wrong value", i)
        hits += len(found)
        rounds += 1
    print(hits)
""")


def test_pruning_by_age_while_another_process_reads(store, daskflow_home, tmp_path):
    """Writers prune old entries at every write while a reader process loads them: every value
    it gets is whole, and it never fails."""
    n = 40
    arrays = [np.full(4096, i, dtype="f8") for i in range(n)]
    keys = list(map(_key, range(n)))
    script = tmp_path / "reader.py"
    script.write_text(READER)
    pruned = 0
    with dask.config.set({"daskflow.cache.keep": "1d", "daskflow.cache.prune-every": 0}):
        old = time.time() - 2 * DAY
        store.put_many(list(zip(keys, ser.encode_many(arrays, "aged-00000000", None, None, store.secret,
                                                      created=old))))
        reader = subprocess.Popen([sys.executable, str(script), str(daskflow_home), str(n), "100"],
                                  env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while reader.poll() is None and pruned < 2000:  # write old entries back; each write prunes
                for lo in range(0, n, 10):
                    store.put_many(list(zip(keys[lo:lo + 10], ser.encode_many(
                        arrays[lo:lo + 10], "aged-00000000", None, None, store.secret, created=old))))
                    pruned += len(store.entries()) < n
            out, err = reader.communicate(timeout=120)
        finally:
            if reader.poll() is None:
                reader.kill()
    assert reader.returncode == 0, err
    assert pruned > 0 and int(out) > 0
