"""The task-runner protocol: submit chunks of runs, fetch their envelopes, shut down."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from daskflow.engine import chunking, tracker
from daskflow.engine.run import CANCELLED, CRASHED, ChunkResult
from daskflow.exceptions import CancelledRun, CrashedRun, RunnerShutdown

if TYPE_CHECKING:
    from daskflow.engine.futures import Chunk
    from daskflow.engine.run import ChunkSpec


class TaskRunner(abc.ABC):
    """Executes chunks of task runs. Subclasses: ``DaskTaskRunner``, ``ThreadPoolTaskRunner``."""

    #: True when chunk arguments must be pickled before submission (another process runs them).
    serializes = True
    closed = False

    @abc.abstractmethod
    def submit_chunks(self, specs: list[ChunkSpec], deps: list[list[Any]], keys: list[str]) -> list[Any]:
        """Submit every chunk in one go; ``deps[i]`` are handles (or envelopes) chunk i needs."""

    @abc.abstractmethod
    def _wait(self, handles: list[Any], timeout: float | None) -> None:
        """Block until every handle is done; raise ``TimeoutError`` past ``timeout``."""

    @abc.abstractmethod
    def _gather(self, handles: list[Any]) -> list[ChunkResult | BaseException]:
        """The envelopes of done handles, or the exception that ended each."""

    @abc.abstractmethod
    def total_threads(self) -> int:
        """How many runs can execute at once (sizes chunks)."""

    def cancel(self, chunk: Chunk) -> bool:
        return False

    def duplicate(self) -> TaskRunner:
        """A fresh, unstarted runner with the same settings (one per flow run)."""
        return self

    def shutdown(self, wait: bool = True) -> None:
        """Release the runner's resources; ``wait=False`` does not wait for running work."""
        self.closed = True

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- shared ------------------------------------------------------------------------
    def fetch(self, chunk: Chunk, timeout: float | None) -> ChunkResult:
        self.fetch_many([chunk], timeout)
        return chunk.result  # type: ignore[return-value]

    def fetch_many(self, chunks: list[Chunk], timeout: float | None) -> None:
        if self.closed:
            raise RunnerShutdown(
                f"the task runner of these futures ({type(self).__name__}) was shut down before their "
                "results were read; read results inside the flow, or return them from it"
            )
        handles = [c.handle for c in chunks]
        self._wait(handles, timeout)
        for chunk, res in zip(chunks, self._gather(handles)):
            if isinstance(res, ChunkResult):
                chunking.observe(chunk.task, res)
                chunk.result = res
            else:
                chunk.result = lost(chunk, res)
            chunk.handle = None  # the runner may now release the data
            tracker.chunk_finished(chunk)


def lost(chunk: Chunk, exc: BaseException) -> ChunkResult:
    """The envelope of a chunk whose Dask task (not the user's code) ended in error."""
    cancelled = type(exc).__name__ in ("CancelledError", "FutureCancelledError")
    code = CANCELLED if cancelled else CRASHED
    if cancelled:
        err: BaseException = CancelledRun(f"task {chunk.task.name!r}: the run was cancelled")
    else:
        err = CrashedRun(
            f"task {chunk.task.name!r}: the run crashed outside of the task's code: "
            f"{type(exc).__name__}: {exc}. If a worker died, check its memory limit and any "
            "extension that may segfault."
        )
        err.__cause__ = exc
    return ChunkResult.all_failed(chunk.task.name, chunk.base, chunk.start, chunk.n, code, err, str(err))
