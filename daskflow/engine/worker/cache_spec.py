"""What a run of a *managed* task (a cache, or commit hooks) knows about the cache.

A submission (or an inline call) of a managed task makes one ``CacheSpec`` here and now
(``new_spec``): the daskflow home holding the cache, the key plan, whether to look up,
whether the run is staged in a ``transaction()`` block. It travels in the chunk's spec,
because workers of the session cluster do not see the client's later environment. A
worker on another host returns its fresh results to the client as a ``ReturnedCache``.
Both sides of the cache work (the client's lookups before submission,
``engine.client.cache_lookup``; the worker's, ``engine.worker.managed``) start here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daskflow.cache.keys import KeyFnFailed, KeyPlan, Unhashable, display, make_plan
from daskflow.cache.storage_spec import StorageSpec
from daskflow.cache.store import CacheWarning, ResultStore, get_store
from daskflow.cache.tokens import reaches_store, store_token
from daskflow.engine.core.context import cache_home, cache_home_var, cache_token_var, current_flow_run_id, flow_run_ctx
from daskflow.engine.worker.hosts import current_host
from daskflow.engine.worker.transactions import Transaction, current_transaction

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task


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
    storage: StorageSpec | None = None  # the result storage (an fsspec URL) every process writes to itself

    def part(self, lo: int, hi: int, lookup: bool) -> CacheSpec:
        keys = None if self.keys is None else self.keys[lo:hi]
        return CacheSpec(self.home, self.plan, keys, lookup and self.lookup, self.stage, self.expires_in,
                         self.serializer, self.token, self.storage)

    def reachable(self) -> bool:
        """Whether this process may use the LMDB store of ``home`` directly."""
        return self.token is None or reaches_store(self.home, self.token)  # type: ignore[arg-type]

    def store(self) -> ResultStore | None:
        """The store this process reads and writes: the home's, in front of the result storage
        if there is one; a worker that does not reach the home uses the storage alone, or None
        (its fresh results then go back to the submitter, ``ReturnedCache``)."""
        if self.plan is None:
            return None
        reach = self.reachable()
        if self.storage is None:
            return get_store(self.home) if reach else None  # type: ignore[arg-type]
        if not reach and not self.storage.secret_file:
            return None  # no secret to sign with here
        return get_store(self.home if reach else None, self.storage)


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


def in_block() -> bool:
    return current_transaction() is not None


def new_spec(task: Task, home: str | None = None) -> CacheSpec:
    """The cache spec of a submission (or inline call) of a managed task, made here and now."""
    stage = in_block()
    if not task.caches:
        return CacheSpec(None, None, lookup=False, stage=stage)
    flow = flow_run_ctx.get()
    opts = task.options
    plan = make_plan(task, current_flow_run_id(), flow.parameters if flow is not None else None)
    if plan.problem:
        warn_uncached(task, plan.problem)
    home = home or cache_home()
    expires = opts.cache_expiration.total_seconds() if opts.cache_expiration is not None else None
    url = opts.result_storage or (flow.flow.options.result_storage if flow is not None and flow.flow else None)
    return CacheSpec(home, plan, None, not opts.refresh_cache, stage, expires, opts.result_serializer,
                     token_for(home), StorageSpec.from_config(url))


def token_for(home: str) -> str | None:
    """The token that submissions ship: the enclosing remote chunk's, else this process's own."""
    token = cache_token_var.get()
    if token is not None:
        return token
    if current_host().remote() and cache_home_var.get() is not None:
        return None  # in a local chunk: nested runs see the same store
    return store_token(home)


def warn_uncached(task: Task, what: str) -> None:
    warnings.warn(f"task {task.name!r}: {what}; the run executes uncached", CacheWarning, stacklevel=4)


def warn_unhashable(task: Task, exc: Unhashable) -> None:
    if isinstance(exc, KeyFnFailed):
        return warn_uncached(task, str(exc))
    name = exc.param or "?"
    warnings.warn(
        f"task {task.name!r}: parameter {name!r} ({exc.what}) cannot be hashed into a cache key, so "
        f"the run executes uncached. Leave it out of the key with cache_policy=INPUTS - {name!r} "
        "(plus the other parts you need), or set cache_policy=NO_CACHE.",
        CacheWarning, stacklevel=4)




def run_txn(key: bytes | None) -> Any:
    """The committed transaction a run's ``on_commit`` hooks receive, named by its cache key."""
    return Transaction.committed_run(display(key) if key is not None else None)
