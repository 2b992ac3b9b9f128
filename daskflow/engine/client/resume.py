"""The client side of keeping and resuming: naming a flow run's calls, reusing kept runs.

Every flow run (when ``daskflow.results.keep`` is not 0) has a ``KeepScope``: it names each
call of a task in the flow run (``engine.worker.keep`` says how, and the limits) and hands
the call's chunks a ``KeepSpec`` so that the worker keeps their completed values. A root
flow run also writes its *source* once, in a thread of its own: entrypoint and pickled
parameters (``cache.kept.FlowSource``), which ``flow-runs retry`` needs to run it again.

A retry (``engine.api.retry``) sets ``resuming``; the flow run it starts then takes the old
flow run's id and attempt number, and its scope holds what earlier attempts kept. A call
whose runs were kept is answered here, before submission, as the cache answers a hit:
ranges of kept runs become chunks whose envelope is known (state ``Cached``, nothing
submitted), the others are submitted; a chunk too fragmented to split (1% of runs failed,
spread out) is submitted whole with its kept values, which it fills in without running
(``ChunkSpec.kept.reuse``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daskflow import config
from daskflow.engine.client import direct_keep
from daskflow.engine.core.context import cache_home, flow_run_ctx, task_run_ctx
from daskflow.engine.worker.keep import KeepSpec

if TYPE_CHECKING:
    from daskflow.cache.kept import KeptRuns
    from daskflow.engine.api.flows import Flow
    from daskflow.engine.api.tasks import Task
    from daskflow.engine.core.context import FlowRunContext
    from daskflow.engine.core.envelope import ChunkResult

_MAX_SEGMENTS = 8  # a partly kept chunk splits into at most this many chunks, else is submitted whole


@dataclass
class Resume:
    """A retry in progress: the flow run to run again, its attempt, what earlier attempts kept."""

    flow_run_id: str
    attempt: int
    kept: KeptRuns
    attempt_key: str = ""  # names this attempt in kept keys (unique: see engine.worker.keep)
    history: list[dict] = field(default_factory=list)  # the flow record's earlier retries
    previous_state: str = ""
    used: bool = False  # taken by the root flow run it was made for (not by flows it calls)


resuming: ContextVar[Resume | None] = ContextVar("daskflow_resuming", default=None)


@dataclass
class Tally:
    reused: int = 0


@dataclass
class KeepScope:
    """How the calls of one flow run (or subflow run) are named and where their values are kept."""

    flow_run_id: str  # the root flow run's
    prefix: str  # "" in the root flow run, "{subflow}#{k}/" below it
    attempt: str
    home: str
    token: str | None
    keep_seconds: float
    storage_url: str | None  # the flow's result_storage
    kept: KeptRuns | None = None
    tally: Tally = field(default_factory=Tally)
    calls: dict[str, int] = field(default_factory=dict)
    storages: dict[str | None, Any] = field(default_factory=dict)
    writer: threading.Thread | None = None
    # direct calls kept since the last write (``direct_keep``): the open burst of calls of one
    # task, the closed ones, how many calls since the last write and when it was
    burst: Any = None
    bursts: list = field(default_factory=list)
    held: int = 0
    flushed: float = field(default_factory=time.time)
    handed: bool = False  # bursts went to the writer: the flow run's end waits for them

    def next_number(self, name: str) -> int:
        """The number of the next call of a task (or subflow) named ``name`` in this flow run."""
        if self.burst is not None:  # the open burst of direct calls gives its numbers back first
            direct_keep.settle(self)
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        return k

    def next_call(self, name: str) -> str:
        return f"{self.prefix}{name}#{self.next_number(name)}"

    def child(self, flow: Flow) -> KeepScope:
        """The scope of a subflow run called here: its calls are named below this call."""
        return KeepScope(self.flow_run_id, self.next_call(flow.name) + "/", self.attempt, self.home, self.token,
                         self.keep_seconds, flow.options.result_storage or self.storage_url, self.kept, self.tally)

    def call(self, task: Task, single: bool) -> tuple[KeepSpec, dict[int, Any] | None]:
        """The keep spec of the next call of ``task``, and what an earlier attempt kept of it."""
        name = self.next_call(task.name)
        spec = self.spec_for(name, task.options.result_storage, single)
        return spec, self.kept_of(name, task.options.result_storage)

    def kept_of(self, call: str, url: str | None) -> dict[int, Any] | None:
        """What earlier attempts kept of ``call``, of a task whose result storage is ``url``: a
        storage other than the flow's is read the first time one of its tasks is called (its
        records are signed with its own secret, so the home's copies of them do not load here)."""
        kept = self.kept
        if kept is None:
            return None
        url = url or self.storage_url
        if url not in kept.storages:
            kept.storages.add(url)
            kept.add(_load_kept(self.home, url, self.flow_run_id))
        return kept.calls.get(call)

    def spec_for(self, call: str, url: str | None, single: bool) -> KeepSpec:
        """The keep spec of the call named ``call`` of a task whose result storage is ``url``."""
        url = url or self.storage_url
        storage = self.storages.get(url, self)
        if storage is self:
            from daskflow.cache.storage_spec import StorageSpec

            storage = self.storages[url] = StorageSpec.from_config(url)
        return KeepSpec(self.home, self.token, storage, self.flow_run_id, call, self.attempt, self.keep_seconds,
                        single=single)


def _load_kept(home: str, url: str | None, flow_run_id: str) -> KeptRuns:
    """What the flow run kept in the result storage ``url`` (nothing, with a warning, when it
    cannot be read: those runs execute again)."""
    import warnings

    from daskflow.cache.kept import KeptRuns, get_kept_store, load_kept
    from daskflow.cache.storage_spec import StorageSpec
    from daskflow.cache.store import CacheWarning

    try:
        return load_kept(get_kept_store(home, StorageSpec.from_config(url)), flow_run_id)
    except Exception as exc:  # noqa: BLE001 - unreadable: its runs execute again
        warnings.warn(f"flow run {flow_run_id}: the values kept in result storage {url} could not be read "
                      f"({type(exc).__name__}: {exc}); those runs execute again", CacheWarning, stacklevel=3)
        return KeptRuns()


def keep_seconds() -> float:
    from dask.utils import parse_timedelta

    value = config.get("results.keep", "7d")
    return float(parse_timedelta(value, default="seconds") or 0) if value else 0.0


def open_scope(flow: Flow, ctx: FlowRunContext, resume: Resume | None) -> KeepScope | None:
    """The keep scope of a flow run that starts (None: values are not kept)."""
    parent = ctx.parent
    if parent is not None:
        return parent.keep.child(flow) if parent.keep is not None else None
    seconds = keep_seconds()
    if (not seconds and resume is None) or task_run_ctx.get() is not None:  # a flow called by a task: its
        return None                                                          # run's value is kept
    from daskflow.engine.worker.cache_spec import token_for

    home = cache_home()
    scope = KeepScope(ctx.flow_run_id, "", resume.attempt_key if resume else "1", home, token_for(home), seconds,
                      flow.options.result_storage, resume.kept if resume else None)
    if resume is None:
        scope.writer = threading.Thread(target=_write_source, args=(flow, ctx.flow_run_id, dict(ctx.parameters),
                                                                    scope), daemon=True, name="daskflow-keep")
        scope.writer.start()
    return scope


def close_scope(scope: KeepScope | None) -> None:
    """Write what direct calls kept, wait for the source record (a flow run that ended has both)."""
    if scope is None:
        return
    direct_keep.close(scope, time.time())
    if scope.writer is not None:
        scope.writer.join()
        scope.writer = None


def reused_direct(scope: KeepScope, number: int, task: Task, base: int, start: int) -> ChunkResult | None:
    """The envelope of direct call ``number`` of ``task`` that an earlier attempt kept (None: it runs)."""
    if scope.kept is None:
        return None
    call = f"{scope.prefix}{task.name}#{number}"
    return reused_single(task, base, start, scope.kept_of(call, task.options.result_storage))


def for_call(task: Task, single: bool) -> tuple[KeepSpec | None, dict[int, Any] | None]:
    """The keep spec of a call made here, and the runs of it an earlier attempt kept.

    Calls made inside a task run (nested) are not kept: their parent run's value is.
    """
    scope = calling_scope()
    return (None, None) if scope is None else scope.call(task, single)


def calling_scope() -> KeepScope | None:
    """The keep scope of a call made here: the flow run's, unless values are not kept or the
    call is made inside a task run (nested: their parent run's value is kept)."""
    ctx = flow_run_ctx.get()
    if ctx is None or task_run_ctx.get() is not None:
        return None
    return ctx.keep


def reused_single(task: Task, base: int, start: int, reused: dict[int, Any] | None) -> ChunkResult | None:
    """The envelope of a single run that an earlier attempt kept (None: it runs)."""
    if not reused or 0 not in reused:
        return None
    flow_run_ctx.get().keep.tally.reused += 1  # type: ignore[union-attr]
    return envelope(task, base, start, [reused[0]])


def envelope(task: Task, base: int, start: int, values: list) -> ChunkResult:
    from daskflow.engine.client.cache_lookup import cached_envelope

    return cached_envelope(task, base, start, values)


@dataclass
class ReusePlan:
    """A map's chunks on a retry: bounds to submit, chunks known from kept values, and the kept
    values of runs in submitted chunks (by map index)."""

    bounds: list[tuple[int, int]]
    known: list[ChunkResult]
    partial: dict[tuple[int, int], dict[int, Any]]  # (lo, hi) -> kept values by position in the chunk
    reused: dict[int, Any]

    def reuse(self, lo: int, hi: int) -> dict[int, Any] | None:
        """The kept values of the chunk ``lo .. hi``, by position in the chunk."""
        if not self.partial:
            return None
        found = self.partial.get((lo, hi))
        if found is not None:
            return found
        kept = self.reused  # bounds the cache split further (rare): look the range up
        return {i - lo: kept[i] for i in range(lo, hi) if i in kept} or None


def plan_map(task: Task, base: int, bounds: list[tuple[int, int]], reused: dict[int, Any],
             fixed: bool) -> ReusePlan:
    """Split a map's chunk bounds by what was kept. ``fixed``: the bounds are aligned with an
    upstream map's chunks and must not change (kept runs are then filled in by the chunks)."""
    from daskflow.engine.client.cache_lookup import segments as cut

    plan = ReusePlan([], [], {}, reused)
    count = 0
    for lo, hi in bounds:
        hit = {i - lo: reused[i] for i in range(lo, hi) if i in reused}
        count += len(hit)
        if not hit:
            plan.bounds.append((lo, hi))
            continue
        segments = None if fixed else cut(lo, hi, reused, _MAX_SEGMENTS)
        if segments is None or len(segments) > _MAX_SEGMENTS:
            plan.bounds.append((lo, hi))
            plan.partial[(lo, hi)] = hit
            continue
        for s_lo, s_hi, kept in segments:
            if kept:
                plan.known.append(envelope(task, base, s_lo, [reused[i] for i in range(s_lo, s_hi)]))
            else:
                plan.bounds.append((s_lo, s_hi))
    flow_run_ctx.get().keep.tally.reused += count  # type: ignore[union-attr]
    return plan


# -- the flow run's source ------------------------------------------------------------------


def entrypoint_of(fn: Any) -> tuple[str | None, str | None]:
    """``(entrypoint, None)`` of a flow function, or ``(None, why not)``.

    ``path/to/file.py:fn`` for a flow in a script run as ``python file.py``, ``module:fn``
    for one in an importable module.
    """
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        return None, f"its function {qualname or fn!r} is not defined at the top level of a module"
    module = getattr(fn, "__module__", None) or ""
    mod = sys.modules.get(module)
    path = ENTRY_FILES.get(module)
    if path is None and module == "__main__":
        path = getattr(mod, "__file__", None)
        if not path:
            return None, "it was defined interactively (no file to import it from)"
    if path is not None:
        return f"{os.path.abspath(path)}:{qualname}", None
    return f"{module}:{qualname}", None


#: modules a retry loaded from a file path (their synthetic name -> the path)
ENTRY_FILES: dict[str, str] = {}


def source_of(flow: Flow, flow_run_id: str, parameters: dict[str, Any]) -> Any:
    """The flow run's ``FlowSource``: entrypoint and parameters, or why it cannot be retried."""
    import cloudpickle

    from daskflow.cache.kept import FlowSource

    entrypoint, why = entrypoint_of(flow.fn)
    try:
        blob: bytes | None = cloudpickle.dumps(parameters, protocol=5)
    except Exception as exc:  # noqa: BLE001 - said in the record, not raised: the flow run goes on
        blob = None
        bad = next((name for name, value in parameters.items() if not _picklable(value)), "?")
        why = (f"its parameter {bad!r} cannot be serialized ({type(exc).__name__}: {exc}); pass picklable "
               "parameters to make it retryable")
    return FlowSource(flow_run_id, flow.name, entrypoint, blob, why)


def _picklable(value: Any) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(value)
    except Exception:  # noqa: BLE001
        return False
    return True


def _write_source(flow: Flow, flow_run_id: str, parameters: dict[str, Any], scope: KeepScope) -> None:
    import warnings

    from daskflow.cache import kept
    from daskflow.cache.storage_spec import StorageSpec
    from daskflow.cache.store import CacheWarning

    try:
        source = source_of(flow, flow_run_id, parameters)
        store = kept.get_kept_store(scope.home, StorageSpec.from_config(scope.storage_url))
        store.put_many([(kept.source_key(flow_run_id), kept.encode(source, flow.name, scope.keep_seconds,
                                                                    store.secret))])
        _prune_now_and_then(scope.home, store, scope.keep_seconds)
    except Exception as exc:  # noqa: BLE001 - the flow run goes on; only a retry is impossible
        warnings.warn(f"flow {flow.name!r}: its parameters could not be recorded for a retry "
                      f"({type(exc).__name__}: {exc})", CacheWarning, stacklevel=2)


_pruned: dict[Any, float] = {}  # home or result storage -> when it was last pruned


def _prune_now_and_then(home: str, store: Any, keep_seconds: float) -> None:
    """Drop expired kept records, at most hourly per process, home and result storage: the
    home's, and those in the result storage ``store`` writes to (older than the keep window)."""
    from daskflow.cache.kept import get_kept_store, prune_expired, prune_storage

    storage = getattr(store, "storage", None)
    now = time.time()
    for where in (home, storage):
        if where is None or now - _pruned.get(where, 0.0) < 3600:
            continue
        _pruned[where] = now
        if where is home:
            prune_expired(get_kept_store(home))  # type: ignore[arg-type]
        else:
            prune_storage(storage, keep_seconds)
