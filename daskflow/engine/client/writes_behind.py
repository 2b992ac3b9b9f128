"""The client side of storage writes left under way (``engine.worker.write_behind``).

A chunk submitted by a flow run in its own process may end before its result storage
PUTs do (``ChunkSpec.behind``); the flow run then waits for them at its end, once, in
every process its runner runs chunks in (``TaskRunner.run_everywhere``): a flow run that
returned has its records in the storage. A write refused by the storage fails the flow
run with that ``StorageUnreachable``; a worker lost with writes under way is one warning
(those records are missing from the storage; a run in another home computes them again).
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

from daskflow.cache.store import CacheWarning
from daskflow.engine.core.context import flow_run_ctx, task_run_ctx
from daskflow.engine.worker.write_behind import drain
from daskflow.exceptions import StorageUnreachable

if TYPE_CHECKING:
    from daskflow.engine.core.context import FlowRunContext

__all__ = ["may_leave_writes", "await_writes"]


def may_leave_writes(cache: Any, keep: Any) -> bool:
    """Whether chunks of a submission may leave their storage writes to the flow run's end:
    made by a flow run in its own process (not by a task), with an object store to write
    (``cache``: its ``CacheSpec``, ``keep``: its ``KeepSpec``). The flow run is told to wait."""
    ctx = flow_run_ctx.get()
    if ctx is None or task_run_ctx.get() is not None:
        return False
    storages = [s for s in (getattr(cache, "storage", None), getattr(keep, "storage", None)) if s is not None]
    if not any(s.object_store for s in storages):  # a filesystem's files are written at once: no gain
        return False
    ctx.writes_behind = True
    return True


def await_writes(ctx: FlowRunContext) -> None:
    """At the flow run's end: until the storage writes its chunks left under way have ended."""
    if not ctx.writes_behind:
        return
    ctx.writes_behind = False
    try:
        answers = ctx.runner.run_everywhere(functools.partial(drain, ctx.flow_run_id))
    except Exception as exc:  # noqa: BLE001 - the runs are final: only the storage's copy is in doubt
        warnings.warn(f"flow run {ctx.flow_run_id}: could not confirm that its results reached their result "
                      f"storage ({type(exc).__name__}: {exc}); a run in another home may compute some again",
                      CacheWarning, stacklevel=3)
        return
    failed = [message for answer in answers.values() if isinstance(answer, list) for message in answer]
    _warn_lost(ctx, {address for address, answer in answers.items() if isinstance(answer, list)})
    if failed:
        raise StorageUnreachable(failed[0] + (f" (and {len(failed) - 1} more writes failed)" if len(failed) > 1 else ""))


def _warn_lost(ctx: FlowRunContext, answered: set) -> None:
    """One warning for the chunks whose worker did not answer (gone, or failed to): their
    writes may be lost."""
    lost: dict[str, list] = {}
    for chunk in ctx.submitted:
        res = getattr(chunk, "result", None)
        if res is not None and res.behind and res.worker not in answered:
            lost.setdefault(res.task_name, []).append(res.worker)
    if lost:
        what = ", ".join(f"{len(w)} chunk(s) of task {name!r}" for name, w in lost.items())
        workers = sorted({str(w) for ws in lost.values() for w in ws})
        warnings.warn(f"flow run {ctx.flow_run_id}: the result storage writes of {what} were under way on "
                      f"{', '.join(workers)}, which did not answer (gone?): those results may be missing from the storage "
                      "(their runs are final; a run in another home computes them again)", CacheWarning,
                      stacklevel=3)
