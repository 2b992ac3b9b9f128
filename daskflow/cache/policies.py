"""Cache policies (placeholder until the cache lands): which tasks cache at all."""

from __future__ import annotations

from typing import Any


def is_caching(cache_policy: Any, cache_key_fn: Any, persist_result: bool | None) -> bool:
    """As in Prefect: a task caches with a policy or key function, or persist_result=True."""
    if cache_key_fn is not None:
        return True
    if cache_policy is not None:
        return getattr(cache_policy, "is_no_cache", False) is False
    return bool(persist_result)
