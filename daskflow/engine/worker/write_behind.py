"""Result storage writes left to the end of a flow run: chunks end without waiting for them.

A chunk of a task with a ``result_storage`` has records for the storage: a pack of cache
records, and a kept record (``engine.worker.keep``). Written chunk by chunk, that is two
object PUTs a chunk, which the chunk waits for before it ends; each costs milliseconds of
the storage's time and of this process's (signing, a connection, the HTTP exchange, on
fsspec's event loop thread, which shares the interpreter with the chunk's runs).

A chunk submitted by a flow run in the flow run's own process (``ChunkSpec.behind``)
writes its local store (the hot tier, the kept values in the home) as before, and hands
the storage's records here (``leave``): they join the records other chunks of the same
flow run left for the same storage, and are written together, as one pack per task
segment, when the flow run ends (it calls ``drain`` in every process its runner runs
chunks in), when ``FLUSH_BYTES`` are waiting, or ``FLUSH_SECONDS`` after the first of
them was left. So a flow run that returned has its records in the storage, and a flow
run of many chunks writes a few large packs instead of two small objects a chunk.

What this changes, and what not:

- The local store is written before the chunk ends: a process with that home finds the
  records at once. Another home sees them in the storage once written (at the latest
  when the flow run returns).
- A cache write the storage refuses (``StorageUnreachable``, ``on-storage-error: raise``)
  fails the flow run at its end with that error, naming the URL and the cause (the
  storage was reached when the chunk opened it: a missing bucket still fails the chunk).
  A kept record that cannot be written is a warning, as before.
- A process that dies with records waiting loses them from the storage: those runs are
  final all the same, and a run in another home computes them again (a miss, never a
  wrong value: a pack is put whole). The flow run says so in one warning.
- Records of ``BEHIND_BYTES`` or more, and any once the process holds ``BEHIND_BYTES``
  waiting, are written by the chunk and waited for, as before: large values are not
  held for the flow run's sake.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from daskflow.cache.store import CacheWarning
from daskflow.exceptions import StorageUnreachable

__all__ = ["BEHIND_BYTES", "FLUSH_BYTES", "FLUSH_SECONDS", "Write", "drain", "leave", "wait_now"]

BEHIND_BYTES = 64 << 20  # the most a process holds waiting or under way (records' bytes)
FLUSH_BYTES = 8 << 20  # a flow run's records for one storage written once this many wait
FLUSH_SECONDS = 1.0  # ... or this long after the first of them was left
_MAX_RUNS = 64  # flow runs with writes remembered here, past which those that ended well are forgotten


@dataclass(slots=True)
class Write:
    """Records for a result storage (an ``ObjectStorage``) whose local tier is written already.
    ``strict``: a refusal is the flow run's error (cache records); else a warning (kept values)."""

    storage: Any
    items: list[tuple[bytes, bytes]]
    task_name: str
    strict: bool

    @property
    def nbytes(self) -> int:
        return sum(len(r) for _, r in self.items)


@dataclass(slots=True)
class _Waiting:
    """Records of one flow run for one storage, left by its chunks and not written yet."""

    storage: Any
    strict: bool
    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    nbytes: int = 0


_lock = threading.Lock()
_waiting: dict[tuple[str, int, bool], _Waiting] = {}  # (flow run id, id(storage), strict) -> records
_left: dict[str, list[concurrent.futures.Future]] = {}  # flow run id -> its writes under way
_timers: dict[str, threading.Timer] = {}
_bytes = 0  # waiting or under way, in this process
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def leave(flow_run_id: str, writes: list[Write], more: bool = True) -> bool:
    """Leave ``writes`` to be written with the flow run's other records; False (nothing done)
    when they are too large to hold: the caller writes them (``wait_now``). ``more``: other
    chunks wait to run here (else what waits is written now: the process has time for it)."""
    global _bytes
    sizes = [w.nbytes for w in writes]
    with _lock:
        if sum(sizes) >= BEHIND_BYTES or _bytes + sum(sizes) > BEHIND_BYTES:
            return False
        _bytes += sum(sizes)
        for write, nbytes in zip(writes, sizes):
            key = (flow_run_id, id(write.storage), write.strict)
            waiting = _waiting.get(key)
            if waiting is None:
                waiting = _waiting[key] = _Waiting(write.storage, write.strict)
            waiting.items.extend(write.items)
            waiting.names.add(write.task_name)
            waiting.nbytes += nbytes
            if waiting.nbytes >= FLUSH_BYTES or not more:
                _start(flow_run_id, _waiting.pop(key))
        if flow_run_id not in _timers and any(k[0] == flow_run_id for k in _waiting):
            timer = _timers[flow_run_id] = threading.Timer(FLUSH_SECONDS, _flush, (flow_run_id,))
            timer.daemon = True
            timer.start()
    return True


def drain(flow_run_id: str) -> list[str]:
    """Write what the flow run left here and wait until its writes have ended; the messages of
    cache writes the storage refused (empty: every record is in its storage)."""
    _flush(flow_run_id)
    with _lock:
        futures = _left.pop(flow_run_id, [])
    return [message for future in futures for message in future.result()]


def wait_now(writes: list[Write]) -> None:
    """Write ``writes`` here and wait (all PUTs under way at once); the first refusal of a
    strict write raises ``StorageUnreachable``, after the others ended."""
    started = [(w, _started(w.storage, w.items)) for w in writes]
    failed = [exc for w, pending in started if (exc := _ended(w.storage, w.strict, {w.task_name}, pending))]
    if failed:
        raise failed[0]


def _flush(flow_run_id: str) -> None:
    """Start writing what the flow run left here (its timer, or its drain)."""
    with _lock:
        timer = _timers.pop(flow_run_id, None)
        if timer is not None:
            timer.cancel()
        for key in [k for k in _waiting if k[0] == flow_run_id]:
            _start(flow_run_id, _waiting.pop(key))


def _start(flow_run_id: str, waiting: _Waiting) -> None:
    """Start the PUTs of ``waiting`` (one pack per task segment); this process's writing
    thread waits for them. Called under ``_lock``."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskflow-storage-writes")
        atexit.register(_write_at_exit)
    pending = _started(waiting.storage, waiting.items)
    _left.setdefault(flow_run_id, []).append(_pool.submit(_end, waiting, pending))
    if len(_left) > _MAX_RUNS:  # flow runs that never drained here (their client died): forget those that ended well
        for run in [r for r, fs in _left.items() if all(f.done() and not f.result() for f in fs)]:
            del _left[run]


def _started(storage: Any, items: list[tuple[bytes, bytes]]) -> Any:
    """The storage's write of ``items`` under way, or the exception that refused it at once."""
    try:
        return storage.start_put(items)
    except Exception as exc:  # noqa: BLE001 - ended (raised or warned) by ``_ended``
        return exc


def _end(waiting: _Waiting, pending: Any) -> list[str]:
    global _bytes
    try:
        failed = _ended(waiting.storage, waiting.strict, waiting.names, pending)
        return [str(failed)] if failed is not None else []
    finally:
        with _lock:
            _bytes -= waiting.nbytes


def _ended(storage: Any, strict: bool, names: set[str], pending: Any) -> StorageUnreachable | None:
    """Wait for a write; a strict write's ``StorageUnreachable`` is returned, any other failure
    is a warning (the runs are final: only the storage misses those records)."""
    try:
        if isinstance(pending, BaseException):
            raise pending
        pending.wait()
    except StorageUnreachable as exc:
        if strict:
            return exc
        _warn(storage, names, exc)
    except Exception as exc:  # noqa: BLE001
        _warn(storage, names, exc)
    return None


def _warn(storage: Any, names: set[str], exc: BaseException) -> None:
    tasks = ", ".join(repr(n) for n in sorted(names))
    warnings.warn(f"task {tasks}: results could not be written to result storage {storage.spec.url} "
                  f"({type(exc).__name__}: {exc}); they are cached here only", CacheWarning, stacklevel=3)


def _write_at_exit() -> None:
    """A process that exits writes what waits (its writing thread has stopped taking work)."""
    with _lock:
        waiting = list(_waiting.values())
        _waiting.clear()
    for w in waiting:
        _ended(w.storage, False, w.names, _started(w.storage, w.items))
