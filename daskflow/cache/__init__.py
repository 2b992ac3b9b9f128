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
    CompoundPolicy,
    FlowParameters,
    Inputs,
    NoCache,
    RunId,
    TaskSource,
)

__all__ = [
    "DEFAULT",
    "FLOW_PARAMETERS",
    "INPUTS",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CachePolicy",
    "CompoundPolicy",
    "FlowParameters",
    "Inputs",
    "NoCache",
    "RunId",
    "TaskSource",
]
