"""Retry delays: validation at decoration time, and ``exponential_backoff``."""

from __future__ import annotations

import numbers
from typing import Callable


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Retry delays that grow as ``backoff_factor * 2**attempt``.

    Example:
        >>> @task(retries=3, retry_delay_seconds=exponential_backoff(1))  # doctest: +SKIP
        ... def fetch(url): ...
    """
    if backoff_factor < 0:
        raise ValueError(f"backoff_factor must be >= 0, got {backoff_factor!r}")

    def delays(retries: int) -> list[float]:
        return [backoff_factor * 2**r for r in range(retries)]

    return delays


def normalize_delays(value: object, retries: int, task_name: str) -> tuple[float, ...]:
    """The delay before each retry, as a tuple whose last value repeats."""
    if callable(value):
        value = value(retries)
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, list, tuple)):
        raise TypeError(
            f"task {task_name!r}: Invalid `retry_delay_seconds` provided; must be an int, float, list or "
            f"callable. Received type {type(value)}"
        )
    delays = (value,) if isinstance(value, numbers.Real) else tuple(value)
    for d in delays:
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or d < 0:
            raise ValueError(f"task {task_name!r}: retry delays must be numbers >= 0, got {d!r}")
    return tuple(float(d) for d in delays) or (0.0,)
