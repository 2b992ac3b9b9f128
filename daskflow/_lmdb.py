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
- A damaged data file is never mapped. LMDB maps ``data.mdb`` and trusts it: a file
  truncated by a full disk or a bad copy kills the process with SIGBUS on the first
  read past its end, and a garbage header raises deep inside a run. Before opening,
  ``check_data_file`` reads the two meta pages (offsets 0 and the page size) with
  ``struct``: magic, format version, and that the last page they name lies inside
  the file. A failed check raises ``DamagedStore`` (or, with ``recover=True``, moves
  the environment aside and starts an empty one). Checks and opens of one path are
  serialized across processes by a lock file next to it, so a store another process
  is creating right now is never mistaken for a damaged one.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import struct
import threading
import time
from typing import Any, Callable, NamedTuple, TypeVar

import lmdb

DROP_PAGES_EVERY = 5.0  # seconds between two drops of a writer's resident map pages (drop_resident_pages)
_MADV_DONTNEED = 4


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """``madvise(2)`` through ctypes, on Linux (where ``MADV_DONTNEED`` is 4); else None."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_madvise = _libc_madvise()

from daskflow.exceptions import DamagedStore

T = TypeVar("T")

_INITIAL_MAP = 1 << 30  # address space only: the file grows with the data; doubled when full
_MAX_DBS = 32  # named databases per environment: the run store alone has 13, other records join it
_envs: dict[tuple[str, int], Env] = {}
_lock = threading.Lock()

# LMDB's meta page (lmdb.h, 64-bit builds): a 16-byte page header, then magic and
# version (u32 each) at 16, the page size (the free DB's md_pad) at 40, the last
# page number and the transaction id (u64 each) at 136.
_MAGIC, _VERSION = 0xBEEFC0DE, 1
_META = struct.Struct("<II")
_PSIZE_AT, _LAST_AT = 40, 136
_LAST = struct.Struct("<QQ")


class MetaPage(NamedTuple):
    """What one of LMDB's two meta pages says about its data file."""

    page_size: int
    last_page: int
    txn_id: int


def _read_meta(head: bytes, offset: int) -> MetaPage | None:
    if len(head) < offset + _LAST_AT + _LAST.size:
        return None
    magic, version = _META.unpack_from(head, offset + 16)
    if magic != _MAGIC or version != _VERSION:
        return None
    (psize,) = struct.unpack_from("<I", head, offset + _PSIZE_AT)
    last, txn = _LAST.unpack_from(head, offset + _LAST_AT)
    return MetaPage(psize, last, txn)


def check_data_file(path: str | os.PathLike) -> str | None:
    """Why the environment at ``path`` must not be mapped, or None when it may be.

    A missing ``data.mdb`` is fine (LMDB creates it); an empty one is not (LMDB
    writes its meta pages when it creates the file, so it lost them).
    """
    data = pathlib.Path(path) / "data.mdb"
    try:
        with open(data, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(2 * 65536)
    except FileNotFoundError:
        return None
    if size == 0:
        return "data.mdb is empty (truncated)"
    first = _read_meta(head, 0)
    if first is None:
        magic, version = _META.unpack_from(head, 16) if len(head) >= 24 else (None, None)
        if magic == _MAGIC:
            return f"data.mdb is LMDB format version {version}, this build reads version {_VERSION}"
        return "data.mdb is not an LMDB file (bad header)"
    if first.page_size < 512 or first.page_size & (first.page_size - 1):
        return f"data.mdb names an impossible page size ({first.page_size})"
    second = _read_meta(head, first.page_size)
    metas = [m for m in (first, second) if m is not None and m.page_size == first.page_size]
    meta = max(metas, key=lambda m: m.txn_id)
    need = (meta.last_page + 1) * meta.page_size
    if size < need:
        return f"data.mdb is truncated ({size} bytes, its meta page needs {need})"
    return None


class _PathLock:
    """An exclusive lock, across processes, on checking and opening one environment path."""

    def __init__(self, path: pathlib.Path) -> None:
        self.file = path.with_name(f".{path.name}.lock")

    def __enter__(self) -> _PathLock:
        self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock


def move_aside(path: pathlib.Path) -> pathlib.Path:
    """Rename a damaged environment to ``{name}.damaged-{UTC time}`` next to it; returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.rename(path, dest)
    return dest


class Env:
    """An LMDB environment opened by this process, with named databases.

    Example:
        >>> env = open_env(tmp / "cache", dbs=("entries",))  # doctest: +SKIP
        >>> env.write(lambda txn: txn.put(b"k", b"v", db=env.db("entries")))  # doctest: +SKIP
        >>> env.read(lambda txn: txn.get(b"k", db=env.db("entries")))         # doctest: +SKIP
        b'v'
    """

    #: Where a damaged environment at this path was moved (``open_env(recover=True)``).
    moved_aside: tuple[pathlib.Path, str] | None = None

    def __init__(self, path: pathlib.Path, map_size: int, dbs: tuple[str, ...], readonly: bool = False,
                 sync: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        self._gate = threading.Condition()
        self._active = 0  # open transactions of this process
        self._resizing = False
        self.closed = False
        self._dropped_at = time.monotonic()
        self.env = lmdb.open(str(path), map_size=map_size, max_dbs=_MAX_DBS, mode=0o600, readonly=readonly,
                             readahead=False, metasync=False, sync=sync, max_readers=512)
        for name in () if readonly else ("data.mdb", "lock.mdb"):
            file = path / name
            if file.exists():
                os.chmod(file, 0o600)
        self.env.reader_check()
        self._map_size = self.env.info()["map_size"]
        # Opening a database takes a write transaction (a read one when read-only), so
        # all are opened here, never from inside a transaction (that would deadlock on
        # LMDB's writer lock).
        self._dbs = {}
        for name in dbs:
            try:
                self._dbs[name] = self._retry(lambda name=name: self.env.open_db(name.encode(), create=not readonly))
            except lmdb.NotFoundError:  # read-only, and written by an older version: no such database yet
                pass

    def has_db(self, name: str) -> bool:
        """Whether the database exists (a read-only opener may find one a newer version added missing)."""
        return name in self._dbs

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

        out = self._retry(attempt)
        if time.monotonic() - self._dropped_at > DROP_PAGES_EVERY:
            self._retry(self.drop_resident_pages)
        return out

    def drop_resident_pages(self) -> int:
        """Unmap from this process the pages of the data file it touched (bytes advised).

        A writer's B-tree walks reach pages all over the file (run ids are random), and a
        page of the map, once touched, stays in the process's resident memory: a writer of
        a store of 10^8 runs held the whole 50 MB file. ``MADV_DONTNEED`` on the shared,
        file-backed map drops only this process's page-table entries: the data stays in
        the file and the OS page cache, and a later read faults the page back in. Called
        under the transaction gate (no resize or close moves the map meanwhile), from
        ``write`` every ``DROP_PAGES_EVERY`` seconds. Linux only; elsewhere nothing.
        """
        self._dropped_at = time.monotonic()
        if _madvise is None or self.closed:
            return 0
        target = " " + os.path.realpath(self.path / "data.mdb")
        dropped = 0
        try:
            with open("/proc/self/maps") as maps:
                ranges = [line.split(None, 1)[0] for line in maps if line.rstrip("\n").endswith(target)]
        except OSError:
            return 0
        for span in ranges:
            lo, hi = (int(x, 16) for x in span.split("-"))
            if _madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
                dropped += hi - lo
        return dropped

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
        with self._gate:
            self._gate.wait_for(lambda: self._active == 0)
            self.closed = True
        self.env.close()


def open_env(path: str | os.PathLike, dbs: tuple[str, ...] = (), map_size: int = _INITIAL_MAP,
             recover: bool = False, readonly: bool = False, sync: bool = True) -> Env:
    """The environment at ``path`` for this process: opened once, private to the user.

    ``dbs`` names the databases every opener of this path uses (declare all of them).
    A damaged environment raises ``DamagedStore``; with ``recover=True`` it is moved
    aside instead and an empty one is opened (``Env.moved_aside`` says where and why).
    ``readonly=True`` (a reader process such as ``daskflow ui``) opens an existing
    environment without write access, or returns this process's writable handle when it
    has one; a process that opened a path read-only cannot write it later.
    ``sync=False`` skips the fsync of each commit (~10 µs a commit instead of ~250 µs here): a
    commit then survives the death of any process, not a crash of the machine.
    """
    path = pathlib.Path(path).expanduser()
    if not readonly:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = (str(path.resolve()), os.getpid())
    env = _envs.get(key)
    if env is None:
        with _lock:
            env = _envs.get(key)
            if env is None:
                env = _envs[key] = _open_checked(path, map_size, tuple(dbs), recover and not readonly, readonly,
                                                  sync)
    if env.readonly and not readonly:
        raise RuntimeError(f"{path} was opened read-only by this process; it cannot be written here")
    return env


def _open_checked(path: pathlib.Path, map_size: int, dbs: tuple[str, ...], recover: bool,
                  readonly: bool = False, sync: bool = True) -> Env:
    with _PathLock(path):
        why = check_data_file(path)
        if why is None:
            try:
                return Env(path, map_size, dbs, readonly, sync)
            except lmdb.Error as exc:  # a header our struct check accepted, but LMDB does not
                why = f"LMDB cannot open it: {exc}"
        if not recover:
            raise DamagedStore(str(path / "data.mdb"), why)
        aside = move_aside(path)
        path.mkdir(mode=0o700)
        env = Env(path, map_size, dbs, sync=sync)
        env.moved_aside = (aside, why)
        return env


def close_env(path: str | os.PathLike) -> None:
    """Close this process's handle on ``path`` (tests, and replacing a store on disk)."""
    key = (str(pathlib.Path(path).expanduser().resolve()), os.getpid())
    with _lock:
        env = _envs.pop(key, None)
    if env is not None:
        env.close()
