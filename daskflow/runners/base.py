"""The task-runner protocol: an executor of callables, as ``concurrent.futures.Executor`` is.

A runner submits batches of calls, waits for their handles, gathers their values,
cancels, reports how many calls can run at once, and shuts down. It knows nothing of
tasks, states or chunks: the engine hands it the function to run (the task-run
function) and reads what comes back.

Dependencies: an argument that is a list may hold handles of the same runner; each is
replaced by its value before the call starts, and the call waits for them without
taking a slot (Dask does this for futures in arguments; the thread runner does the
same for its own futures).
"""

from __future__ import annotations

import abc
from typing import Any, Callable


class TaskRunner(abc.ABC):
    """Executes calls. Subclasses: ``DaskTaskRunner``, ``ThreadPoolTaskRunner``."""

    #: True when call arguments are pickled on their way (another process runs the calls).
    serializes = True
    closed = False
    #: True when calls may note checkpoints and resume from them (``runners.ledger``).
    checkpoints = False

    @abc.abstractmethod
    def submit_many(self, fn: Callable[..., Any], *iterables: list, keys: list[str]) -> list[Any]:
        """Submit ``fn(*args)`` for every row of ``iterables`` in one go; one handle per call.

        ``keys`` name the calls (unique; Dask shows them on its dashboard).
        """

    @abc.abstractmethod
    def wait(self, handles: list[Any], timeout: float | None) -> None:
        """Block until every handle is done; raise ``TimeoutError`` past ``timeout``."""

    @abc.abstractmethod
    def gather(self, handles: list[Any]) -> list[Any]:
        """The values of done handles, or the exception that ended each call."""

    @abc.abstractmethod
    def total_threads(self) -> int:
        """How many calls can execute at once."""

    def flush(self) -> None:
        """Start the calls this runner holds back to send together (the Dask runner's graph
        batching); waiting, cancelling and registering a done callback call it."""

    def cancel(self, handle: Any) -> bool:
        """Cancel a call that has not finished; True if it will not deliver a value."""
        return False

    def cancel_many(self, handles: list[Any]) -> None:
        """Cancel many calls at once (runners with a round trip per call override this)."""
        for handle in handles:
            self.cancel(handle)

    def notes_of(self, handles: list[Any]) -> dict[Any, list[bytes]]:
        """The checkpoints unfinished calls noted so far, by handle (runners with ``checkpoints``)."""
        return {}

    def dropped(self, handle: Any) -> bool:
        """Whether the call was dropped with a lost connection (it may not have run, and
        submitting it again is right)."""
        return False

    def reconnect(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for a lost connection to come back; True if it did."""
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
