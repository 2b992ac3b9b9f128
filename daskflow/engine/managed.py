"""The cache around runs: lookups on the client or the worker, batched writes, commit hooks.

Only *managed* tasks come here (a cache, or ``on_commit``/``on_rollback`` hooks); every
other task keeps the engine's fast path and pays nothing.

- **Client, before submission** (``for_map``/``for_single``): when every input is
  concrete (no futures) the client computes all keys of the submission and reads them
  in one LMDB transaction. Hits become chunks whose envelope is already known (no Dask
  work at all); the rest are submitted with their keys, so workers do not recompute
  them. Inputs holding futures leave the lookup to the worker.
- **Worker** (``run_managed``, also inline calls): resolve inputs, compute the missing
  keys with the same ``KeyPlan``, one read for the chunk, run the misses through the
  engine's lifecycle, then one write transaction for the whole chunk. Inside a
  ``transaction()`` block nothing is written: the signed records travel back in the
  envelope and the block commits them at exit.

Workers of the session cluster do not see the client's later environment changes, so
the client ships the daskflow home in the ``CacheSpec``.

**Workers that do not see the client's store** (other hosts, no shared filesystem).
The client ships a token with the home (``cache.store.store_token``); a worker that
does not find it there, or may not write there, is *remote* (``reaches_store``) and
never opens an LMDB store at the client's path. A remote chunk runs what it was given
and returns the keys of its fresh results in the envelope (``ReturnedCache``); the
client, when it fetches envelopes, signs those results with its own secret and writes
them in one LMDB transaction per fetched batch (``write_returned``), or, inside a
``transaction()`` block, hands them to the block, which commits them at exit. Lookups
for concrete inputs already happen on the client; a remote worker cannot look up runs
whose inputs are futures, so those execute (and are written back) unless the client
holds every upstream envelope at submission, in which case the client looks them up too.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import warnings
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daskflow import config
from daskflow.cache import serialization as ser
from daskflow.cache.keys import KeyColumn, KeyFnFailed, KeyPlan, NotConcrete, Unhashable, display, make_plan
from daskflow.cache.store import CacheWarning, get_store, reaches_store, store_token
from daskflow.codes import CACHED, COMPLETED, FAILED, NOT_READY, OK_CODES
from daskflow.engine import run as R
from daskflow.engine import states as st
from daskflow.engine.chunks import Chunk
from daskflow.engine.context import current_flow_run_id, flow_run_ctx
from daskflow.engine.hooks import call_hooks
from daskflow.engine.returned_states import settle_returned_states
from daskflow.engine.inputs import BROADCAST, MAPPED, Column, UpstreamNotCompleted, quote, resolve
from daskflow.engine.envelope import ChunkResult, Unpicklable
from daskflow.engine.transactions import Transaction, current_transaction
from daskflow.engine.write_batch import current_batch
from daskflow.ids import run_id

if TYPE_CHECKING:
    from daskflow.engine.context import TaskRunContext
    from daskflow.engine.tasks import Task

logger = logging.getLogger("daskflow")
_MAX_SEGMENTS = 8  # a partly cached chunk splits into at most this many chunks
_home_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("daskflow_cache_home", default=None)
_token_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("daskflow_cache_token", default=None)


@dataclass(slots=True)
class CacheSpec:
    """What a chunk of a managed task needs to know about the cache (in its ``ChunkSpec``)."""

    home: str | None  # the daskflow home holding the cache; None: the task does not cache
    plan: KeyPlan | None
    keys: list | None = None  # keys precomputed by the client, one per run of the chunk
    lookup: bool = True  # read the cache before running (False: refresh, or known misses)
    stage: bool = False  # inside a transaction() block: return records, write nothing
    expires_in: float | None = None
    serializer: str | None = None
    token: str | None = None  # proves a worker sees the submitter's store (None: inline, it does)

    def part(self, lo: int, hi: int, lookup: bool) -> CacheSpec:
        keys = None if self.keys is None else self.keys[lo:hi]
        return CacheSpec(self.home, self.plan, keys, lookup and self.lookup, self.stage, self.expires_in,
                         self.serializer, self.token)

    def reachable(self) -> bool:
        """Whether this process may use the LMDB store of ``home`` directly."""
        return self.token is None or reaches_store(self.home, self.token)  # type: ignore[arg-type]


@dataclass(slots=True)
class ReturnedCache:
    """Fresh results of a remote chunk that the client writes (``ChunkResult.cache_returned``)."""

    home: str
    task_key: str
    positions: list  # runs of the chunk whose values are to be cached ...
    keys: list  # ... under these keys
    stage: bool
    expires_in: float | None
    serializer: str | None


def _in_block() -> bool:
    return current_transaction() is not None


def cache_home() -> str:
    """The cache home of the current code: the submitter's (shipped in a chunk's spec), else ours."""
    return _home_var.get() or str(config.home_path())  # checked where the store opens (get_store)


def new_spec(task: Task, home: str | None = None) -> CacheSpec:
    """The cache spec of a submission (or inline call) of a managed task, made here and now."""
    stage = _in_block()
    if not task.caches:
        return CacheSpec(None, None, lookup=False, stage=stage)
    flow = flow_run_ctx.get()
    opts = task.options
    plan = make_plan(task, current_flow_run_id(), flow.parameters if flow is not None else None)
    if plan.problem:
        _warn(task, plan.problem)
    home = home or cache_home()
    expires = opts.cache_expiration.total_seconds() if opts.cache_expiration is not None else None
    return CacheSpec(home, plan, None, not opts.refresh_cache, stage, expires, opts.result_serializer,
                     _token_for(home))


def _token_for(home: str) -> str | None:
    """The token that submissions ship: the enclosing remote chunk's, else this process's own."""
    token = _token_var.get()
    if token is not None:
        return token
    from daskflow.runners.dask import in_dask_task

    if in_dask_task() and _home_var.get() is not None:
        return None  # in a local chunk: nested runs see the same store
    return store_token(home)


def _warn(task: Task, what: str) -> None:
    warnings.warn(f"task {task.name!r}: {what}; the run executes uncached", CacheWarning, stacklevel=4)


def _warn_unhashable(task: Task, exc: Unhashable) -> None:
    if isinstance(exc, KeyFnFailed):
        return _warn(task, str(exc))
    name = exc.param or "?"
    warnings.warn(
        f"task {task.name!r}: parameter {name!r} ({exc.what}) cannot be hashed into a cache key, so "
        f"the run executes uncached. Leave it out of the key with cache_policy=INPUTS - {name!r} "
        "(plus the other parts you need), or set cache_policy=NO_CACHE.",
        CacheWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------
# Client side


class MapCache:
    """The cache decisions of one ``.map()``: which bounds to submit, which are already known."""

    def __init__(self, spec: CacheSpec, bounds: list[tuple[int, int]], known: dict[int, ChunkResult]) -> None:
        self.spec = spec
        self.bounds = bounds  # to submit
        self.known = known  # lo -> envelope of a fully cached range
        self._lookup: set[int] = set()  # submitted ranges the worker must still look up

    def spec_for(self, lo: int, hi: int) -> CacheSpec:
        return self.spec.part(lo, hi, lookup=self.spec.keys is None or lo in self._lookup)

    def merge(self, task: Task, base: int, chunks: list[Chunk], runner: Any) -> list[Chunk]:
        """Submitted chunks and cached ones, in element order."""
        if not self.known:
            return chunks
        out = chunks + [Chunk(task, base, lo, res.n, None, runner, result=res) for lo, res in self.known.items()]
        out.sort(key=lambda c: c.start)
        return out


def for_map(task: Task, names: list[str], kinds: dict[str, tuple[str, Any]], n: int,
            bounds: list[tuple[int, int]], base: int, has_waits: bool, aligned: Any) -> MapCache | None:
    """Look a map's runs up on the client when its inputs are concrete; plan what to submit."""
    if not task.managed:
        return None
    spec = new_spec(task)
    cache = MapCache(spec, bounds, {})
    if spec.plan is None or not spec.lookup or has_waits or aligned is not None or spec.plan.problem:
        return cache
    if task.options.on_completion or task.options.on_running:
        return cache  # their hooks fire where the run is decided: on the worker
    columns = []
    for name in names:
        kind, value = kinds[name]
        if kind is BROADCAST and isinstance(value, quote):
            value = value.value
        if kind is MAPPED and not isinstance(value, (list, tuple, range)):
            return cache  # a MapFutures: resolved on the worker
        columns.append(KeyColumn(kind is MAPPED, value))
    try:
        keys, bad = spec.plan.keys_for(task, columns, n, lambda i: run_id(base, i))
    except NotConcrete:
        return cache
    if bad is not None:
        _warn_unhashable(task, bad)
    spec.keys = keys
    hits = get_store(spec.home).load_many(keys)  # type: ignore[arg-type]
    if not hits:
        return cache
    _commit_hooks_outside_block(task, spec, keys, hits)
    submit: list[tuple[int, int]] = []
    every = len(hits) == n  # the common rerun: no per-element segment scan
    for lo, hi in bounds:
        segments = [(lo, hi, True)] if every else _segments(lo, hi, hits)
        if len(segments) > _MAX_SEGMENTS:
            submit.append((lo, hi))
            cache._lookup.add(lo)
            continue
        for s_lo, s_hi, hit in segments:
            if hit:
                cache.known[s_lo] = cached_envelope(task, base, s_lo, [hits[i] for i in range(s_lo, s_hi)])
            else:
                submit.append((s_lo, s_hi))
    cache.bounds = submit
    return cache


def _segments(lo: int, hi: int, hits: dict[int, Any]) -> list[tuple[int, int, bool]]:
    out: list[tuple[int, int, bool]] = []
    start, state = lo, lo in hits
    for i in range(lo + 1, hi):
        s = i in hits
        if s != state:
            out.append((start, i, state))
            start, state = i, s
    out.append((start, hi, state))
    return out


def for_single(task: Task, row: tuple, base: int, has_deps: bool) -> tuple[CacheSpec | None, ChunkResult | None]:
    """``(spec, envelope)`` of one ``.submit()``: the envelope when the cache already has it."""
    if not task.managed:
        return None, None
    cache = for_map(task, list(task.param_names), {n: Column(BROADCAST, v) for n, v in zip(task.param_names, row)}, 1, [(0, 1)],
                    base, has_deps, None)
    if cache is None:
        return None, None
    known = cache.known.get(0)
    return (None if known is not None else cache.spec_for(0, 1)), known


def cached_envelope(task: Task, base: int, start: int, values: list) -> ChunkResult:
    n = len(values)
    res = ChunkResult(task.name, base, start, n, bytearray([CACHED]) * n, values)
    res.started = now = time.time()
    res.ends = array("d", [now]) * n
    return res


def _commit_hooks_outside_block(task: Task, spec: CacheSpec, keys: list, hits: dict[int, Any]) -> None:
    if task.options.on_commit and not spec.stage:
        for i in sorted(hits):
            fire(task, "on_commit", _run_txn(keys[i]))


def _run_txn(key: bytes | None) -> Any:
    return Transaction.committed_run(display(key) if key is not None else None)


def fire(task: Task, kind: str, txn: Any) -> None:
    """Call the task's ``on_commit``/``on_rollback`` hooks with the transaction; async ones are awaited."""
    call_hooks(getattr(task.options, kind), (txn,), kind, f"task {task.name!r}")


def write_returned(results: list[ChunkResult]) -> None:
    """Write the fresh results that remote chunks returned: one LMDB transaction per home.

    Inside a ``transaction()`` block the signed records go to the envelope's
    ``cache_records`` instead, for the block to commit.
    """
    by_home: dict[str, list[tuple[bytes, bytes]]] = {}
    for res in results:
        back: ReturnedCache | None = res.cache_returned
        if back is None:
            continue
        res.cache_returned = None
        store = get_store(back.home)
        records = _encode_returned(res, back, store.secret)
        if back.stage:
            res.cache_records = (res.cache_records or []) + records
        else:
            by_home.setdefault(back.home, []).extend(records)
    for home, records in by_home.items():
        try:
            get_store(home).put_many(records)
        except Exception as exc:  # the results stay valid; only the cache misses them
            warnings.warn(f"{len(records)} results returned by workers could not be written to the cache: "
                          f"{type(exc).__name__}: {exc}", CacheWarning, stacklevel=3)


def _encode_returned(res: ChunkResult, back: ReturnedCache, secret: bytes) -> list[tuple[bytes, bytes]]:
    values = res.get_values()
    expires = time.time() + back.expires_in if back.expires_in is not None else None
    encoded = ser.encode_many([values[i] for i in back.positions], back.task_key, expires, back.serializer, secret)
    out = [(key, record) for key, record in zip(back.keys, encoded) if record is not None]
    if len(out) < len(back.keys):
        warnings.warn(f"task {res.task_name!r}: {len(back.keys) - len(out)} results cannot be serialized for "
                      "the cache; they are not cached", CacheWarning, stacklevel=4)
    return out


# ---------------------------------------------------------------------------------------
# Worker side (and inline calls)


def run_managed(task: Task, rows: Any, res: ChunkResult, ctx: TaskRunContext, deps: list | None,
                spec: CacheSpec | None, notes: Any = None, first: int = 0) -> None:
    """Run a chunk of a managed task: lookups, runs, one write, commit hooks.

    ``first``: runs before it were restored from an earlier attempt's checkpoints (``rows``
    starts there); they are written to the cache with the others. ``notes``: checkpoints.
    """
    chunk = _Managed(task, res, ctx, deps, spec)
    chunk.first, chunk.notes = first, notes
    token = _home_var.set(chunk.spec.home) if chunk.spec.home else None
    remote = _token_var.set(chunk.spec.token) if chunk.remote else None
    try:
        _run_chunk(chunk, task, rows, ctx, deps)
    finally:
        if token is not None:
            _home_var.reset(token)
        if remote is not None:
            _token_var.reset(remote)
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
        from daskflow.engine.run import OK_CODES

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
                fire(task, "on_commit", _run_txn(self.keys[i]))


def _worker_keys(task: Task, plan: KeyPlan, items: list, ctx: TaskRunContext, keys: list) -> list:
    warned = False
    for i, row in items:
        if any(type(v) is Unpicklable for v in row):
            continue  # the run fails anyway
        try:
            keys[i] = plan.key(task, row, lambda i=i: _run_id(ctx, i))
        except Unhashable as exc:
            if not warned:
                _warn_unhashable(task, exc)
                warned = True
        except NotConcrete as exc:
            if not warned:
                _warn_unhashable(task, Unhashable(f"a {exc}", None))
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
