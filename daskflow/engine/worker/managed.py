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

import asyncio
import time
import warnings
from array import array
from typing import TYPE_CHECKING, Any

from daskflow.cache import serialization as ser
from daskflow.cache.keys import KeyPlan, NotConcrete, Unhashable
from daskflow.cache.store import CacheWarning, get_store
from daskflow.codes import CACHED, COMPLETED, FAILED, NOT_READY, OK_CODES
from daskflow.engine.core import states as st
from daskflow.engine.core.context import cache_home_var, cache_token_var
from daskflow.engine.core.envelope import ChunkResult, Unpicklable
from daskflow.engine.core.hooks import fire_commit_hooks
from daskflow.engine.core.inputs import UpstreamNotCompleted, resolve
from daskflow.engine.core.returned_states import settle_returned_states
from daskflow.engine.worker import run as R
from daskflow.engine.worker.cache_spec import CacheSpec, ReturnedCache, new_spec, run_txn, warn_unhashable
from daskflow.engine.worker.transactions import current_transaction
from daskflow.engine.worker.write_batch import current_batch
from daskflow.ids import run_id

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.core.context import TaskRunContext




def run_managed(task: Task, rows: Any, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
                spec: CacheSpec | None, notes: Any = None, first: int = 0) -> None:
    """Run a chunk of a managed task: lookups, runs, one write, commit hooks.

    ``first``: runs before it were restored from an earlier attempt's checkpoints (``rows``
    starts there); they are written to the cache with the others. ``notes``: checkpoints.
    """
    chunk = _Managed(task, res, ctx, deps, spec)
    chunk.first, chunk.notes = first, notes
    token = cache_home_var.set(chunk.spec.home) if chunk.spec.home else None
    remote = cache_token_var.set(chunk.spec.token) if chunk.remote else None
    try:
        _run_chunk(chunk, task, rows, ctx, deps)
    finally:
        if token is not None:
            cache_home_var.reset(token)
        if remote is not None:
            cache_token_var.reset(remote)
    chunk.write_restored()
    chunk.finish()


def _run_chunk(chunk: _Managed, task: Task, rows: Any, ctx: TaskRunContext, deps: list | None) -> None:
    if deps is None and task.plain:
        chunk.run_plain(rows)
        return
    for i, row in chunk.prepare(rows):
        args = chunk.start(i, row)
        if args is not None:
            engine = R.attempts(task, ctx, *args)
            if task.is_async:
                outcome = asyncio.run(R.drive_async(engine, task, *args))
            else:
                outcome = R.drive_sync(engine, task, *args)
            chunk.done(i, outcome)


async def arun_managed(task: Task, res: ChunkResult, ctx: TaskRunContext, row: tuple, deps: list | None) -> None:
    """``run_managed`` for one awaited run of an async task in the caller's event loop."""
    chunk = _Managed(task, res, ctx, deps, None)
    for i, row in chunk.prepare([row]):
        args = chunk.start(i, row)
        if args is not None:
            chunk.done(i, await R.drive_async(R.attempts(task, ctx, *args), task, *args))
    chunk.finish()


class _Managed:
    """One chunk's cache work: ``prepare`` (resolve, keys, one read), per run ``start``/``done``,
    ``finish`` (one write, or staging in a transaction block; commit hooks)."""

    def __init__(self, task: Task, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
                 spec: CacheSpec | None) -> None:
        self.local = spec is None
        self.spec = spec if spec is not None else new_spec(task)
        self.task, self.res, self.ctx, self.deps = task, res, ctx, deps
        self.ends = res.ends if len(res.ends) == res.n else array("d", bytes(8 * res.n))  # restored runs
        self.keys: list = [None] * res.n
        self.hits: dict[int, Any] = {}
        self.store: Any = None
        self.staged: list[tuple[bytes, bytes]] = []
        # a worker that does not see the submitter's store: fresh results go back in the envelope
        self.remote = self.spec.plan is not None and not self.spec.reachable()
        self.fresh: list[int] = []
        self.first = 0  # runs before it were restored from checkpoints
        self.notes: Any = None  # engine.run.Notes on a Dask worker

    def prepare(self, rows: Any) -> list[tuple[int, tuple]]:
        items: list[tuple[int, tuple]] = []
        for i, row in enumerate(rows, self.first):
            if self.deps is not None:
                try:
                    row = resolve(row, self.deps)
                except UpstreamNotCompleted as exc:
                    self.res.record(i, (NOT_READY, exc.message, None), 1)
                    self.ends[i] = time.time()
                    continue
            items.append((i, row))
        spec = self.spec
        if spec.plan is not None:
            if not self.remote:
                self.store = get_store(spec.home)  # type: ignore[arg-type]
            if spec.keys is not None:
                self.keys = spec.keys
            else:
                self.keys = _worker_keys(self.task, spec.plan, items, self.ctx, self.keys)
            if spec.lookup and not self.remote:
                found = self.store.load_many([self.keys[i] for i, _ in items])
                self.hits = {items[pos][0]: value for pos, value in found.items()}
        return items

    def run_plain(self, rows: Any) -> None:
        """The chunk of a task that only caches (see ``_plain``): a tight loop like the
        engine's fast path, then every result encoded in one batch."""
        items = self.prepare(rows)
        fn, res, ctx, hits, ends, keys = self.task.fn, self.res, self.ctx, self.hits, self.ends, self.keys
        values, codes, clock = res.values, res.codes, time.time
        fresh: list[int] = []
        due = self.notes.due if self.notes is not None else float("inf")
        for i, row in items:
            ctx.index = i
            if i in hits:
                values[i] = hits[i]  # type: ignore[index]
                codes[i] = CACHED
                ends[i] = clock()
                continue
            try:
                values[i] = fn(*row)  # type: ignore[index]
            except Exception as exc:
                res.fail(i, FAILED, exc)
                ends[i] = clock()
                continue
            now = ends[i] = clock()
            if keys[i] is not None:
                fresh.append(i)
            if now >= due:
                self.notes.reached(i, now, ends)
                due = self.notes.due
        if st.State in {*map(type, values)}:  # type: ignore[arg-type]  # bodies that returned a State
            settle_returned_states(res)
            fresh = [i for i in fresh if codes[i] in OK_CODES]
        if not fresh or self.spec.plan is None:
            return
        if self.remote:
            self.fresh = fresh
            return
        spec = self.spec
        expires = time.time() + spec.expires_in if spec.expires_in is not None else None
        records = ser.encode_many([values[i] for i in fresh], self.task.task_key, expires,  # type: ignore[index]
                                  spec.serializer, self.store.secret)
        bad = 0
        for i, record in zip(fresh, records):
            if record is None:
                bad += 1
            else:
                self.staged.append((keys[i], record))
        if bad:
            i = next(i for i, r in zip(fresh, records) if r is None)
            try:
                ser.encode(values[i], self.task.task_key, expires, spec.serializer, self.store.secret)  # type: ignore[index]
                why = "unknown error"
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
            more = f" (and {bad - 1} more)" if bad > 1 else ""
            warnings.warn(f"task {self.task.name!r}: the result of run {self.task.name}-{ctx.start + i} cannot be "
                          f"serialized for the cache ({why}){more}; it is not cached", CacheWarning, stacklevel=3)

    def start(self, i: int, row: tuple) -> tuple[tuple, dict] | None:
        """``(args, kwargs)`` of a run to execute; None when it ended here (hit, bad input)."""
        ctx = self.ctx
        ctx.index, ctx.run_count, ctx.name, ctx.final_state = i, 1, "", None
        try:
            args, kwargs = R.run_inputs(self.task, ctx, row, None)
        except R.EndsEarly as early:
            self.res.record(i, early.outcome, 1)
            self.ends[i] = time.time()
            return None
        if i not in self.hits:
            return args, kwargs
        value = self.hits[i]
        self.res.record(i, (CACHED, value, None), 1)
        if self.task.options.on_completion:
            state = st.State(st.StateType.COMPLETED, "Cached", data=value, task_run_id=(ctx.base, ctx.start + i))
            self.res.keep(i, state)
            self.task.fire_hook("on_completion", ctx, args, kwargs, state)
        self.ends[i] = time.time()
        return None

    def done(self, i: int, outcome: tuple[int, Any, list | None]) -> None:
        self.res.record(i, outcome, self.ctx.run_count, self.ctx.name)
        self.res.keep(i, self.ctx.final_state)
        if outcome[0] == COMPLETED and self.keys[i] is not None and self.remote:
            self.fresh.append(i)
        elif outcome[0] == COMPLETED and self.keys[i] is not None:
            record = _encode(self.task, self.spec, self.store, outcome[1], self.ctx)
            if record is not None:
                self.staged.append((self.keys[i], record))
        now = self.ends[i] = time.time()
        if self.notes is not None and now >= self.notes.due:
            self.notes.reached(i, now, self.ends)

    def write_restored(self) -> None:
        """Cache the runs restored from checkpoints: their attempt died before its write."""
        from daskflow.engine.worker.run import OK_CODES

        for i in range(self.first):
            if self.res.codes[i] in OK_CODES and self.keys[i] is not None:
                if self.remote:
                    self.fresh.append(i)
                elif self.store is not None:
                    record = _encode(self.task, self.spec, self.store, self.res.values[i], self.ctx)  # type: ignore[index]
                    if record is not None:
                        self.staged.append((self.keys[i], record))

    def finish(self) -> None:
        task, res, staged = self.task, self.res, self.staged
        res.ends = self.ends
        if self.fresh:
            spec = self.spec
            res.cache_returned = ReturnedCache(spec.home, task.task_key, self.fresh,  # type: ignore[arg-type]
                                               [self.keys[i] for i in self.fresh], spec.stage,
                                               spec.expires_in, spec.serializer)
        if self.spec.stage:
            res.cache_records = staged
            if self.local:
                txn = current_transaction()
                if txn is not None:
                    txn.add_result(task, res)
            return
        batch = current_batch()
        if batch is not None:  # a caller running single runs in a row writes them together
            batch.add(task.name, self.store, staged, self.fire_commits if task.options.on_commit else None)
            return
        if staged:
            try:
                self.store.put_many(staged)
            except Exception as exc:  # the results stay valid; only the cache misses them
                warnings.warn(f"task {task.name!r}: {len(staged)} results could not be written to the cache: "
                              f"{type(exc).__name__}: {exc}", CacheWarning, stacklevel=3)
        if task.options.on_commit:
            self.fire_commits()

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
