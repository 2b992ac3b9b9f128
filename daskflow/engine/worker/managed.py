"""The cache around runs on the worker (and inline calls): lookups, batched writes, commit hooks.

Only *managed* tasks come here (a cache, or ``on_commit``/``on_rollback`` hooks); every
other task keeps the engine's fast path and pays nothing. The client has looked up what
it could before submission (``engine.client.cache_lookup``); here a chunk resolves its
inputs, computes the missing keys with the same ``KeyPlan``, reads them in one read, runs
the misses through the run lifecycle, then writes the whole chunk in one transaction.
Inside a ``transaction()`` block nothing is written: the signed records travel back in the
envelope and the block commits them at exit.

A worker that does not see the submitter's store (``CacheSpec.reachable``) never opens an
LMDB store at the client's path: it returns the keys of its fresh results in the envelope
(``ReturnedCache``) and the client writes them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from array import array
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from daskflow.cache import segments
from daskflow.cache import serialization as ser
from daskflow.cache.keys import KeyPlan, NotConcrete, Unhashable, display
from daskflow.cache.locks import FileLockManager, holder_id
from daskflow.exceptions import StorageUnreachable
from daskflow.cache.store import CacheWarning
from daskflow.codes import CACHED, COMPLETED, NOT_READY, OK_CODES
from daskflow.engine.core import states as st
from daskflow.engine.core.context import cache_home_var, cache_token_var
from daskflow.engine.core.envelope import ChunkResult, Unpicklable, inline_bytes, measure
from daskflow.engine.core.hooks import fire_commit_hooks
from daskflow.engine.core.inputs import UpstreamNotCompleted, resolve
from daskflow.engine.worker.cache_spec import CacheSpec, ReturnedCache, new_spec, run_txn, warn_unhashable
from daskflow.engine.worker.keep import REF_BYTES, CacheRefs
from daskflow.engine.worker.logging import get_run_logger
from daskflow.engine.worker.transactions import current_transaction
from daskflow.engine.worker.write_batch import current_batch
from daskflow.engine.worker.write_behind import Write
from daskflow.ids import run_id

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.core.context import TaskRunContext
    from daskflow.engine.worker.lifecycle import Outcome

logger = logging.getLogger("daskflow")



class NoCache:
    """The cache work of a task with nothing to manage: every step passes its runs through."""

    resolved = False  # upstream values are resolved run by run, in ``run_inputs``

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare(self, items: Iterable[tuple[int, tuple]], ends: array) -> Iterable[tuple[int, tuple]]:
        return items

    def fill_hits(self, items: Iterable[tuple[int, tuple]], ends: array) -> Iterable[tuple[int, tuple]]:
        return items

    def hit(self, ctx: TaskRunContext, args: tuple, kwargs: dict) -> Outcome | None:
        return None

    def done(self, i: int, outcome: Outcome) -> None:
        pass

    def stage_fresh(self, items: Iterable[tuple[int, tuple]]) -> None:
        pass

    def finish(self, first: int) -> None:
        pass

    def settle(self) -> None:
        pass

    def leave_to(self, writes: list[Write]) -> None:
        pass


NO_CACHE = NoCache()


def cache_work(task: Task, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
               spec: CacheSpec | None) -> CacheWork:
    """The cache work of one chunk of a managed task (``spec`` None: an inline call, made here)."""
    if task.serializable:
        return SerializableCacheWork(task, res, ctx, deps, spec)
    return CacheWork(task, res, ctx, deps, spec)


class CacheWork(NoCache):
    """One chunk's cache work, around the run loop: ``prepare`` (resolve, keys, one read),
    ``fill_hits``/``hit`` (runs the cache had), ``done``/``stage_fresh`` (fresh results to
    write), ``finish`` (one write, or staging in a transaction block; commit hooks)."""

    resolved = True  # ``prepare`` resolves upstream values for the whole chunk
    defer_write = True  # ``finish`` starts the chunk's write, ``settle`` (after keep_chunk) ends it
    pending: Any = None  # that write, under way
    writes: list[Write] | None = None  # given (``leave_to``): the storage's share of the write goes there

    def __init__(self, task: Task, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
                 spec: CacheSpec | None) -> None:
        self.local = spec is None
        self.spec = spec if spec is not None else new_spec(task)
        self.task, self.res, self.ctx, self.deps = task, res, ctx, deps
        self.keys: list = [None] * res.n
        self.hits: dict[int, Any] = {}
        self.staged: list[tuple[bytes, bytes]] = []
        # a worker that reaches neither the submitter's store nor a result storage: fresh results
        # go back in the envelope
        self.store = self.spec.store()
        self.remote = self.spec.plan is not None and self.store is None
        self.fresh: list[int] = []

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Runs the chunk calls inline or submits use the submitter's cache home (and token)."""
        token = cache_home_var.set(self.spec.home) if self.spec.home else None
        remote = cache_token_var.set(self.spec.token) if self.remote else None
        try:
            yield
        finally:
            if token is not None:
                cache_home_var.reset(token)
            if remote is not None:
                cache_token_var.reset(remote)

    def prepare(self, items: Iterable[tuple[int, tuple]], ends: array) -> list[tuple[int, tuple]]:
        """The runs that can start, upstream values resolved; their keys, read in one go."""
        ready: list[tuple[int, tuple]] = []
        for i, row in items:
            if self.deps is not None:
                try:
                    row = resolve(row, self.deps)
                except UpstreamNotCompleted as exc:
                    self.res.record(i, (NOT_READY, exc.message, None), 1)
                    ends[i] = time.time()
                    continue
            ready.append((i, row))
        spec = self.spec
        if spec.plan is not None:
            if spec.keys is not None:
                self.keys = spec.keys
            else:
                self.keys = _worker_keys(self.task, spec.plan, ready, self.ctx, self.keys)
            if spec.lookup and not self.remote:
                found = self.store.load_many([self.keys[i] for i, _ in ready])
                self.hits = {ready[pos][0]: value for pos, value in found.items()}
        return ready

    def fill_hits(self, items: Iterable[tuple[int, tuple]], ends: array) -> list[tuple[int, tuple]]:
        """Record the runs the cache had (for the tight loop); the others, to run."""
        hits = self.hits
        if not hits:
            return list(items)
        values, codes, clock = self.res.values, self.res.codes, time.time
        misses = []
        for i, row in items:
            if i in hits:
                values[i] = hits[i]  # type: ignore[index]
                codes[i] = CACHED
                ends[i] = clock()
            else:
                misses.append((i, row))
        return misses

    def hit(self, ctx: TaskRunContext, args: tuple, kwargs: dict) -> Outcome | None:
        """A run the cache had ends ``Cached`` here (its ``on_completion`` hooks fire)."""
        i = ctx.index
        if i not in self.hits:
            return None
        value = self.hits[i]
        if self.task.options.on_completion:
            ctx.final_state = st.State(st.StateType.COMPLETED, "Cached", data=value,
                                       task_run_id=(ctx.base, ctx.start + i))
            self.task.fire_hook("on_completion", ctx, args, kwargs, ctx.final_state)
        return CACHED, value, None

    def done(self, i: int, outcome: Outcome) -> None:
        """A run of the lifecycle loop ended: a fresh result is staged for the write."""
        if outcome[0] != COMPLETED or self.keys[i] is None:
            return
        if self.remote:
            self.fresh.append(i)
        else:
            record = _encode(self.task, self.spec, self.store, outcome[1], self.ctx)
            if record is not None:
                self.staged.append((self.keys[i], record))

    def stage_fresh(self, items: Iterable[tuple[int, tuple]]) -> None:
        """After the tight loop: every fresh result of ``items`` encoded in one batch."""
        res, keys = self.res, self.keys
        fresh = [i for i, _ in items if keys[i] is not None and res.codes[i] in OK_CODES]
        if not fresh or self.spec.plan is None:
            return
        if self.remote:
            self.fresh = fresh
            return
        spec, values = self.spec, res.values
        expires = time.time() + spec.expires_in if spec.expires_in is not None else None
        records = ser.encode_many([values[i] for i in fresh], self.task.task_key, expires,  # type: ignore[index]
                                  spec.serializer, self.store.secret)
        bad = [i for i, record in zip(fresh, records) if record is None]
        self.staged.extend((keys[i], record) for i, record in zip(fresh, records) if record is not None)
        if getattr(self.store, "segmented", False) and len(fresh) >= segments.MIN_KEYS:
            written = {i: record for i, record in zip(fresh, records) if record is not None}
            self.staged.extend(segments.build(keys, written, self.store.secret))
        if bad:
            self._warn_unserializable(bad, expires)

    def _warn_unserializable(self, bad: list[int], expires: float | None) -> None:
        i = bad[0]
        try:
            ser.encode(self.res.values[i], self.task.task_key, expires, self.spec.serializer,  # type: ignore[index]
                       self.store.secret)
            why = "unknown error"
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        warnings.warn(f"task {self.task.name!r}: the result of run {self.task.name}-{self.ctx.start + i} cannot be "
                      f"serialized for the cache ({why}){more}; it is not cached", CacheWarning, stacklevel=4)

    def finish(self, first: int) -> None:
        """One write for the chunk (runs restored from checkpoints included), or staging."""
        self._stage_restored(first)
        task, res, staged = self.task, self.res, self.staged
        if self.fresh and measure([res.values[i] for i in self.fresh]) > inline_bytes():  # type: ignore[index]
            self._not_returned()
        if self.fresh:
            spec = self.spec
            res.cache_returned = ReturnedCache(spec.home, task.task_key, self.fresh,  # type: ignore[arg-type]
                                               [self.keys[i] for i in self.fresh], spec.stage,
                                               spec.expires_in, spec.serializer)
        if self.spec.stage:
            res.cache_records = staged
            res.cache_storage = self.spec.storage if staged else None
            if self.local:
                txn = current_transaction()
                if txn is not None:
                    txn.add_result(task, res)
            return
        batch = current_batch()
        if batch is not None:  # a caller running single runs in a row writes them together
            batch.add(task.name, self.store, staged, self.fire_commits if task.options.on_commit else None)
            return
        res.cache_refs = self._refs()
        if staged:
            if self.defer_write and not task.options.on_commit:
                if self.writes is not None and hasattr(self.store, "put_hot"):  # ended by the chunk's caller
                    self._guarded(lambda: self.store.put_hot(staged))
                    self.writes.append(Write(self.store.storage, staged, task.name, True))
                    return
                self.pending = self._guarded(lambda: self.store.start_many(staged))  # ended by ``settle``
                return
            self._guarded(lambda: self.store.put_many(staged))
        if task.options.on_commit:
            self.fire_commits()

    def _refs(self) -> CacheRefs | None:
        """The runs whose value this chunk's cache holds (hits, and fresh records of ``REF_BYTES``
        or more that its write carries): the kept values refer to them instead of copying them."""
        res, keys, hits, spec = self.res, self.keys, self.hits, self.spec
        if self.remote or self.store is None or spec.plan is None:
            return None
        if hits and len(hits) == res.n:  # a rerun's chunk: every value came from the cache
            return CacheRefs(spec.home, spec.storage, None, keys)
        big = [k for k, r in self.staged if len(r) >= REF_BYTES]
        if not big and not hits:
            return None
        where = {k: i for i, k in enumerate(keys) if k is not None} if big else {}
        positions = sorted({*hits, *(where[k] for k in big if k in where)})
        return CacheRefs(spec.home, spec.storage, positions, [keys[i] for i in positions])

    def leave_to(self, writes: list[Write]) -> None:
        """The storage's share of the chunk's write goes to ``writes``, for the chunk's caller to
        write (``engine.worker.write_behind``); the local store is written by ``finish``."""
        self.writes = writes

    def settle(self) -> None:
        """End the chunk's write that ``finish`` started: a result storage's PUT ran meanwhile,
        beside the kept values' write (``keep_chunk``), instead of before it."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._guarded(pending.wait)

    def _guarded(self, write: Callable[[], Any]) -> Any:
        """``write()``: an unusable result storage raises (or warns, configured so); another
        failure is a warning (the results stay valid, only the cache misses them)."""
        try:
            return write()
        except StorageUnreachable:
            raise
        except Exception as exc:
            warnings.warn(f"task {self.task.name!r}: {len(self.staged)} results could not be written to the cache: "
                          f"{type(exc).__name__}: {exc}", CacheWarning, stacklevel=4)
            return None

    def _not_returned(self) -> None:
        """Fresh results too large to ship back to a store this worker cannot reach: they are not
        cached, and the runs' logs say so (no silent miss)."""
        ctx, index, fresh = self.ctx, self.ctx.index, self.fresh
        ctx.index = fresh[0]
        try:
            get_run_logger().warning(
                "%d result(s) of task %r not cached: this worker does not reach the daskflow home "
                "of the process that submitted them (another host, no shared filesystem), and they are "
                "over daskflow.results.inline-bytes, so they stay on the workers instead of travelling "
                "to it. Give the workers a shared DASKFLOW_HOME to cache them.", len(fresh), self.task.name)
        finally:
            ctx.index = index
        self.fresh = []

    def _stage_restored(self, first: int) -> None:
        """Cache the runs restored from checkpoints: their attempt died before its write."""
        for i in range(first):
            if self.res.codes[i] in OK_CODES and self.keys[i] is not None:
                if self.remote:
                    self.fresh.append(i)
                elif self.store is not None:
                    record = _encode(self.task, self.spec, self.store, self.res.values[i], self.ctx)  # type: ignore[index]
                    if record is not None:
                        self.staged.append((self.keys[i], record))

    def fire_commits(self) -> None:
        task, res = self.task, self.res
        for i in range(res.n):
            if res.codes[i] in OK_CODES:
                fire_commit_hooks(task, "on_commit", run_txn(self.keys[i]))


def _worker_keys(task: Task, plan: KeyPlan, items: list, ctx: TaskRunContext, keys: list) -> list:
    warned = False
    for i, row in items:
        if any(type(v) is Unpicklable for v in row):
            continue  # the run fails anyway
        try:
            keys[i] = plan.key(task, row, lambda i=i: _run_id(ctx, i))
        except Unhashable as exc:
            if not warned:
                warn_unhashable(task, exc)
                warned = True
        except NotConcrete as exc:
            if not warned:
                warn_unhashable(task, Unhashable(f"a {exc}", None))
                warned = True
    return keys


def _run_id(ctx: TaskRunContext, i: int) -> str:
    return run_id(ctx.base, ctx.start + i)


def _encode(task: Task, spec: CacheSpec, store: Any, value: Any, ctx: TaskRunContext) -> bytes | None:
    expires = time.time() + spec.expires_in if spec.expires_in is not None else None
    try:
        return ser.encode(value, task.task_key, expires, spec.serializer, store.secret)
    except Exception as exc:
        warnings.warn(f"task {task.name!r}: the result of run {task.name}-{ctx.start + ctx.index} cannot be "
                      f"serialized for the cache ({type(exc).__name__}: {exc}); it is not cached",
                      CacheWarning, stacklevel=2)
        return None


class SerializableCacheWork(CacheWork):
    """The cache work of a task whose policy is ``SERIALIZABLE``: one lock per cache key.

    A run the chunk's read missed takes the lock of its key (``hit``), reads the key again
    (another process may have committed it while we waited: then it ends ``Cached``), runs,
    and writes its entry before it frees the lock (``done``). The lock manager is the
    policy's (default: a ``FileLockManager`` at the cache's home). Runs in a
    ``transaction()`` block (staged, not written) and runs on a worker that does not see
    the store take no lock: the block's own ``isolation_level`` is the way there.
    """

    defer_write = False  # a lock is freed only after its entry is written (``finish`` waits)

    def __init__(self, task: Task, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
                 spec: CacheSpec | None) -> None:
        super().__init__(task, res, ctx, deps, spec)
        manager = task.options.cache_policy.lock_manager or FileLockManager()
        self.locks = manager.at_home(self.spec.home) if self.spec.home else manager
        self.held: dict[int, tuple[str, str]] = {}  # run index -> (lock name, holder)

    def hit(self, ctx: TaskRunContext, args: tuple, kwargs: dict) -> Outcome | None:
        found = super().hit(ctx, args, kwargs)
        i = ctx.index
        key = self.keys[i]
        if found is not None or key is None or self.remote or self.spec.stage or self.store is None:
            return found
        name, holder = display(key), holder_id(ctx.task_run_id)
        self.locks.acquire_lock(name, holder)
        self.held[i] = (name, holder)
        if not self.task.options.refresh_cache:  # even when the client knew it missed: that was before the lock
            again = self.store.load_many([key])
            if again:  # committed while we waited: read it, run nothing
                self._free(i)
                self.hits[i] = again[0]
                return super().hit(ctx, args, kwargs)
        return None

    def done(self, i: int, outcome: Outcome) -> None:
        n = len(self.staged)
        super().done(i, outcome)
        if i not in self.held:
            return
        try:
            fresh, self.staged[n:] = self.staged[n:], []
            if fresh:
                self.store.put_many(fresh)  # committed before the lock is freed
        finally:
            self._free(i)

    def finish(self, first: int) -> None:
        try:
            super().finish(first)
        finally:
            for i in list(self.held):  # a run that never reached ``done`` (the chunk failed)
                self._free(i)

    def _free(self, i: int) -> None:
        name, holder = self.held.pop(i)
        try:
            self.locks.release(name, holder)
        except Exception:  # the lease frees it in time
            logger.warning("could not free the lock %r; its lease will", name, exc_info=True)
