"""Hostile and broken inputs (issue 13): damaged stores, unsafe homes, bad values, careless commands.

Every test damages something real (a truncated ``data.mdb``, a chmod-ed home, a forged
record, a real CLI subprocess) and then checks that the same process and the session
cluster still run a 100-element map correctly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import struct
import subprocess
import sys
import threading
import time
import warnings

import pytest

from daskflow import task
from daskflow.cache import INPUTS
from daskflow.cache.store import CacheWarning, close_store, get_store
from daskflow.engine.tracking import tracker
from daskflow.exceptions import DamagedStore, SchedulerUnreachable, UnsafeHome, UnusableHome

ROOT = pathlib.Path(__file__).resolve().parent.parent


@task
def double(x):
    return 2 * x


@task(cache_policy=INPUTS)
def cached_double(x):
    return 2 * x


def assert_map_runs(task_=double):
    """The process (and the cluster, when it is the default runner) still runs a 100-element map."""
    assert task_.map(range(100)).result() == [2 * i for i in range(100)]


def cli(*args, home, stdin=subprocess.DEVNULL):
    """``daskflow ARGS`` as a real subprocess of this worktree's code."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASKFLOW_HOME=str(home))
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "daskflow", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=stdin)


def one_line_error(res):
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def fill_cache(home, n=10):
    """Real cache entries under ``home``, then this process lets go of the file."""
    for i in range(n):
        cached_double(i)
    close_store(home)
    return home / "cache" / "data.mdb"


@pytest.fixture
def fresh_tracker_warning():
    """The tracker warns once per process; let this test see its own warning."""
    tracker._tracker.failed = False
    yield
    tracker.flush()
    tracker._tracker.failed = False


def _close_run_store(home):
    from daskflow import _lmdb

    tracker.flush()
    _lmdb.close_env(home / "runs")


def _record_runs(home):
    from daskflow import flow
    from daskflow.runners import ThreadPoolTaskRunner

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def recorded(n):
        return double.map(range(n)).result()

    assert recorded(4) == [0, 2, 4, 6]
    _close_run_store(home)
    return home / "runs" / "data.mdb"


# -- damaged stores -----------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["half", "empty"])
def test_truncated_cache_is_moved_aside_and_runs_go_on(daskflow_home, on_cluster, keep):
    data = fill_cache(daskflow_home)
    os.truncate(data, int(data.stat().st_size * keep))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cached_double.map(range(100)).result() == [2 * i for i in range(100)]
    moved = [w for w in seen if "moved aside" in str(w.message)]
    assert len(moved) == 1, [str(w.message) for w in seen]
    aside = list(daskflow_home.glob("cache.damaged-*"))
    assert len(aside) == 1 and str(aside[0]) in str(moved[0].message) and str(data.parent) in str(moved[0].message)
    # the rebuilt cache works: the rerun is all cache hits
    states = [f.state.name for f in cached_double.map(range(100))]
    assert states == ["Cached"] * 100
    assert_map_runs()


def test_truncated_cache_cli_is_one_line_not_sigbus(daskflow_home):
    data = fill_cache(daskflow_home)
    os.truncate(data, data.stat().st_size // 2)
    line = one_line_error(cli("cache", "ls", home=daskflow_home))
    assert str(data.parent) in line and "truncated" in line
    assert data.exists(), "a read command repairs nothing"
    assert_map_runs(cached_double)


def test_truncated_run_store_is_one_line_naming_the_file(daskflow_home, on_cluster, fresh_tracker_warning, caplog):
    data = _record_runs(daskflow_home)
    os.truncate(data, data.stat().st_size // 2)
    for args in (["runs", "ls"], ["flow-runs", "ls", "-o", "json"]):
        line = one_line_error(cli(*args, home=daskflow_home))
        assert str(data) in line and f"mv {data.parent}" in line
    from daskflow.store.runs import open_run_store

    with pytest.raises(DamagedStore, match="move it aside"):
        open_run_store()
    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert_map_runs()
        tracker.flush()
    assert [r.getMessage() for r in caplog.records if "run records are not kept" in r.getMessage()] != []
    assert data.stat().st_size > 0 and not list(daskflow_home.glob("runs.damaged-*")), "never moved on its own"


def _garbage_header(data):
    with open(data, "r+b") as f:
        f.write(b"not lmdb at all " * 8)


def _wrong_version(data):
    with open(data, "r+b") as f:
        for offset in (16, 4096 + 16):  # both meta pages: magic kept, version 999
            f.seek(offset)
            f.write(struct.pack("<II", 0xBEEFC0DE, 999))


@pytest.mark.parametrize("damage", [_garbage_header, _wrong_version])
def test_corrupt_cache_header_is_a_miss_with_one_warning(daskflow_home, on_cluster, damage):
    damage(fill_cache(daskflow_home))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        state = cached_double(3, return_state=True)
    assert state.name == "Completed" and state.result() == 6  # executed, not Cached, not raised
    assert len([w for w in seen if issubclass(w.category, CacheWarning)]) == 1
    assert_map_runs(cached_double)


@pytest.mark.parametrize("damage", [_garbage_header, _wrong_version])
def test_corrupt_run_store_cli_is_one_line(daskflow_home, damage):
    data = _record_runs(daskflow_home)
    damage(data)
    line = one_line_error(cli("runs", "ls", "-o", "json", home=daskflow_home))
    assert str(data) in line
    assert_map_runs()


# -- secret key ---------------------------------------------------------------------------


class _Planted:
    """A value whose unpickling creates a file: proof that a payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("weak", [b"", b"short"], ids=["empty", "short"])
def test_weak_secret_key_is_replaced_and_a_forged_entry_never_loads(daskflow_home, on_cluster, weak, tmp_path):
    from daskflow.cache import serialization as ser

    calls = tmp_path / "calls"

    @task(cache_policy=INPUTS)
    def counted(x):
        with open(calls, "a") as f:
            f.write("x")
        return x

    counted(1)
    store = get_store(daskflow_home)
    ((key, _),) = list(store.iterate())
    marker = tmp_path / "payload-ran"
    honest = ser.encode(_Planted(marker), counted.task_key, None, None, store.secret)
    body = honest[4 + 32:]
    forged = ser.MAGIC + hashlib.blake2b(body, key=weak, digest_size=32).digest() + body  # the attacker's key
    store.put_many([(key, forged)])
    close_store(daskflow_home)
    (daskflow_home / "secret.key").write_bytes(weak)

    with pytest.warns(ser.SecretWarning, match="not used as a signing key"):
        assert counted(1) == 1
    assert not marker.exists(), "the forged payload was unpickled"
    assert calls.read_text() == "xx", "the run executed (a miss)"
    assert len((daskflow_home / "secret.key").read_bytes()) == 32
    with pytest.raises(ValueError, match="32 bytes"):
        ser.mac(weak, b"body")
    assert_map_runs(cached_double)


# -- unsafe and unusable homes ------------------------------------------------------------


def _world_writable(home):
    os.chmod(home, 0o777)
    return "chmod 700"


def _other_owner(home):
    if os.getuid() != 0:
        pytest.skip("only root can give a directory to another user")
    os.chown(home, 65534, 65534)
    return "owned by another user"


@pytest.mark.parametrize("make_unsafe", [_world_writable, _other_owner])
def test_unsafe_home_is_refused(daskflow_home, on_cluster, make_unsafe, fresh_tracker_warning):
    from daskflow import config

    daskflow_home.mkdir(mode=0o700)
    fix = make_unsafe(daskflow_home)
    with pytest.raises(UnsafeHome, match=fix) as info:
        config.home()
    assert str(daskflow_home) in str(info.value)
    line = one_line_error(cli("runs", "ls", home=daskflow_home))
    assert str(daskflow_home) in line and fix in line
    with pytest.warns(CacheWarning, match="no result cache"):
        assert cached_double.map(range(100)).result() == [2 * i for i in range(100)]
    assert_map_runs()
    tracker.flush()
    assert sorted(p.name for p in daskflow_home.iterdir()) == [], "nothing is written into an unsafe home"


def _a_file(home):
    home.write_text("not a directory")
    return "is not a directory"


def _uncreatable(home):
    return "cannot be created"


@pytest.mark.parametrize("make_unusable", [_a_file, _uncreatable])
def test_unusable_home_is_one_clear_error_and_runs_go_on(daskflow_home, monkeypatch, on_cluster, make_unusable,
                                                         fresh_tracker_warning, caplog):
    if make_unusable is _uncreatable:
        daskflow_home = pathlib.Path("/proc/self/no-such-dir/home")  # no process may create it, root neither
        monkeypatch.setenv("DASKFLOW_HOME", str(daskflow_home))
    why = make_unusable(daskflow_home)
    line = one_line_error(cli("cache", "clear", "--yes", home=daskflow_home))  # a command that writes
    assert str(daskflow_home) in line and why in line
    with pytest.warns(CacheWarning, match=why):
        assert cached_double.map(range(100)).result() == [2 * i for i in range(100)]
    with caplog.at_level(logging.WARNING, logger="daskflow"):
        assert_map_runs()
        tracker.flush()
    kept = [r for r in caplog.records if "run records are not kept" in r.getMessage()]
    assert len(kept) == 1 and str(daskflow_home) in kept[0].getMessage() and not kept[0].exc_info


@pytest.mark.skipif(os.getuid() == 0, reason="root writes into read-only directories")
def test_read_only_home_is_refused(daskflow_home):
    from daskflow import config

    daskflow_home.mkdir(mode=0o500)
    with pytest.raises(UnusableHome, match="not writable"):
        config.home()


# -- bad values ---------------------------------------------------------------------------


@task
def lock_at_three(i):
    return threading.Lock() if i == 3 else i


@pytest.mark.parametrize("chunksize", [None, 8, 1])
def test_unpicklable_result_fails_only_its_run(on_cluster, chunksize):
    futs = lock_at_three.map(range(8), chunksize=chunksize)
    futs.wait()
    states = [f.state for f in futs]
    assert [s.name for s in states] == ["Completed"] * 3 + ["Failed"] + ["Completed"] * 4
    assert [futs[i].result() for i in (0, 1, 2, 4, 5, 6, 7)] == [0, 1, 2, 4, 5, 6, 7]
    message = str(states[3].message)
    assert "'lock_at_three'" in message and "lock_at_three-3" in message and "lock" in message
    tracker.flush()
    from daskflow.store.runs import open_run_store

    rows = {r["name"]: r["state"] for r in open_run_store().task_runs(task="lock_at_three", limit=None)}
    assert rows == {f"lock_at_three-{i}": "Failed" if i == 3 else "Completed" for i in range(8)}
    assert_map_runs()


def _raising_key(context, parameters):
    raise RuntimeError("no key today")


@task(cache_key_fn=_raising_key)
def keyless(x):
    return 2 * x


@pytest.mark.parametrize("how", ["call", "submit", "map"])
def test_cache_key_fn_that_raises_runs_uncached_with_one_warning(on_cluster, how):
    for _ in range(2):  # the second time is not a cache hit either
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if how == "call":
                states = [keyless(5, return_state=True)]
            elif how == "submit":
                fut = keyless.submit(5)
                fut.wait()
                states = [fut.state]
            else:
                futs = keyless.map(range(100))
                futs.wait()
                states = [f.state for f in futs]
        mine = [w for w in seen if "cache_key_fn" in str(w.message)]
        assert len(mine) == 1 and "'keyless'" in str(mine[0].message) and "uncached" in str(mine[0].message)
        assert {s.name for s in states} == {"Completed"}
    assert_map_runs()


def test_unreachable_scheduler_fails_within_the_connect_timeout(on_cluster, monkeypatch):
    import dask.config

    from daskflow.runners import set_default_runner

    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", "tcp://nowhere:1")
    set_default_runner(None)
    start = time.monotonic()
    with dask.config.set({"daskflow.connect-timeout": "2s"}):
        with pytest.raises(SchedulerUnreachable) as info:
            double.submit(1)
    assert time.monotonic() - start < 15
    assert "tcp://nowhere:1" in str(info.value) and "daskflow server start" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", on_cluster.scheduler_address)
    set_default_runner(None)
    assert_map_runs()
