"""Transactions: the cache records of a block of runs are committed all together, or not at all.

``with transaction(key=None) as txn:`` collects every run started in the block
(inline calls, ``.submit()``, ``.map()``). Runs of caching tasks do not write the cache
while the block is open: workers return their signed records in the chunk envelope,
inline runs hand theirs to the block. At a clean exit the block waits for its runs;
if all completed it writes every record (and, with a ``key``, a committed marker) in
one LMDB write transaction, then calls the runs' ``on_commit`` hooks in run order.
If the body raised or a run of the block did not complete, nothing is written and the
``on_rollback`` hooks of the runs that completed fire newest first; the error
propagates (the body's, or the first failed run's).

Outside a block every run is its own transaction: its record is written with its
chunk's, and its ``on_commit`` hooks fire as soon as it succeeded (cached or not).
Hooks receive the transaction: ``txn.key``, ``txn.set(name, value)``, ``txn.get(name)``.
A nested block hands its runs to the enclosing one, which commits them.

Example:
    >>> with transaction(key="load-2024-06") as txn:  # doctest: +SKIP
    ...     if not txn.is_committed():
    ...         write_table(extract())
"""

from __future__ import annotations

import contextvars
import copy
from typing import TYPE_CHECKING, Any, Callable

from daskflow.cache.locks import FileLockManager, IsolationLevel, LockManager, holder_id, isolation_of
from daskflow.engine.core.context import cache_home
from daskflow.engine.core.envelope import ChunkResult
from daskflow.engine.core.hooks import fire_commit_hooks
from daskflow.exceptions import MissingTransactionValue

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

__all__ = ["Transaction", "current_transaction", "transaction"]

_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("daskflow_txn", default=None)

PENDING, ACTIVE, COMMITTED, ROLLED_BACK = "PENDING", "ACTIVE", "COMMITTED", "ROLLED_BACK"
_NOT_SET = object()


def current_transaction() -> Transaction | None:
    """The innermost open ``transaction()`` block of this thread/task, if any."""
    return _current.get()


class Transaction:
    """A block of runs whose cache records commit atomically. Made by ``transaction()``."""

    def __init__(self, key: str | None = None, isolation_level: Any = None, lock_manager: Any = None) -> None:
        if key is not None and not isinstance(key, str):
            raise TypeError(f"transaction(key=...) must be a str or None, got {key!r}")
        level = isolation_of(isolation_level, "transaction()")
        if level is IsolationLevel.SERIALIZABLE and key is None:
            raise ValueError("transaction(isolation_level=SERIALIZABLE) needs a key: the lock is named by it")
        if lock_manager is not None and not isinstance(lock_manager, LockManager):
            raise TypeError(f"transaction(lock_manager=...) must be a daskflow LockManager (FileLockManager, "
                            f"DaskLockManager), got {lock_manager!r}")
        self.key = key
        self.isolation_level = level
        self.lock_manager = lock_manager
        self._lock: tuple[Any, str] | None = None  # (manager, holder) while the block holds its key's lock
        self._staged: list[tuple[str, Any]] = []  # (key, value) given to stage(), written at commit
        self.state = PENDING
        self.parent: Transaction | None = None
        self._children: list[Transaction] = []  # nested blocks that commit with this one
        self._values: dict[str, Any] = {}
        self._members: list[tuple[Task, Any]] = []  # (task, client Chunk | ChunkResult), in run order
        self._token: contextvars.Token | None = None
        self._settle_with: Callable[[list[Any]], None] = lambda chunks: None
        self._home: str | None = None

    @classmethod
    def committed_run(cls, key: str | None) -> Transaction:
        """The implicit transaction of one run outside any block (already committed)."""
        txn = cls(key)
        txn.state = COMMITTED
        return txn

    def __repr__(self) -> str:
        return f"Transaction(key={self.key!r}, state={self.state})"

    # -- user API -------------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        """Keep a value for the hooks of this transaction (and of the ones nested in it)."""
        self._values[name] = value

    def get(self, name: str, default: Any = _NOT_SET) -> Any:
        """A copy of a value set on this transaction or an enclosing one.

        As in Prefect the value is copied, so changing it changes nothing upward.

        Raises:
            MissingTransactionValue: (a ``ValueError``, as Prefect's, and a ``KeyError``) no transaction up the chain has ``name`` and no default was given.
        """
        txn: Transaction | None = self
        while txn is not None:
            if name in txn._values:
                return copy.deepcopy(txn._values[name])
            txn = txn.parent
        if default is _NOT_SET:
            raise MissingTransactionValue(
                f"Could not retrieve value for unknown key: {name} (transaction {self.key!r} and the ones "
                "enclosing it have none; pass a default to get() or set() it first)")
        return default

    def stage(self, value: Any) -> None:
        """Stage a value to commit under this transaction's key (Prefect's ``txn.stage``).

        It is written with the block's records when the outermost block commits, and read
        back by ``read()`` in any later block (any process of this daskflow home) with the key.
        """
        if self.key is None:
            raise ValueError("transaction.stage(value) needs a transaction with a key: the value is stored under it")
        self._staged.append((self.key, value))

    def read(self) -> Any:
        """The value committed under this transaction's key by ``stage()``; None if none was."""
        if self.key is None:
            return None
        for key, value in reversed(self._staged):
            if key == self.key:
                return value
        found = self._store().load_many([staged_key(self.key)])
        return found.get(0)

    def is_pending(self) -> bool:
        """True before the block is entered."""
        return self.state == PENDING

    def is_active(self) -> bool:
        """True inside the block (and for a nested block until its outermost block ends)."""
        return self.state == ACTIVE

    def is_rolled_back(self) -> bool:
        return self.state == ROLLED_BACK

    def is_committed(self) -> bool:
        """True once committed; with a key, also if a block with that key committed before."""
        if self.state == COMMITTED:
            return True
        if self.key is None:
            return False
        return self._store().is_committed(self.key)

    # -- engine API -----------------------------------------------------------------
    def track(self, chunks: list[Any], settle: Callable[[list[Any]], None]) -> None:
        """Runs submitted in the block: ``chunks`` have ``task`` and ``result`` (their envelope
        once known); ``settle(chunks)`` waits until every one has it (the client's fetch)."""
        for chunk in chunks:
            chunk.observe()  # the block reports its failures itself
            self._members.append((chunk.task, chunk))
        self._settle_with = settle

    def add_result(self, task: Task, res: ChunkResult) -> None:
        self._members.append((task, res))

    # -- the block ------------------------------------------------------------------
    def __enter__(self) -> Transaction:
        self.parent = _current.get()
        self._home = self.parent._home if self.parent is not None else cache_home()
        if self.isolation_level is IsolationLevel.SERIALIZABLE:
            # one block of this key at a time, in every process the lock manager reaches:
            # a block entered after another committed sees ``is_committed()``
            manager = (self.lock_manager or FileLockManager()).at_home(self._home)
            holder = holder_id(f"txn-{id(self)}")
            manager.acquire_lock(self.key, holder)
            self._lock = (manager, holder)
        self.state = ACTIVE
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            return self._exit(exc)
        finally:
            if self._lock is not None:
                manager, holder = self._lock
                self._lock = None
                manager.release(self.key, holder)

    def _exit(self, exc: BaseException | None) -> bool:
        _current.reset(self._token)  # type: ignore[arg-type]
        interrupted = exc is not None and not isinstance(exc, Exception)
        runs = self._runs(wait=not interrupted)
        failed = next(((res, i) for _, res, i in runs if res is not None and not res.ok(i)), None)
        if exc is None and failed is None:
            try:
                self._commit(runs)
                return False
            except Exception as commit_error:
                self._rollback(runs)
                raise commit_error
        self._rollback(runs)
        if exc is None and failed is not None:
            res, i = failed
            raise res.exception(i)
        return False

    def _runs(self, wait: bool) -> list[tuple[Task, ChunkResult | None, int]]:
        """Every run of the block in run order: (task, envelope or None if unknown, index)."""
        chunks = [m for _, m in self._members if not isinstance(m, ChunkResult)]
        if wait and chunks:
            self._settle_with(chunks)
        out: list = []
        for task, member in self._members:
            res = member
            if not isinstance(member, ChunkResult):
                res = member.result
                if res is None:
                    out.append((task, None, 0))
                    continue
            out.extend((task, res, i) for i in range(res.n))
        return out

    def _store(self) -> Any:
        from daskflow.cache.store import get_store

        return get_store(self._home or cache_home())

    def _commit(self, runs: list) -> None:
        if self.parent is not None:  # the enclosing block commits our runs with its own, or rolls them back
            self.parent._members.extend(self._members)
            self.parent._staged.extend(self._staged)
            self.parent._children.append(self)
            return
        records: list = []
        stored: dict[Any, list] = {}  # result storage -> its records (runs of tasks with result_storage)
        seen: set[int] = set()
        for _, res, _ in runs:
            if res is not None and id(res) not in seen:
                seen.add(id(res))
                storage = getattr(res, "cache_storage", None)
                (records if storage is None else stored.setdefault(storage, [])).extend(res.cache_records or ())
        if self._staged:
            records.extend(self._staged_records())
        # Storages first, then the local store in one LMDB transaction with the committed marker:
        # a block is committed (locally) only once every storage holds its records.
        from daskflow.cache.store import get_store

        for storage, items in stored.items():
            records.extend(get_store(self._home, storage).put_storage(items))
        if records or self.key is not None:
            self._store().put_many(records, txn_key=self.key)
        self._settle(COMMITTED)
        self._fire_all(runs, "on_commit")

    def _staged_records(self) -> list[tuple[bytes, bytes]]:
        from daskflow.cache import serialization as ser

        secret = self._store().secret
        return [(staged_key(key), ser.encode(value, "transaction", None, None, secret)) for key, value in self._staged]

    def _settle(self, state: str) -> None:
        self.state = state
        for child in self._children:
            child._settle(state)

    def _fire_all(self, runs: list, kind: str) -> None:
        """Each run's hooks get the run's own transaction, nested in this block (as in Prefect)."""
        for task, res, i in runs:
            if res is not None and res.ok(i) and getattr(task.options, kind):
                own = Transaction()
                own.parent, own._home, own.state = self, self._home, self.state
                fire_commit_hooks(task, kind, own)

    def _rollback(self, runs: list) -> None:
        self._settle(ROLLED_BACK)
        self._fire_all(runs[::-1], "on_rollback")


def staged_key(key: str) -> bytes:
    """Where a value given to ``stage()`` under a transaction key lives in the result store
    (shaped as a cache key, ``v1/transaction/{digest}``, so ``daskflow cache ls`` shows it)."""
    from daskflow.cache.keys import fingerprint

    return b"v1/transaction/" + fingerprint(key)


def transaction(key: str | None = None, isolation_level: Any = None, lock_manager: Any = None) -> Transaction:
    """A block whose runs' cache records are committed together, or not at all.

    Args:
        key: names the block; ``txn.is_committed()`` then tells whether a block with
            this key committed before (in any process using this daskflow home).
        isolation_level: ``IsolationLevel.SERIALIZABLE`` (or ``"SERIALIZABLE"``): one block
            of this key at a time; the block waits for the key's lock at entry and frees
            it after its commit or rollback (Prefect's semantics).
        lock_manager: where the lock lives: ``FileLockManager()`` (default; processes of
            one host) or ``daskflow.runners.locks.DaskLockManager()`` (every host of a cluster).

    Example:
        >>> with transaction() as txn:  # doctest: +SKIP
        ...     a = extract()
        ...     load(a)                 # if load fails, extract's result is not cached
    """
    return Transaction(key, isolation_level, lock_manager)
