"""The envelope of a chunk lost to the runner, not to the user's code: a worker that died, a
call Dask gave up on or cancelled. Its runs end Crashed (or Cancelled), with the cause the
runner can tell (a worker killed for memory says so and with how much), and the inputs of
the crashed runs when the chunk is small enough to list them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from daskflow.codes import CANCELLED, CRASHED
from daskflow.engine.core.context import TaskRunContext
from daskflow.engine.core.envelope import ChunkResult
from daskflow.engine.tracking import tracker
from daskflow.engine.worker.current_run import note_failed_inputs
from daskflow.exceptions import CancelledRun, CrashedRun

if TYPE_CHECKING:
    from daskflow.engine.client.chunks import Chunk

__all__ = ["CRASHED_INPUTS_UP_TO", "lost"]

CRASHED_INPUTS_UP_TO = 100  # a crashed chunk of more runs records no inputs (the crash-alone re-run has 1)


def lost(chunk: Chunk, exc: BaseException) -> ChunkResult:
    """The envelope of a chunk whose call (not the user's code) ended in error."""
    cancelled = type(exc).__name__ in ("CancelledError", "FutureCancelledError")
    code = CANCELLED if cancelled else CRASHED
    cause = chunk.runner.explain_loss(exc) if chunk.runner is not None and not cancelled else None
    if cancelled:
        err: BaseException = CancelledRun(f"task {chunk.task.name!r}: the run was cancelled")
    elif cause is not None:
        err = CrashedRun(f"task {chunk.task.name!r}: {cause.message}; Dask gave up on it ({type(exc).__name__})")
    else:
        err = CrashedRun(f"task {chunk.task.name!r}: the run crashed outside of the task's code: "
                         f"{type(exc).__name__}: {exc}. If a worker died, check its memory limit and any "
                         "extension that may segfault.")
    if not cancelled:
        err.__cause__ = exc
    res = ChunkResult.all_failed(chunk.task.name, chunk.base, chunk.start, chunk.n, code, err, str(err))
    if cause is not None:  # the memory its worker had when last sampled (engine/worker/resources.py)
        res.resources = {"rss": cause.rss, "killed": cause.limit or True}
    if code == CRASHED and tracker.live_state(chunk.base, chunk.start) is not None:
        # the chunk was seen to start: its runs were attempted once (a chunk reports its start,
        # not each run's, so all of them count)
        res.run_counts = dict.fromkeys(range(chunk.n), 1)
    if code == CRASHED and chunk.spec is not None and chunk.n <= CRASHED_INPUTS_UP_TO:
        # what the crashed runs were given (a chunk re-run to find its culprit has one run)
        note_failed_inputs(res, TaskRunContext(chunk.task, chunk.base, chunk.start, spec=chunk.spec, deps=[]))
    return res
