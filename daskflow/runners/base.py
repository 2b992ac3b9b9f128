"""The task-runner protocol: an executor of callables, as ``concurrent.futures.Executor`` is.

A runner submits batches of calls, waits for their handles, gathers their values,
cancels, reports how many calls can run at once, and shuts down. It knows nothing of
tasks, states or chunks: the engine hands it the function to run (the task-run
function) and reads what comes back.

Dependencies: an argument that is a list may hold handles of the same runner; each is
replaced by its value before the call starts, and the call waits for them without
taking a slot (Dask does this for futures in arguments; the thread runner does the
same for its own futures).

The seam, both ways. The engine asks a runner through the hooks below, never by its
class: ``attach`` at the first submission (where a runner subscribes this process to its
workers' events and sets up checkpoints), ``keep``/``notes_of`` for checkpoints,
``reports_ends`` (whether calls announce their end by events), ``dashboard_links``,
``run_everywhere`` (a function run once in every process that runs calls).
The other way, a runner hands the function it runs a ``Host`` (in the call's arguments:
``host``), as ``dask/local.py`` hands its function what it needs: where the call runs,
how to send events from there, its checkpoints, and how to wait without holding a slot.
The function never imports the runner.
"""

from __future__ import annotations

import abc
import contextlib
import time
from typing import Any, Callable, Iterator, NamedTuple


class Host:
    """Where a call runs, as the runner tells the function it runs. This one: this process.

    A host travels inside the call's arguments, so it must pickle cheaply: subclasses are
    module-level singletons pickled by name (``__reduce__`` returns the global's name).
    """

    def address(self) -> str | None:
        """The address of the worker running the call (None: this process)."""
        return None

    def remote(self) -> bool:
        """Whether the calling code runs inside one of the runner's calls in another process
        (its events then travel by ``send``, not by a direct call)."""
        return False

    def sender(self) -> Callable[[str, Any], None]:
        """A function ``send(topic, payload)`` that delivers an event to whoever subscribed to
        ``topic`` (only asked when ``remote()``). Ask in the call's own thread; the function
        may be used from any thread, and is equal for calls on the same worker."""
        raise NotImplementedError("this host runs calls in this process: no events to send")

    def recall(self) -> tuple[bytes | None, list[bytes]]:
        """``(kept result, checkpoints)`` of an earlier attempt of the running call."""
        return None, []

    def note(self, blob: bytes) -> None:
        """Record a checkpoint of the running call (where the runner keeps them)."""

    def sleep(self, seconds: float, idle: bool = False) -> None:
        """Wait ``seconds``; a host with a bounded pool lets others use the slot meanwhile.

        ``idle``: the call has nothing else to do until then (a chunk whose remaining runs
        all await their retry), so the slot is given away however short the wait.
        """
        time.sleep(seconds)

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """A block that waits on something else (a concurrency slot): a host with a bounded
        pool lets others use the call's slot meanwhile."""
        yield

    def others_queued(self) -> bool:
        """Whether other calls wait to run in this process now, besides the caller (a hint: a
        call that ends may leave work for later, when it can be done together). Here: no."""
        return False

    def places_calls(self) -> bool:
        """Whether ``submit_call`` hands a call to the runner to place (else the caller runs
        its work in its own thread: this host, a task whose resources a new call would need)."""
        return False

    def submit_call(self, fn: Callable[..., Any], args: tuple, key: str) -> Any:
        """Start ``fn(*args)`` as a new call of the runner, placed where the runner likes (a
        Dask cluster: any worker); a handle for ``gather_calls``. This host runs it now, here."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed back by gather_calls, as a lost call's error
            return exc

    def gather_calls(self, handles: list[Any]) -> list[Any]:
        """The values of calls ``submit_call`` started, or the exception that ended each; call
        inside ``idle()`` (the wait then holds no slot)."""
        return list(handles)

    def __reduce__(self) -> str:
        return "LOCAL_HOST"


#: The host of calls that run in this process (threads, inline calls).
LOCAL_HOST = Host()


class LossCause(NamedTuple):
    """Why a runner lost a call, when it knows more than the error says (``explain_loss``)."""

    message: str  # in the user's words, e.g. "killed: worker exceeded its memory limit (2 GiB)"
    rss: int | None = None  # the process's memory when last sampled, in bytes
    limit: int | None = None  # its memory limit, in bytes


class TaskRunner(abc.ABC):
    """Executes calls. Subclasses: ``DaskTaskRunner``, ``ThreadPoolTaskRunner``."""

    #: True when call arguments are pickled on their way (another process runs the calls).
    serializes = True
    closed = False
    #: True when calls may note checkpoints and resume from them (``runners.ledger``).
    checkpoints = False
    #: What the functions this runner runs are handed (``Host``).
    host: Host = LOCAL_HOST

    @abc.abstractmethod
    def submit_many(self, fn: Callable[..., Any], *iterables: list, keys: list[str]) -> list[Any]:
        """Submit ``fn(*args)`` for every row of ``iterables`` in one go; one handle per call.

        ``keys`` name the calls (unique; Dask shows them on its dashboard).
        """

    def submit_windowed(self, fn: Callable[..., Any], *iterables: list, keys: list[str], window: int,
                        prepare: Callable[[Any], Any] | None = None) -> list[Any]:
        """``submit_many`` for a big burst of independent calls (a map's chunks): a runner that
        can hold calls back keeps at most ``window`` of them sent and unfinished at a time, so
        its scheduler sees a window, not the whole burst. Others submit them all.

        ``prepare`` turns each call's first argument into what is submitted (a chunk's spec
        pickled); a runner that holds calls back applies it when a call goes."""
        if prepare is not None:
            iterables = ([prepare(x) for x in iterables[0]], *iterables[1:])
        return self.submit_many(fn, *iterables, keys=keys)

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

    def attach(self, topic: str, on_event: Callable[[Any], None]) -> list[str]:
        """The first submission: have the events that calls ``send`` on ``topic`` reach
        ``on_event`` in this process, set up checkpoints if the runner keeps them. Returns
        lines worth printing once (a dashboard link)."""
        return []

    def reports_ends(self) -> bool:
        """Whether this runner's calls announce their end by an event that reaches ``attach``'s
        handler (then the engine need not poll them)."""
        return False

    def step_aside(self, handle: Any) -> None:
        """The call ``handle`` waits for retry delays only (it gave its worker slot away): a
        window of calls need not count it any more (runners with windows)."""

    def keep(self, results: list[tuple[Any, bytes]]) -> None:
        """Keep finished results ``(handle, bytes)`` while other calls still need them
        (runners with ``checkpoints``: a call computed again returns the kept result)."""

    def notes_of(self, handles: list[Any]) -> dict[Any, list[bytes]]:
        """The checkpoints unfinished calls noted so far, by handle (runners with ``checkpoints``)."""
        return {}

    def explain_loss(self, exc: BaseException) -> LossCause | None:
        """Why a call ended in ``exc`` instead of a value, when the runner knows (a worker
        killed for memory); None otherwise."""
        return None

    def dropped(self, handle: Any) -> bool:
        """Whether the call was dropped with a lost connection (it may not have run, and
        submitting it again is right)."""
        return False

    def reconnect(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for a lost connection to come back; True if it did."""
        return False

    def run_everywhere(self, fn: Callable[[], Any]) -> dict[str | None, Any]:
        """``fn()`` in every process this runner runs calls in, by the address their ``Host``
        reports (None: this process); where it raised, the exception. Here: this process."""
        try:
            return {None: fn()}
        except Exception as exc:  # noqa: BLE001 - handed back, as a worker's error would be
            return {None: exc}

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
