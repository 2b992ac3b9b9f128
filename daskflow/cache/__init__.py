"""Result caching: policies (what a key depends on), keys, the LMDB result store.

Example:
    >>> from daskflow import task
    >>> from daskflow.cache import INPUTS, TASK_SOURCE
    >>> @task(cache_policy=INPUTS + TASK_SOURCE)
    ... def load(path):
    ...     ...

Only the policies are imported here; keys and the store load when a task caches.
"""

from __future__ import annotations

from daskflow.cache.policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    RUN_ID,
    TASK_SOURCE,
    CachePolicy,
    CompoundCachePolicy,
    CompoundPolicy,
    FlowParameters,
    Inputs,
    NoCache,
    RunId,
    TaskSource,
)

_LOCKS = ("FileLockManager", "IsolationLevel", "LockManager")


def __getattr__(name: str) -> object:
    if name in _LOCKS:  # loads LMDB: only when a lock is asked for
        from daskflow.cache import locks

        return getattr(locks, name)
    raise AttributeError(f"module 'daskflow.cache' has no attribute {name!r}")

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CachePolicy",
    "CompoundCachePolicy",
    "CompoundPolicy",
    "FileLockManager",
    "FlowParameters",
    "Inputs",
    "IsolationLevel",
    "LockManager",
    "NoCache",
    "RunId",
    "TaskSource",
]
