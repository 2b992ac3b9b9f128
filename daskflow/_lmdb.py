"""One LMDB environment per (path, process): opening, map growth, stale readers, modes.

Both stores (the result cache and the run store) sit on this module and never call
``lmdb.open`` themselves, because LMDB has rules that are easy to break:

- An environment must be opened once per process. Opening the same path twice in
  one process corrupts LMDB's lock bookkeeping; using a handle inherited through
  ``fork`` is undefined. ``open_env`` keys its cache by ``(real path, pid)`` so a
  forked child (a LocalCluster worker, a task worker) opens its own handle.
- The map has a fixed size. A write that fills it raises ``MapFullError``: ``write``
  then doubles the map and replays the transaction. Another process that grew the
  map makes our next transaction raise ``MapResizedError``: we adopt the new size
  (``set_mapsize(0)``) and retry. LMDB allows a resize only while this process has
  no open transaction, so transactions pass a gate that a resize closes.
- Readers of processes that died hold pages forever unless cleared: ``reader_check``
  runs on every open.
- Everything is private to the user: directories 0700, data and lock files 0600.
"""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any, Callable, TypeVar

import lmdb

T = TypeVar("T")

_INITIAL_MAP = 1 << 30  # address space only: the file grows with the data; doubled when full
_MAX_DBS = 16
_envs: dict[tuple[str, int], Env] = {}
_lock = threading.Lock()


class Env:
    """An LMDB environment opened by this process, with named databases.

    Example:
        >>> env = open_env(tmp / "cache", dbs=("entries",))  # doctest: +SKIP
        >>> env.write(lambda txn: txn.put(b"k", b"v", db=env.db("entries")))  # doctest: +SKIP
        >>> env.read(lambda txn: txn.get(b"k", db=env.db("entries")))         # doctest: +SKIP
        b'v'
    """

    def __init__(self, path: pathlib.Path, map_size: int, dbs: tuple[str, ...]) -> None:
        self.path = path
        self._gate = threading.Condition()
        self._active = 0  # open transactions of this process
        self._resizing = False
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=_MAX_DBS, mode=0o600,
                             readahead=False, metasync=False, max_readers=512)
        for name in ("data.mdb", "lock.mdb"):
            file = path / name
            if file.exists():
                os.chmod(file, 0o600)
        self.env.reader_check()
        self._map_size = self.env.info()["map_size"]
        # Opening a database takes a write transaction, so all are opened here, never
        # from inside a transaction (that would deadlock on LMDB's writer lock).
        self._dbs = {name: self._retry(lambda name=name: self.env.open_db(name.encode())) for name in dbs}

    def db(self, name: str) -> Any:
        """A named database declared when the environment was opened."""
        try:
            return self._dbs[name]
        except KeyError:
            raise KeyError(f"{self.path}: database {name!r} was not declared in open_env(dbs=...)") from None

    def read(self, fn: Callable[[lmdb.Transaction], T], buffers: bool = False) -> T:
        """Run ``fn(txn)`` in a read transaction.

        With ``buffers=True`` values are views of the map, valid only inside ``fn``.
        """
        def attempt() -> T:
            with self.env.begin(buffers=buffers) as txn:
                return fn(txn)

        return self._retry(attempt)

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn(txn)`` in one write transaction: all of it is committed, or none.

        ``fn`` may be replayed (after the map grew), so it must not have side effects
        outside the transaction, and must not open another transaction itself.
        """
        def attempt() -> T:
            with self.env.begin(write=True) as txn:
                return fn(txn)

        return self._retry(attempt)

    def _retry(self, attempt: Callable[[], T]) -> T:
        for _ in range(32):
            gate = self._gate
            with gate:
                gate.wait_for(lambda: not self._resizing)
                self._active += 1
            seen = self._map_size
            try:
                return attempt()
            except lmdb.MapFullError:
                resize = "grow"
            except lmdb.MapResizedError:
                resize = "adopt"
            finally:
                with gate:
                    self._active -= 1
                    gate.notify_all()
            self._resize(resize, seen)
        raise lmdb.MapFullError(f"{self.path}: the LMDB map could not be grown enough")

    def _resize(self, how: str, seen: int) -> None:
        """Grow the map (double it) or adopt another process's size, with no txn open here.

        ``seen`` is the map size the failed transaction ran with: when another thread
        has resized since, the retry runs on that size instead of doubling again.
        """
        with self._gate:
            self._gate.wait_for(lambda: not self._resizing)
            if self._map_size != seen:
                return
            self._resizing = True
            try:
                self._gate.wait_for(lambda: self._active == 0)
                if how == "grow":
                    self.env.set_mapsize(self._map_size * 2)
                else:
                    self.env.set_mapsize(0)
                self._map_size = self.env.info()["map_size"]
            finally:
                self._resizing = False
                self._gate.notify_all()

    def reader_check(self) -> int:
        """Clear reader slots of dead processes; returns how many were cleared."""
        return self.env.reader_check()

    def stat(self, name: str) -> dict[str, int]:
        return self.read(lambda txn: txn.stat(self.db(name)))

    def copy_compact(self, dest: pathlib.Path) -> None:
        """A compacted copy of the environment at ``dest`` (reclaims freed pages)."""
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.env.copy(str(dest), compact=True)

    def close(self) -> None:
        self.env.close()


def open_env(path: str | os.PathLike, dbs: tuple[str, ...] = (), map_size: int = _INITIAL_MAP) -> Env:
    """The environment at ``path`` for this process: opened once, private to the user.

    ``dbs`` names the databases every opener of this path uses (declare all of them).
    """
    path = pathlib.Path(path).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = (str(path.resolve()), os.getpid())
    env = _envs.get(key)
    if env is None:
        with _lock:
            env = _envs.get(key)
            if env is None:
                env = _envs[key] = Env(path, map_size, tuple(dbs))
    return env


def close_env(path: str | os.PathLike) -> None:
    """Close this process's handle on ``path`` (tests, and replacing a store on disk)."""
    key = (str(pathlib.Path(path).expanduser().resolve()), os.getpid())
    with _lock:
        env = _envs.pop(key, None)
    if env is not None:
        env.close()
