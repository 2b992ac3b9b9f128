import multiprocessing
import os
import stat
import sys

import pytest

from daskflow._lmdb import close_env, open_env


def test_open_env_once_per_process_and_private(tmp_path):
    path = tmp_path / "env"
    env = open_env(path, dbs=("t",))
    assert open_env(path) is env
    env.write(lambda txn: txn.put(b"k", b"v", db=env.db("t")))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE(os.stat(path / name).st_mode) == 0o600
    close_env(path)


def test_write_grows_a_full_map(tmp_path):
    env = open_env(tmp_path / "small", dbs=("t",), map_size=1 << 20)
    big = b"x" * (600 << 10)
    for i in range(8):  # 4.8 MB into a 1 MB map
        env.write(lambda txn, i=i: txn.put(str(i).encode(), big, db=env.db("t")))
    assert env.env.info()["map_size"] >= 8 << 20
    assert env.read(lambda txn: len(txn.get(b"7", db=env.db("t")))) == len(big)
    close_env(tmp_path / "small")


def _grow_in_child(path):
    env = open_env(path, dbs=("t",))
    env.write(lambda txn: txn.put(b"big", b"y" * (3 << 20), db=env.db("t")))


def test_other_process_adopts_growth(tmp_path):
    path = tmp_path / "shared"
    env = open_env(path, dbs=("t",), map_size=1 << 20)
    env.write(lambda txn: txn.put(b"a", b"1", db=env.db("t")))
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_grow_in_child, args=(str(path),))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    # our next transactions see the grown map and the child's data
    assert env.read(lambda txn: len(txn.get(b"big", db=env.db("t")))) == 3 << 20
    env.write(lambda txn: txn.put(b"b", b"2" * (2 << 20), db=env.db("t")))
    close_env(path)


def test_failed_write_commits_nothing(tmp_path):
    env = open_env(tmp_path / "atomic", dbs=("t",))

    def half(txn):
        txn.put(b"one", b"1", db=env.db("t"))
        raise RuntimeError("boom")

    try:
        env.write(half)
    except RuntimeError:
        pass
    assert env.read(lambda txn: txn.get(b"one", db=env.db("t"))) is None
    close_env(tmp_path / "atomic")


def test_concurrent_writers_grow_the_map_once_per_need(tmp_path):
    import threading

    env = open_env(tmp_path / "threads", dbs=("t",), map_size=1 << 20)
    big = b"z" * (300 << 10)
    barrier = threading.Barrier(6)

    def writer(n):
        barrier.wait()
        for i in range(4):
            env.write(lambda txn, i=i: txn.put(f"{n}-{i}".encode(), big, db=env.db("t")))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert env.read(lambda txn: txn.stat(env.db("t"))["entries"]) == 24
    # 24 x 300 KiB = 7.2 MB of data: doubling once per need ends at 16 MiB, not 2^6 times more
    assert env.env.info()["map_size"] <= 16 << 20
    close_env(tmp_path / "threads")


def _resident_kib(file) -> int:
    """This process's resident KiB of mappings of ``file`` (/proc/self/smaps)."""
    total, mine = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                mine = line.rstrip("\n").endswith(" " + os.path.realpath(file))
            elif mine and parts[0] == "Rss:":
                total += int(parts[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps: Linux")
def test_a_writer_drops_the_map_pages_it_touched(tmp_path):
    path = tmp_path / "env"
    env = open_env(path, dbs=("t",))
    rows = {os.urandom(16): os.urandom(200) for _ in range(20_000)}  # random keys: pages all over the file
    items = list(rows.items())
    for lo in range(0, len(items), 1000):
        env.write(lambda txn, lo=lo: [txn.put(k, v, db=env.db("t")) for k, v in items[lo:lo + 1000]])
    env.read(lambda txn: sum(1 for _ in txn.cursor(db=env.db("t"))))  # every page touched
    before = _resident_kib(path / "data.mdb")
    assert before > 2048  # the file's ~5 MB, resident in this process
    assert env.drop_resident_pages() > 0
    assert _resident_kib(path / "data.mdb") < 256
    key, value = items[12_345]
    assert env.read(lambda txn: txn.get(key, db=env.db("t"))) == value  # read back from the file
    close_env(path)
