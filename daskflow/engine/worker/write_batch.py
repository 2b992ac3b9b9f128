"""Cache writes of many managed runs in one store transaction, for callers that run them one by one.

A chunk of ``.map()`` runs writes its cache records in one LMDB transaction because
``run_rows`` sees the whole chunk. A caller that runs several single runs in a row
(a background chunk: runs with unrelated run ids) opens ``batched_cache_writes()``:
while it is open, each run's ``finish`` hands its records and its ``on_commit`` hooks
to the batch instead of writing, and the caller's ``flush()`` writes everything staged
so far (one transaction per store), then fires the hooks, in run order. A run's
records are written before its hooks fire, as without a batch; a caller that reports
runs as final only after ``flush()`` keeps "recorded final means cached".
"""

from __future__ import annotations

import contextvars
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from daskflow.cache.store import CacheWarning

__all__ = ["WriteBatch", "batched_cache_writes", "current_batch"]

_batch: contextvars.ContextVar[WriteBatch | None] = contextvars.ContextVar("daskflow_write_batch", default=None)


@dataclass
class StagedWrite:
    """The records one run staged for one store, and the name of its task (for warnings)."""

    task_name: str
    store: Any
    records: list[tuple[bytes, bytes]]


@dataclass
class WriteBatch:
    """Records and commit hooks staged by runs since the last ``take``; safe to share between threads."""

    writes: list[StagedWrite] = field(default_factory=list)
    hooks: list[Callable[[], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, task_name: str, store: Any, records: list[tuple[bytes, bytes]],
            hooks: Callable[[], None] | None) -> None:
        with self.lock:
            if records:
                self.writes.append(StagedWrite(task_name, store, records))
            if hooks is not None:
                self.hooks.append(hooks)

    def take(self) -> WriteBatch:
        """What was staged so far, as a batch of its own (this one starts empty)."""
        with self.lock:
            taken = WriteBatch(self.writes, self.hooks)
            self.writes, self.hooks = [], []
        return taken

    def flush(self) -> None:
        """Write what was staged (one transaction per store), then fire the commit hooks."""
        taken = self.take()
        by_store: dict[int, list[StagedWrite]] = {}
        for w in taken.writes:
            by_store.setdefault(id(w.store), []).append(w)
        for group in by_store.values():
            records = [r for w in group for r in w.records]
            try:
                group[0].store.put_many(records)
            except Exception as exc:  # the results stay valid; only the cache misses them
                names = sorted({w.task_name for w in group})
                warnings.warn(f"task {', '.join(map(repr, names))}: {len(records)} results could not be written "
                              f"to the cache: {type(exc).__name__}: {exc}", CacheWarning, stacklevel=2)
        for fire in taken.hooks:
            fire()


def current_batch() -> WriteBatch | None:
    """The open batch of this context, if any."""
    return _batch.get()


@contextmanager
def batched_cache_writes() -> Iterator[WriteBatch]:
    """Stage the cache writes of the managed runs inside; the caller flushes (also before leaving)."""
    batch = WriteBatch()
    token = _batch.set(batch)
    try:
        yield batch
    finally:
        _batch.reset(token)
        batch.flush()
