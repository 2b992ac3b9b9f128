import datetime
import json
import os
import subprocess
import sys

from click.testing import CliRunner

from daskflow import task
from daskflow.cache import INPUTS
from daskflow.cli import main


def _fill():
    @task(name="keep", cache_policy=INPUTS)
    def keep(x):
        return x

    @task(name="gone", cache_policy=INPUTS, cache_expiration=datetime.timedelta(seconds=-1))
    def gone(x):
        return x

    for i in range(3):
        keep(i)
    gone(1)


def _json(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_cache_ls_and_stats_json():
    _fill()
    rows = _json(["cache", "ls", "-o", "json"])
    assert len(rows) == 4
    assert {r["task_key"].rsplit("-", 1)[0] for r in rows} == {"keep", "gone"}
    assert all(r["key"].startswith("v1/") and r["bytes"] > 0 for r in rows)
    assert len(_json(["cache", "ls", "--task", "keep", "-o", "json"])) == 3
    stats = _json(["cache", "stats", "-o", "json"])
    assert stats["entries"] == 4 and stats["expired"] == 1 and len(stats["tasks"]) == 2
    table = CliRunner().invoke(main, ["cache", "ls"])
    assert table.exit_code == 0 and "keep-" in table.output


def test_cli_cache_clear_by_task_and_all():
    _fill()
    assert _json(["cache", "clear", "--task", "gone", "--yes", "-o", "json"]) == {"removed": 1}
    assert len(_json(["cache", "ls", "-o", "json"])) == 3
    assert _json(["cache", "clear", "-y", "-o", "json"]) == {"removed": 3}
    assert _json(["cache", "ls", "-o", "json"]) == []


def test_cli_cache_prune_drops_expired():
    _fill()
    out = _json(["cache", "prune", "-o", "json"])
    assert out["removed"] == 1 and out["bytes_after"] <= out["bytes_before"]
    rows = _json(["cache", "ls", "-o", "json"])
    assert len(rows) == 3 and not any(r["expired"] for r in rows)


def test_cli_cache_commands_do_not_import_distributed(daskflow_home):
    _fill()
    code = ("import sys; from daskflow.cli import main\n"
            "for args in (['cache','ls','-o','json'], ['cache','stats','-o','json'], ['cache','prune']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
            "print('DISTRIBUTED', 'distributed' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), DASKFLOW_HOME=str(daskflow_home))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "DISTRIBUTED False" in out
    assert '"entries": 4' in out


def _big_store(home, n):
    """A real store of ``n`` entries of two tasks, written with put_many (seconds, not a pipeline)."""
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import close_store, get_store

    store = get_store(home)
    half = n // 2
    for task_key, lo, hi in (("alpha-0000000a", 0, half), ("beta-0000000b", half, n)):
        values = [b"x" * (i % 97) for i in range(lo, hi)]
        keys = [f"v1/{task_key}/".encode() + i.to_bytes(16, "big") for i in range(lo, hi)]
        store.put_many(list(zip(keys, ser.encode_many(values, task_key, None, None, store.secret))))
    return store, close_store


def test_cli_cache_ls_on_80k_entries_lists_sorts_and_limits(daskflow_home):
    from daskflow.cache.keys import display

    n = 80_000
    store, close = _big_store(daskflow_home, n)
    read = [b"v1/beta-0000000b/" + i.to_bytes(16, "big") for i in (70_001, 79_999)]
    assert len(store.load_many(read)) == 2
    store.flush_reads()
    close(daskflow_home)
    rows = _json(["cache", "ls", "-o", "json"])
    assert len(rows) == n and len({r["key"] for r in rows}) == n
    assert sum(r["task_key"] == "alpha-0000000a" for r in rows) == n // 2
    by_size = _json(["cache", "ls", "--sort", "size", "--limit", "3", "-o", "json"])
    assert len(by_size) == 3 and all(r["bytes"] == max(x["bytes"] for x in rows) for r in by_size)
    by_read = _json(["cache", "ls", "--sort", "read", "--limit", "2", "-o", "json"])
    assert {r["key"] for r in by_read} == {display(k) for k in read} and all(r["last_read"] for r in by_read)
    by_task = _json(["cache", "ls", "--sort", "task", "--limit", "1", "--task", "beta", "-o", "json"])
    assert by_task[0]["task_key"] == "beta-0000000b"
    table = CliRunner().invoke(main, ["cache", "ls"])  # 80k rows as plain columns
    assert table.exit_code == 0 and table.output.count("\n") == n + 1


def test_cli_cache_ls_opens_the_store_read_only(daskflow_home):
    _fill()
    from daskflow.cache.store import close_store

    close_store(daskflow_home)
    data = daskflow_home / "cache" / "data.mdb"
    data.chmod(0o400)  # a writable open would fail here
    try:
        before = data.stat().st_mtime_ns
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), DASKFLOW_HOME=str(daskflow_home))
        out = subprocess.run([sys.executable, "-m", "daskflow", "cache", "ls", "-o", "json"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)) == 4 and data.stat().st_mtime_ns == before
    finally:
        data.chmod(0o600)


def test_cli_cache_prune_older_than_and_max_bytes(daskflow_home):
    store, close = _big_store(daskflow_home, 2_000)
    close(daskflow_home)
    assert _json(["cache", "prune", "--older-than", "1h", "-o", "json"])["removed"] == 0
    assert _json(["cache", "prune", "--older-than", "0s", "-o", "json"])["removed"] == 2_000
    store, close = _big_store(daskflow_home, 2_000)
    keep = [e.key for e in store.entries()][-100:]
    store.load_many(keep)
    store.flush_reads()
    close(daskflow_home)
    out = _json(["cache", "prune", "--max-bytes", "60KB", "-o", "json"])
    assert out["evicted"] > 1_000 and out["bytes_after"] < out["bytes_before"]
    left = {r["key"] for r in _json(["cache", "ls", "-o", "json"])}
    from daskflow.cache.keys import display

    assert {display(k) for k in keep} <= left  # the recently read ones stayed
    bad = CliRunner().invoke(main, ["cache", "prune", "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than" in bad.output and "'soon'" in bad.output
