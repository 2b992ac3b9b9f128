"""Chunks: the client's record of submitted calls, and what their outcomes mean.

A submission becomes one or more *chunks*, each one call of the task-run function
(``engine.worker.run.run_chunk``) on the runner. ``Chunk`` holds the runner's handle and, once
fetched, the envelope (``ChunkResult``). This module is where the engine meets its
runners:

- ``submit_chunks`` hands the runner the task-run function and the chunks' specs, in
  one batch; the first submission to a runner (``TaskRunner.attach``) subscribes this process to the
  workers' tracker events and prints the dashboard link of a cluster it started.
- ``fetch_many`` waits for and gathers envelopes with one gather per runner; a call that
  ended in a runner-level error instead of an envelope (a worker lost, a cancelled
  key) becomes a Crashed or Cancelled envelope (``lost``), never an exception; every
  fetched chunk feeds the chunk-size model and the tracker.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

import cloudpickle

from daskflow import config
from daskflow.codes import CANCELLED, NOT_READY, OK_CODES
from daskflow.engine.client import chunking
from daskflow.engine.client.losses import lost
from daskflow.engine.core.early import EarlyMessages
from daskflow.engine.core.envelope import ChunkResult, ChunkSpec
from daskflow.engine.tracking import progress, tracker
from daskflow.engine.tracking.events import ChunkAside, ChunkEnded
from daskflow.engine.worker.checkpoints import Checkpoint, keep_finished_runs
from daskflow.engine.worker.run import run_chunk, run_pickled_chunk
from daskflow.exceptions import CancelledRun, CrashedRun, RunnerShutdown

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task
    from daskflow.runners.base import TaskRunner

_attached: weakref.WeakSet[TaskRunner] = weakref.WeakSet()
logger = logging.getLogger("daskflow")


class Chunk:
    """The client's record of one submitted chunk of runs."""

    __slots__ = ("task", "base", "start", "n", "handle", "runner", "result", "observed", "submitted", "dependents",
                 "spec", "ups", "key", "reader", "values_handle", "__weakref__")

    def __init__(self, task: Task, base: int, start: int, n: int, handle: Any, runner: TaskRunner | None,
                 result: ChunkResult | None = None) -> None:
        self.task = task
        self.base = base
        self.start = start
        self.n = n
        self.handle = handle
        self.runner = runner
        self.result = result
        self.observed: bool | set[int] = False
        self.submitted = time.time()
        self.dependents = 0  # chunks submitted with this chunk's handle as a Dask dependency
        self.spec: ChunkSpec | None = None  # kept until fetched: to submit again after a lost connection
        self.ups: list[Chunk] = []  # the upstream chunks it was submitted with
        self.key = ""  # the runner's name of the call (submitted again under the same name)
        self.reader: weakref.ref | None = None  # the one future of a .submit(): gone, nobody can read it
        self.values_handle: Any = None  # the call whose result holds the values, when they stayed there

    # -- made by the client ------------------------------------------------------------
    @classmethod
    def submitted_as(cls, spec: ChunkSpec, handle: Any, runner: TaskRunner, ups: list[Chunk], key: str) -> Chunk:
        """The record of a chunk just handed to ``runner``; ``ups``: the chunks it depends on."""
        chunk = cls(spec.task, spec.base, spec.start, spec.n, handle, runner)
        chunk.spec, chunk.ups, chunk.key = spec, ups, key
        return chunk

    @classmethod
    def known(cls, task: Task, res: ChunkResult, runner: TaskRunner | None) -> Chunk:
        """The record of a chunk whose envelope is known without running it (the cache had it)."""
        return cls(task, res.base, res.start, res.n, None, runner, result=res)

    # -- the producer API: what changes a chunk, and nothing else does -----------------
    def needed_by_one_more(self, runner: TaskRunner) -> None:
        """A chunk of ``runner`` is submitted with this one's handle as a dependency."""
        if self.runner is runner:
            self.dependents += 1

    def read_by(self, future: Any) -> None:
        """The one future of a ``.submit()``: when it is gone, nobody can read the value."""
        self.reader = weakref.ref(future)

    def resubmitted(self, handle: Any) -> None:
        self.handle = handle

    def released_by(self, reader: str) -> None:
        """A stream (``reader``) consumed the chunk's values: let them go, here and on the
        worker they stayed on; its states stay readable (``ChunkResult.released_by``)."""
        if self.result is not None:
            self.result = self.result.released_by(reader)
        self.values_handle = None

    # -- reading ------------------------------------------------------------------------
    def done(self) -> bool:
        return self.result is not None or (self.handle is not None and self.handle.done())

    def outcome(self, timeout: float | None = None) -> ChunkResult:
        """The chunk's envelope, fetched once (waiting up to ``timeout`` seconds)."""
        if self.handle is not None:  # not fetched, or being recorded by the eager fetcher
            fetch_many(self.runner, [self], timeout)  # type: ignore[arg-type]
        return self.result  # type: ignore[return-value]

    def cancel(self) -> bool:
        """Cancel the chunk's call if it has not finished; True if it will not run."""
        if self.handle is None or self.runner is None:
            return False
        return self.runner.cancel(self.handle)

    def observe(self, index: int | None = None) -> None:
        """Note that run ``index`` (every run: None) was read, so its failure is not reported unresolved."""
        if self.observed is True:
            return
        res = self.result
        if index is None or self.n == 1 or (res is not None and not res.n_failed):
            self.observed = True  # nothing left to report: no per-run record (a stream reads 10^7 runs)
        else:
            if self.observed is False:
                self.observed = set()
            self.observed.add(index)

    def unobserved_failures(self) -> list[int]:
        res = self.result
        if res is None or not res.n_failed or self.observed is True:
            return []
        seen = self.observed or set()
        return [i for i, c in enumerate(res.codes) if c not in OK_CODES and c != NOT_READY and i not in seen]

    def add_done_callback(self, fn: Callable[[Chunk], None]) -> None:
        if self.result is not None:
            fn(self)
        else:
            if self.runner is not None:
                self.runner.flush()  # someone waits for it: a call held back for one graph starts now
            self.handle.add_done_callback(lambda _: fn(self))


def fetch_all(chunks: Iterable[Chunk], timeout: float | None, raise_timeout: bool = True) -> None:
    """Fetch the envelopes of many chunks with one gather per runner."""
    pending: dict[int, tuple[TaskRunner, list[Chunk]]] = {}
    for chunk in chunks:
        if chunk.handle is not None:  # not fetched, or still being recorded
            pending.setdefault(id(chunk.runner), (chunk.runner, []))[1].append(chunk)  # type: ignore[arg-type]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with progress.watching([c for _, group in pending.values() for c in group]):
            for runner, group in pending.values():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                fetch_many(runner, group, left)
    except TimeoutError:
        if raise_timeout:
            raise


def to_fetch_at_end(chunks: Iterable[Chunk]) -> list[Chunk]:
    """The chunks whose envelopes the end of a flow must fetch.

    All but the one-run chunks of ``.submit()`` calls whose future is gone (nobody can read
    its value any more) and whose worker reported them ended Completed (the run store has
    their record): on a graph of many ``.submit()`` calls, fetching those cost about as
    much as running them. Their Dask results go when the flow run's chunks do.
    """
    out = []
    for c in chunks:
        if c.result is not None:
            continue
        reader = c.reader
        if (reader is None or reader() is not None or c.n != 1 or c.handle is None or not c.handle.done()
                or not tracker.ended_completed(c.base, c.start)):
            out.append(c)
    return out


def fetch_finished(chunks: Iterable[Chunk], timeout: float = 5.0) -> None:
    """Fetch the envelopes of the chunks whose calls are done already; never waits for others.

    For an interruption: what finished is recorded as it ended before the rest is cancelled.
    """
    groups: dict[int, tuple[TaskRunner, list[Chunk]]] = {}
    for chunk in chunks:
        if chunk.result is None and chunk.handle is not None and chunk.handle.done() and not chunk.runner.closed:
            groups.setdefault(id(chunk.runner), (chunk.runner, []))[1].append(chunk)  # type: ignore[arg-type]
    for runner, group in groups.values():
        try:
            fetch_many(runner, group, timeout)
        except Exception:  # noqa: BLE001 - unfetched chunks are cancelled instead
            logger.debug("daskflow: could not fetch finished runs", exc_info=True)


def submit_chunks(runner: TaskRunner, specs: list[ChunkSpec], deps: list[list[Any]], keys: list[str],
                  window: int = 0) -> list[Any]:
    """Submit every chunk in one batch; ``deps[i]`` are handles (or envelopes) chunk i needs;
    at most ``window`` unfinished at a time on the cluster, if given (``submit_windowed``)."""
    if runner not in _attached:
        _attach(runner)
    for spec in specs:  # what the runner hands the runs where they execute
        spec.host, spec.checkpoints = runner.host, runner.checkpoints
    if runner.serializes:  # pickled here, once each: see run_pickled_chunk
        tasks: dict[int, bytes] = {}
        for spec in specs:  # the chunks of one submission share their task's pickled form
            spec.task_blob = tasks.get(id(spec.task)) or tasks.setdefault(id(spec.task), spec.task.pickled())
    if window and len(specs) > window:  # a held chunk's spec is pickled when it goes
        fn, prepare = (run_pickled_chunk, ChunkSpec.to_bytes) if runner.serializes else (run_chunk, None)
        return runner.submit_windowed(fn, specs, deps, keys=keys, window=window, prepare=prepare)
    fn, rows = (run_pickled_chunk, [s.to_bytes() for s in specs]) if runner.serializes else (run_chunk, specs)
    return runner.submit_many(fn, rows, deps, keys=keys)


def _attach(runner: TaskRunner) -> None:
    """First submission to a runner: its workers' tracker events reach this process; the lines
    it wants printed once (a dashboard link)."""
    _attached.add(runner)
    for line in runner.attach(tracker.TOPIC, tracker.on_runner_event):
        tracker.console().info(line)


_fetching = threading.Lock()  # the eager fetcher and readers set envelopes one at a time
SCAN = 256


def fetch_many(runner: TaskRunner, chunks: list[Chunk], timeout: float | None) -> None:
    """Wait for the chunks of one runner and set their envelopes (``Chunk.result``)."""
    if runner.closed:
        raise RunnerShutdown(f"the task runner of these futures ({type(runner).__name__}) was shut down before "
                             "their results were read; read results inside the flow, or return them from it")
    deadline, head = None if timeout is None else time.monotonic() + timeout, 0
    while True:
        # A chunk keeps its handle until its envelope is recorded everywhere (cache, tracker), all
        # under the lock: whoever finds the handle gone finds the record complete. The first unfinished
        # is waited for, then what finished of the next SCAN gathered: released as they come (a window).
        with _fetching:
            while head < len(chunks) and chunks[head].handle is None:
                head += 1
            front = [c for c in chunks[head:head + SCAN] if c.handle is not None]
            first = front[0].handle if front else None
        if first is None:
            break
        runner.wait([first], None if deadline is None else max(0.0, deadline - time.monotonic()))
        with _fetching:  # the eager fetcher may have been first, or submitted some again
            done = [c for c in front if c.handle is not None and c.handle.done()]
            cut = [c for c in done if c.spec is not None and runner.dropped(c.handle)]
            got = [c for c in done if c not in cut]
            told = [c for c in got if (c.base, c.start) in eager.summaries]
            if told:  # their values stayed on the workers: record them from their summaries
                settle_told(told)
                got = [c for c in got if c.handle is not None]
            if got:
                _set_results(runner, got, runner.gather([c.handle for c in got]))
            if cut:
                resubmit(runner, cut)


def _set_results(runner: TaskRunner, chunks: list[Chunk], results: list) -> None:
    """Record fetched envelopes; a call that ended in a runner-level error gets a lost envelope
    (a chunk of several runs Dask gave up on: its runs again one by one, ``split_lost``)."""
    envelopes = []
    for chunk, res in zip(chunks, results):
        if isinstance(res, ChunkResult):
            chunking.observe(chunk.task, res)
            envelopes.append(res.summary() if res.elsewhere else res)  # held only when asked for
        else:
            from daskflow.engine.client.split import split_lost  # a rare path: a chunk Dask gave up on

            envelopes.append(split_lost(runner, chunk, res) or lost(chunk, res))
    settle(chunks, envelopes)


def settle_told(chunks: list[Chunk]) -> None:
    """Record chunks whose values stayed on their workers, from the summaries their end events carried."""
    envelopes = [eager.summary_of(c) for c in chunks]
    for chunk, res in zip(chunks, envelopes):
        chunking.observe(chunk.task, res)
    settle(chunks, envelopes)


def settle(chunks: list[Chunk], envelopes: list[ChunkResult]) -> None:
    """Set the envelopes of chunks: the one place a chunk becomes final, in this order.

    1. the envelope is set, and the chunk's upstreams are needed by one chunk less; an
       envelope whose values stayed on the worker (``elsewhere``) keeps the call's handle to
       bring them when asked for (``bring_values``);
    2. envelopes that queued chunks still depend on are kept by a runner with checkpoints
       (Dask may compute such a chunk again if its worker dies); for values that stayed on
       a worker, their summary is kept, so that a new attempt knows it is one;
    3. fresh results of remote workers are written to the cache, so that "recorded final"
       means "cached";
    4. the tracker records the final states; the handle is released (the runner may drop
       the data unless the values stayed there).
    """
    for chunk, res in zip(chunks, envelopes):
        chunk.result = res
        for up in chunk.ups:
            if up.runner is chunk.runner:
                up.dependents -= 1
        if res.elsewhere and chunk.handle is not None:
            chunk.values_handle = chunk.handle
            res.fetch = functools.partial(bring_one, chunk)
            eager.elsewhere[(chunk.base, chunk.start)] = chunk
    kept: dict[int, tuple[TaskRunner, list]] = {}
    for c in chunks:
        if c.handle is None or c.runner is None or not c.runner.checkpoints:
            continue
        if c.result.elsewhere or c.dependents > 0:  # type: ignore[union-attr]
            kept.setdefault(id(c.runner), (c.runner, []))[1].append((c.handle, cloudpickle.dumps(c.result, protocol=5)))
    for runner, pairs in kept.values():
        runner.keep(pairs)
    returned = [res for res in envelopes if res.cache_returned is not None]
    if returned:  # remote workers' fresh results: written here, in one transaction
        from daskflow.engine.client.cache_lookup import write_returned

        write_returned(returned)
    for chunk in chunks:
        tracker.chunk_finished(chunk)
        eager.forget(chunk)
        chunk.handle = None  # the runner may now release the data
        chunk.spec, chunk.ups = None, []


def bring_one(chunk: Chunk) -> list:
    """The values of a chunk that stayed on its worker (``ChunkResult.fetch``)."""
    bring_values([chunk])
    return chunk.result.values  # type: ignore[union-attr,return-value]


def bring_values(chunks: Iterable[Chunk], batch_bytes: int = 256 * 2**20) -> None:
    """Bring the values of chunks that stayed on their workers, about ``batch_bytes`` a gather.

    Each envelope gathered gives its values to the chunk's summary and is dropped: the client
    holds one copy. A value lost with its worker is computed again by Dask (recorded as a new
    attempt, ``refresh``); one that cannot be raises ``CrashedRun`` naming the run.
    """
    todo = [c for c in chunks if c.result is not None and c.result.values is None and c.values_handle is not None]
    batch: list[Chunk] = []
    size = 0
    for i, chunk in enumerate(todo):
        batch.append(chunk)
        size += chunk.result.nbytes  # type: ignore[union-attr]
        if size >= batch_bytes or i == len(todo) - 1 or todo[i + 1].runner is not chunk.runner:
            _gather_values(batch)
            batch, size = [], 0


def _gather_values(chunks: list[Chunk]) -> None:
    runner = chunks[0].runner
    handles = [c.values_handle for c in chunks]
    if runner is None or runner.closed:
        raise RunnerShutdown("the task runner holding these values was shut down before they were read; "
                             "read results inside the flow, or return them from it")
    runner.wait(handles, None)
    for chunk, full in zip(chunks, runner.gather(handles)):
        res = chunk.result
        if not isinstance(full, ChunkResult):
            err = CrashedRun(f"task {chunk.task.name!r}: the values of task runs {res.run_name(0)!r}.. (of "  # type: ignore[union-attr]
                             f"{chunk.n}) were lost with their worker and could not be computed again: "
                             f"{type(full).__name__}: {full}")
            raise err from full if isinstance(full, BaseException) else err
        if full.recomputed:
            refresh(chunk, full)  # a new summary: its run counts and history say what happened
        chunk.result.values = full.get_values()  # type: ignore[union-attr]


def refresh(chunk: Chunk, res: ChunkResult) -> None:
    """A new attempt of a chunk whose values were lost with their worker: record it (its runs'
    run_count and history say so) and keep its summary for the next loss."""
    with _fetching:
        summary = res.summary()
        summary.fetch = functools.partial(bring_one, chunk)
        if chunk.result is not None:
            summary.values = chunk.result.values
        chunk.result = summary
        tracker.chunk_finished(chunk)
    runner = chunk.runner
    if runner is not None and runner.checkpoints and chunk.values_handle is not None:
        runner.keep([(chunk.values_handle, cloudpickle.dumps(summary, protocol=5))])


def resubmit(runner: TaskRunner, chunks: list[Chunk]) -> None:
    """Submit again chunks that the runner dropped with its lost scheduler connection.

    Waits up to ``daskflow.reconnect-grace`` seconds for the connection; chunks whose
    envelope the client already holds are not among them, so no recorded run runs again.
    Upstream chunks dropped too go first (their new handles feed the downstream ones).
    Past the grace period the chunks end Crashed, saying why.
    """
    grace = float(config.get("reconnect-grace", 30))
    todo = _with_dropped_upstreams(runner, chunks)
    if not runner.reconnect(grace):
        address = getattr(runner, "address", None) or config.get("scheduler-address") or "the scheduler"
        err = ConnectionError(
            f"lost the connection to the Dask scheduler ({address}) for more than {grace:g}s "
            "(daskflow.reconnect-grace); runs that had not finished are Crashed. Check that the scheduler "
            "is up and reachable, or raise the grace period (DASK_DASKFLOW__RECONNECT_GRACE)."
        )
        settle(todo, [lost(chunk, err) for chunk in todo])
        return
    for chunk in todo:  # in submission order: upstream handles exist before their dependents
        deps = [u.result if u.result is not None else u.handle for u in chunk.ups]
        # the same key: the ledger still holds the checkpoints of the dropped call
        key = chunk.key or f"{chunk.task.name}-{uuid.uuid4().hex}"
        chunk.resubmitted(submit_chunks(runner, [chunk.spec], [deps], [key])[0])  # type: ignore[list-item]
    eager.watch(todo)


def _with_dropped_upstreams(runner: TaskRunner, chunks: list[Chunk]) -> list[Chunk]:
    """``chunks`` and every upstream chunk they need that was dropped too, oldest first."""
    seen: dict[int, Chunk] = {}
    stack = list(chunks)
    while stack:
        chunk = stack.pop()
        if id(chunk) in seen or chunk.result is not None or chunk.spec is None:
            continue
        if chunk.handle is not None and not runner.dropped(chunk.handle):
            continue  # still there, or finished: fetched by whoever reads it
        seen[id(chunk)] = chunk
        stack.extend(chunk.ups)
    return sorted(seen.values(), key=lambda c: c.submitted)


def cancel_unfinished(chunks: list[Chunk], reason: str) -> None:
    """Cancel every run not final yet; their futures read Cancelled from now on.

    Runs that finished are fetched first, so they are recorded as they ended (Completed,
    Failed...), not Cancelled; so are the runs that unfinished chunks noted finished
    (checkpoints in the scheduler's ledger); the others are cancelled with one call per runner.
    """
    fetch_finished(chunks)
    unfinished = [c for c in chunks if c.result is None]
    by_runner: dict[int, tuple[TaskRunner, list[Any]]] = {}
    for chunk in unfinished:
        if chunk.runner is not None and chunk.handle is not None:
            by_runner.setdefault(id(chunk.runner), (chunk.runner, []))[1].append(chunk.handle)
    notes: dict[Any, list[bytes]] = {}
    for runner, handles in by_runner.values():
        try:
            notes.update(runner.notes_of(handles))  # runs that finished inside unfinished chunks
            runner.cancel_many(handles)
        except Exception:  # noqa: BLE001 - the runner may be gone; the runs are recorded Cancelled anyway
            logger.debug("could not cancel runs of %r", runner, exc_info=True)
    ended: list[tuple[Chunk, ChunkResult]] = []
    for chunk in unfinished:
        if chunk.result is None:
            err = CancelledRun(f"task {chunk.task.name!r}: {reason}")
            res = ChunkResult.all_failed(chunk.task.name, chunk.base, chunk.start, chunk.n, CANCELLED, err, str(err))
            finished = Checkpoint.joined(notes.get(chunk.handle, []), chunk.n) if chunk.handle is not None else None
            if finished is not None:
                keep_finished_runs(res, finished)
            chunk.observe()
            ended.append((chunk, res))
    if ended:
        settle([c for c, _ in ended], [res for _, res in ended])


class Eager:
    """Fetches envelopes as chunks finish, in batches, told by the workers' events.

    A finished chunk's envelope then lives on the client, which releases the Dask result:
    a worker dying later costs nothing, and the tracker records completions as they happen.
    Chunks that queued chunks depend on stay on the workers (their values go worker to
    worker, not through the client); if Dask computes one again, it resumes from the
    ledger's checkpoints (``engine.worker.checkpoints.Notes``) or the envelope the client kept.

    What tells it a chunk finished is the ``ChunkEnded`` message its worker sends anyway
    (``tracker.listen``, ~100 ms batches): a Dask done callback per future costs a
    coroutine on the client's event loop and a thread hand-off each, a third of the client's
    time on a graph of single-run chunks. An event can come before Dask tells the client the
    call finished: such chunks are looked at again every 50 ms. Chunks that end without an
    event (a lost worker, a cancelled call) are fetched by whoever reads them.

    An event can also come before its chunk is watched: a short chunk that ends while the
    submitting thread waits for the GIL between submitting and ``watch``. A summary (values
    that stayed on the worker) that finds no watched chunk waits in ``early``
    (``EarlyMessages``), so that a reader records the chunk from it instead of gathering its
    values.
    """

    RECHECK = 0.05

    def __init__(self) -> None:
        self.watched: dict[tuple[int, int], Chunk] = {}  # submitted to Dask, no end event yet
        self.summaries: dict[tuple[int, int], bytes] = {}  # end events of chunks whose values stayed away
        self.early: EarlyMessages[bytes] = EarlyMessages()  # such summaries that came before ``watch``
        self.watching = threading.Lock()  # ``watch`` and ``on_ended`` agree on which came first
        # settled chunks whose values stayed on a worker: a new attempt of one reports here
        self.elsewhere: weakref.WeakValueDictionary[tuple[int, int], Chunk] = weakref.WeakValueDictionary()
        self.refreshed: collections.deque[tuple[Chunk, bytes]] = collections.deque()
        self.ready: collections.deque[Chunk] = collections.deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def watch(self, chunks: list[Chunk]) -> None:
        watched, early, runner, ends_reported = self.watched, self.early, None, False
        came: list[Chunk] = []
        with self.watching:
            for chunk in chunks:
                if chunk.runner is not runner:  # one question per runner, not per chunk
                    runner = chunk.runner
                    ends_reported = runner is not None and runner.reports_ends()
                if ends_reported and chunk.handle is not None:
                    key = (chunk.base, chunk.start)
                    if early and key in early:
                        self.summaries[key] = early.take(key)[-1]
                        came.append(chunk)
                    else:
                        watched[key] = chunk
        if came:
            self._queue(came)

    def forget(self, chunk: Chunk) -> None:
        key = (chunk.base, chunk.start)
        self.watched.pop(key, None)
        self.summaries.pop(key, None)

    def summary_of(self, chunk: Chunk) -> ChunkResult:
        """The envelope without values that the chunk's end event carried."""
        return cloudpickle.loads(self.summaries.pop((chunk.base, chunk.start)))

    def on_ended(self, msgs: list[Any]) -> None:
        # Called on the client's event loop: only queue; the fetcher thread gathers whatever
        # ended meanwhile in one go, so a burst of finished chunks costs one gather.
        ended = []
        with self.watching:
            for msg in msgs:
                key = (msg.base, msg.start)
                chunk = self.watched.pop(key, None)
                if msg.summary:
                    if chunk is not None:
                        self.summaries[key] = msg.summary
                    elif key in self.elsewhere:  # a new attempt of a chunk whose values were lost
                        self.refreshed.append((self.elsewhere[key], msg.summary))
                        chunk = self.elsewhere[key]
                    else:  # not watched yet (or another client's): kept a while for ``watch``
                        self.early.keep(key, msg.summary)
                if chunk is not None:
                    ended.append(chunk)
        if ended:
            self._queue(ended)

    def on_aside(self, msgs: list[Any]) -> None:
        """Chunks waiting for retry delays only: their runner's window sends other calls meanwhile."""
        for msg in msgs:
            chunk = self.watched.get((msg.base, msg.start))
            if chunk is not None and chunk.runner is not None:
                chunk.runner.step_aside(chunk.handle)

    def _queue(self, ended: list[Chunk]) -> None:
        self.ready.extend(ended)
        self.wake.set()
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._fetch_forever, name="daskflow-fetch", daemon=True)
                    self.thread.start()

    def _fetch_forever(self) -> None:
        later: list[Chunk] = []  # ended on the worker, not yet finished for the client
        while True:
            self.wake.wait(self.RECHECK if later else None)
            self.wake.clear()
            todo, later = later, []
            while self.ready:
                todo.append(self.ready.popleft())
            while self.refreshed:
                chunk, blob = self.refreshed.popleft()
                refresh(chunk, cloudpickle.loads(blob))
            with _fetching:  # values that stayed on the workers: recorded from their summaries
                told = [c for c in todo if c.handle is not None and (c.base, c.start) in self.summaries]
                if told:
                    settle_told(told)
            batch: dict[int, tuple[TaskRunner, list[Chunk]]] = {}
            for c in todo:
                if c.handle is None or c.dependents or c.runner is None or c.runner.closed:
                    continue
                if not c.handle.done():
                    later.append(c)
                    continue
                batch.setdefault(id(c.runner), (c.runner, []))[1].append(c)
            for runner, group in batch.values():
                try:
                    fetch_many(runner, group, 0)
                except Exception:  # a reader fetches them again, and reports the problem
                    pass


eager = Eager()
tracker.listen(ChunkEnded, eager.on_ended)  # from the start: a chunk's event may come before it is watched
tracker.listen(ChunkAside, eager.on_aside)
