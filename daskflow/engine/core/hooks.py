"""Calling user hooks: sync or ``async def``, never letting one fail the run it reports on.

Task hooks (``on_completion``, ``on_failure``, ``on_running``), commit hooks
(``on_commit``, ``on_rollback``) and flow hooks (``on_completion``, ``on_failure``,
``on_cancellation``, ``on_crashed``, ``on_running``) all come here. An async hook is
awaited, as Prefect does: with ``asyncio.run`` when no event loop runs in this thread,
else in a helper thread with its own loop (the caller's loop cannot be re-entered from
the synchronous code that fires the hook).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
from typing import Any, Callable, Iterable

logger = logging.getLogger("daskflow")


def await_now(awaitable: Any) -> Any:
    """Run an awaitable to completion from synchronous code, inside or outside a loop."""

    async def wrapper() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrapper())
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskflow-hook") as pool:
        return pool.submit(ctx.run, asyncio.run, wrapper()).result()


def call_hooks(hooks: Iterable[Callable], args: tuple, kind: str, owner: str) -> None:
    """Call each hook with ``args``; await the async ones; log (never raise) their errors."""
    for hook in hooks:
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await_now(result)
        except Exception:
            logger.exception("%s hook %r of %s raised; the run's state is unchanged",
                             kind, getattr(hook, "__name__", hook), owner)


def validate_hooks(owner: str, kind: str, value: Any) -> tuple[Callable, ...]:
    """Hooks as Prefect takes them: an iterable of callables (or None), checked at definition."""
    if value is None:
        return ()
    # Prefect's wording (users search for it), after the owner's name; then the fix
    not_iterable = (f"{owner}: Expected iterable for {kind!r}; got {type(value).__name__} instead. Please provide "
                    f"a list of hooks to {kind!r}: write {kind}=[hook] (one or more callables)")
    if isinstance(value, (str, bytes)) or callable(value):
        raise TypeError(not_iterable)
    try:
        hooks = tuple(value)
    except TypeError:
        raise TypeError(not_iterable) from None
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"{owner}: Expected callables in {kind!r}; got {type(hook).__name__} instead. Please "
                            f"provide a list of hooks to {kind!r} (got {hook!r})")
    return hooks


def fire_commit_hooks(task: Any, kind: str, txn: Any) -> None:
    """Call a task's ``on_commit``/``on_rollback`` hooks with the transaction; async ones are awaited."""
    call_hooks(getattr(task.options, kind), (txn,), kind, f"task {task.name!r}")
