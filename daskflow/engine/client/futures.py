"""Futures of task runs.

A submission becomes one or more *chunks* (one Dask task each, ``engine.client.chunks``).
A ``TaskRunFuture`` is a (chunk, index) pair; ``MapFutures`` is the future
list of a ``.map()`` and makes element futures only when they are asked for, so a
10^6-element map holds a few hundred chunk records, not 10^6 objects.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import queue
import time
from collections.abc import Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, NamedTuple, Protocol, TypeVar, overload

from daskflow.codes import OK_CODES
from daskflow.engine.client.chunks import Chunk, bring_values, fetch_all
from daskflow.engine.core import states as st
from daskflow.engine.core.tracebacks import hide_internal
from daskflow.engine.tracking import tracker
from daskflow.ids import run_id

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

R = TypeVar("R")


class TaskRunFuture(Generic[R]):
    """The future of one task run.

    Example:
        >>> fut = add.submit(1, 2)     # doctest: +SKIP
        >>> fut.result(), fut.state.name  # doctest: +SKIP
        (3, 'Completed')
    """

    __slots__ = ("_chunk", "_index", "__weakref__")

    def __init__(self, chunk: Chunk, index: int = 0) -> None:
        self._chunk = chunk
        self._index = index

    @property
    def task_run_id(self) -> str:
        return run_id(self._chunk.base, self._chunk.start + self._index)

    @property
    def chunk(self) -> Chunk:
        """The chunk holding this run (the engine's handle on where it executes)."""
        return self._chunk

    @property
    def index(self) -> int:
        """This run's position in its chunk."""
        return self._index

    @property
    def task(self) -> Task:
        return self._chunk.task

    def done(self) -> bool:
        return self._chunk.done()

    @property
    def state(self) -> st.State:
        """The latest known state: Pending until the run's final state is known."""
        chunk = self._chunk
        chunk.observe(self._index)
        if chunk.result is None:
            if not chunk.handle.done():
                return tracker.live_state(chunk.base, chunk.start) or st.State(st.StateType.PENDING,
                                                                               timestamp=chunk.submitted)
            chunk.outcome()
        return chunk.result.state(self._index)  # type: ignore[union-attr]

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the run is final (or ``timeout`` seconds passed); never raises for failure."""
        try:
            self._chunk.outcome(timeout)
        except TimeoutError:
            pass

    def history(self) -> list[st.State]:
        """Every state the run went through, oldest first (waits for the final one)."""
        chunk = self._chunk
        return chunk.outcome().states(self._index, chunk.submitted)

    @property
    def run_count(self) -> int:
        """How many times the run's body was attempted (waits for the final state)."""
        return self._chunk.outcome().run_count(self._index)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's value; raises its exception if it failed (``raise_on_failure``).

        Read again later, a run of a ``.map()`` chunk that a stream moved past (see
        ``MapFutures.__iter__``) returns its value unpickled again: equal, not the same object.
        """
        chunk, i = self._chunk, self._index
        res = chunk.outcome(timeout)
        chunk.observe(i)
        if res.kept is None and res.codes[i] in OK_CODES:  # the common case: no State built
            return res.get_values()[i]
        try:
            return res.state(i).value(raise_on_failure)
        except Exception as exc:  # raised here, not three engine frames down
            raise hide_internal(exc)  # noqa: B904 - the same exception

    def add_done_callback(self, fn: Callable[[TaskRunFuture[R]], None]) -> None:
        """Call ``fn(future)`` once the run is final (at once if it already is)."""
        self._chunk.add_done_callback(lambda _: fn(self))

    def cancel(self) -> bool:
        """Cancel the run if it has not started; True if it will not run."""
        return self._chunk.cancel()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskRunFuture) and other._chunk is self._chunk and other._index == self._index

    def __hash__(self) -> int:
        return hash((id(self._chunk), self._index))

    def __repr__(self) -> str:
        return f"TaskRunFuture({self._chunk.task.name!r}, task_run_id={self.task_run_id!r})"


class MapFutures(Sequence, Generic[R]):
    """The futures of a ``.map()``: a read-only sequence with ``result()`` and ``wait()``."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self._starts = [c.start for c in chunks]
        self._n = sum(c.n for c in chunks)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> TaskRunFuture[R]: ...

    @overload
    def __getitem__(self, i: slice) -> list[TaskRunFuture[R]]: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("map future index out of range")
        chunk = self.chunks[bisect.bisect_right(self._starts, i) - 1]
        return TaskRunFuture(chunk, i - chunk.start)

    def __iter__(self) -> Iterator[TaskRunFuture[R]]:
        """The element futures in order, made one at a time.

        Once the iteration moves past a chunk whose values arrived pickled, their unpickled
        copy is dropped (``ChunkResult.release_values``): a loop ``for f in futs: f.result()``
        over 10^7 runs holds one chunk's values at a time, not 10^7 objects.
        """
        for chunk in self.chunks:
            yield from map(TaskRunFuture, repeat(chunk, chunk.n), range(chunk.n))
            if chunk.result is not None:
                chunk.result.release_values()

    def __repr__(self) -> str:
        name = self.chunks[0].task.name if self.chunks else "?"
        return f"MapFutures({name!r}, runs={self._n}, chunks={len(self.chunks)})"

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every run is final (or ``timeout`` seconds passed)."""
        fetch_all(self.chunks, timeout, raise_timeout=False)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Every run's value in order; raises the first failure (``raise_on_failure``).

        Values that stayed on the workers come in batches of gathers, one copy held.
        """
        fetch_all(self.chunks, timeout)
        bring_values(self.chunks)
        out: list = []
        for chunk in self.chunks:
            chunk.observe()
            res = chunk.outcome()
            if res.n_failed:
                try:
                    out.extend(res.state(i).value(raise_on_failure) for i in range(res.n))
                except Exception as exc:  # raised here, not three engine frames down
                    raise hide_internal(exc)  # noqa: B904 - the same exception
            else:
                out.extend(res.get_values())
        return out

    @property
    def states(self) -> list[st.State]:
        fetch_all(self.chunks, None)
        return [c.result.state(i) for c in self.chunks for i in range(c.n)]  # type: ignore[union-attr]

    NO_INITIAL: Any = object()  # reduce() without an initial value

    def iter_chunks(self, timeout: float | None = None) -> Iterator[MapChunk]:
        """The runs' outcomes a chunk at a time, as chunks complete; each chunk's values are
        let go once yielded.

        For maps too big to keep: the client holds O(chunks), not O(runs), however many runs
        stream through. Afterwards every run's state still answers (``futs[i].state``), but a
        completed run's value is gone: ``futs[i].result()`` raises ``MissingResult``.

        Example:
            >>> total = 0
            >>> for part in inc.map(range(10**8)).iter_chunks():  # doctest: +SKIP
            ...     total += sum(part.values)
        """
        return self.iter_chunks_of(in_completion_order(self.chunks, timeout), "MapFutures.iter_chunks()")

    @staticmethod
    def iter_chunks_of(chunks: Iterable[Chunk], reader: str) -> Iterator[MapChunk]:
        """``iter_chunks`` over chunks in the order given; ``reader`` is named if a value is
        asked for afterwards."""
        for chunk in chunks:
            res = chunk.outcome()
            values = res.get_values()
            failures = {}
            if res.n_failed:
                failures = {chunk.start + i: res.state(i) for i, code in enumerate(res.codes) if code not in OK_CODES}
            chunk.observe()
            yield MapChunk(chunk.start, values, failures)
            chunk.released_by(reader)

    def reduce(self, fn: Callable[[Any, Any], Any], initial: Any = NO_INITIAL, timeout: float | None = None) -> Any:
        """Every run's value folded with ``fn(accumulated, value)``, chunk by chunk where the
        values are, as chunks complete; raises the first failed run's exception.

        A chunk's values are folded on the worker they stayed on (only the fold travels) or
        here when they came with its states; the folds are then combined in map order, so
        ``fn`` must be associative (as for Dask Bag's ``fold``). Like ``iter_chunks``, each
        chunk's values are let go once folded: a 10^8 sum never holds 10^8 values anywhere.

        Example:
            >>> inc.map(range(10**8)).reduce(operator.add)  # doctest: +SKIP
        """
        return fold_chunks(in_completion_order(self.chunks, timeout), fn, initial)


def fold_chunks(chunks: Iterable[Chunk], fn: Callable[[Any, Any], Any], initial: Any) -> Any:
    """``reduce`` over chunks in the order given (see ``MapFutures.reduce``)."""
    folds: dict[int, Any] = {}  # chunk start -> the fold of its values
    remote: list[Chunk] = []  # chunks whose values stayed on a worker: folded there
    for chunk in chunks:
        res = chunk.outcome()
        if res.n_failed:
            chunk.observe()
            first = next(i for i, code in enumerate(res.codes) if code not in OK_CODES)
            res.state(first).value()  # raises the run's exception
        if res.values is None and res.blob is None and chunk.values_handle is not None:
            remote.append(chunk)
            continue
        folds[chunk.start] = functools.reduce(fn, res.get_values())
        chunk.observe()
        chunk.released_by("reduce()")
    if remote:
        folds.update(_fold_remote(remote, fn))
    parts = [folds[start] for start in sorted(folds)]
    if initial is not MapFutures.NO_INITIAL:
        parts.insert(0, initial)
    if not parts:
        raise TypeError("reduce() of a map with no runs and no initial value")
    return functools.reduce(fn, parts)


def _fold_remote(chunks: list[Chunk], fn: Callable[[Any, Any], Any]) -> dict[int, Any]:
    """Fold chunks' values on the workers holding them; ``{chunk start: fold}``."""
    from daskflow.engine.worker.run import fold_values

    out: dict[int, Any] = {}
    by_runner: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_runner.setdefault(id(chunk.runner), []).append(chunk)
    for group in by_runner.values():
        runner = group[0].runner
        keys = [f"fold-{chunk.key or run_id(chunk.base, chunk.start)}" for chunk in group]
        handles = runner.submit_many(fold_values, [fn] * len(group), [c.values_handle for c in group], keys=keys)
        runner.wait(handles, None)
        for chunk, fold in zip(group, runner.gather(handles)):
            if isinstance(fold, BaseException):
                raise fold
            out[chunk.start] = fold
            chunk.observe()
            chunk.released_by("reduce()")
    return out


class MapChunk(NamedTuple):
    """One chunk of a ``.map()``'s runs, as ``MapFutures.iter_chunks`` yields it."""

    start: int  # the map index of its first run
    values: list  # each run's value in map order (None where a run did not complete)
    failures: dict[int, st.State]  # map index -> final state, for the runs that did not complete


#: How many chunks ``in_completion_order`` watches at a time beyond those it yielded.
WATCHED = 64


def in_completion_order(chunks: list[Chunk], timeout: float | None) -> Iterator[Chunk]:
    """``chunks`` as their calls finish.

    A done callback is a coroutine on Dask's event loop until its future ends (~3 KB), so
    the chunks are watched ``WATCHED`` at a time, in submission order, one more for each
    chunk yielded: a map of 1,000 chunks sent through a window of 4 held ~3 MB of
    callbacks on chunks not even sent. A chunk that ends before it is watched is yielded
    once it is (a window sends chunks in submission order, so that is rare and short).
    """
    _check_timeout(timeout)
    done: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
    ahead = iter(chunks)
    for chunk in itertools.islice(ahead, WATCHED):
        chunk.add_done_callback(done.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    for left_chunks in range(len(chunks), 0, -1):
        try:
            chunk = done.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{left_chunks} (of {len(chunks)}) chunks unfinished after {timeout}s") from None
        following = next(ahead, None)
        if following is not None:
            following.add_done_callback(done.put)
        yield chunk


class RunFuture(Protocol):
    """What ``wait`` and ``as_completed`` need of a future that is not a task-run future.

    Background futures (``t.delay()``) are such futures: the engine knows them by this
    interface only. A type may offer ``wait_many(futures, timeout)`` to wait for many in
    one go.
    """

    def done(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> None: ...

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...


def _unique_chunks(futures: Iterable[TaskRunFuture]) -> dict[int, Chunk]:
    return {id(fut._chunk): fut._chunk for fut in futures}


def _flatten(futures: Iterable[Any]) -> list[Any]:
    """Every future in ``futures``: future lists (a ``.map()``'s, a list) are opened."""
    out: list[Any] = []
    for fut in futures:
        if isinstance(fut, (MapFutures, list, tuple)):
            out.extend(_flatten(fut))
        else:
            out.append(fut)
    return out


def _wait_others(others: list[RunFuture], deadline: float | None) -> None:
    by_type: dict[type, list[RunFuture]] = {}
    for fut in others:
        by_type.setdefault(type(fut), []).append(fut)
    for kind, group in by_type.items():
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait_many = getattr(kind, "wait_many", None)
        if wait_many is not None:
            wait_many(group, left)
        else:
            for fut in group:
                fut.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))


class DoneAndNotDoneFutures(NamedTuple):
    """What ``wait`` returns: the futures that are final and those that are not (a pair)."""

    done: set[Any]
    not_done: set[Any]


def wait(futures: Iterable[Any], timeout: float | None = None) -> DoneAndNotDoneFutures:
    """Wait for runs to be final; return ``(done, not_done)`` as sets of futures.

    Takes task-run futures, ``.map()`` future lists, and background futures (``t.delay()``).

    Example:
        >>> done, not_done = wait([a.submit(), b.submit()], timeout=5)  # doctest: +SKIP
    """
    _check_timeout(timeout)
    futures = _flatten(futures)
    ours = [f for f in futures if isinstance(f, TaskRunFuture)]
    others = [f for f in futures if not isinstance(f, TaskRunFuture)]
    deadline = None if timeout is None else time.monotonic() + timeout
    fetch_all(_unique_chunks(ours).values(), timeout, raise_timeout=False)
    if others:
        _wait_others(others, deadline)
    done = {f for f in ours if f._chunk.result is not None} | {f for f in others if f.done()}
    return DoneAndNotDoneFutures(done, set(futures) - done)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout}")


def _group_by_completion(futures: Iterable[Any], groups: dict[int, list[Any]]) -> int:
    """Put each future in the group of what completes it; return how many futures there are.

    A chunk's group holds its task-run futures, and the chunk itself for all its runs when a
    ``.map()``'s future list was given (its element futures are made as they are yielded);
    any other future is a group of its own.
    """
    count = 0
    for fut in futures:
        if isinstance(fut, MapFutures):
            for chunk in fut.chunks:
                groups.setdefault(id(chunk), []).append(chunk)
            count += len(fut)
        elif isinstance(fut, (list, tuple)):
            count += _group_by_completion(fut, groups)
        else:
            groups.setdefault(id(fut._chunk) if isinstance(fut, TaskRunFuture) else id(fut), []).append(fut)
            count += 1
    return count


def _yield_group(group: list[Any]) -> Iterator[Any]:
    first = group[0]
    if not isinstance(first, (Chunk, TaskRunFuture)):
        yield first
        return
    chunk = first if isinstance(first, Chunk) else first._chunk
    res = chunk.outcome()
    for item in group:
        if isinstance(item, Chunk):
            yield from map(TaskRunFuture, repeat(item, item.n), range(item.n))
        else:
            yield item
    res.release_values()  # read, or not wanted now: a later read unpickles again


def as_completed(futures: Iterable[Any], timeout: float | None = None) -> Iterator[Any]:
    """Yield futures as their runs become final, in completion order.

    Takes task-run futures, ``.map()`` future lists, and background futures (``t.delay()``).
    A ``.map()``'s element futures are made as they are yielded, and once the iteration
    moves past a chunk its unpickled values are dropped (``ChunkResult.release_values``):
    streaming 10^7 runs holds compact per-chunk envelopes, not 10^7 futures and values.

    Example:
        >>> for fut in as_completed(double.map(range(10))):  # doctest: +SKIP
        ...     print(fut.result())
    """
    _check_timeout(timeout)
    if hasattr(futures, "as_completed"):  # a MapStream: its runs are submitted as they are read
        yield from futures.as_completed()  # type: ignore[union-attr]
        return
    groups: dict[int, list[Any]] = {}
    total = _group_by_completion([futures] if isinstance(futures, MapFutures) else futures, groups)
    done: queue.SimpleQueue[int] = queue.SimpleQueue()
    for key, group in groups.items():
        first = group[0]
        if isinstance(first, TaskRunFuture):
            first = first._chunk
        first.add_done_callback(lambda _, key=key: done.put(key))
    deadline = None if timeout is None else time.monotonic() + timeout
    finished = 0
    while groups:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            key = done.get(timeout=left)
        except queue.Empty:
            raise TimeoutError(f"{total - finished} (of {total}) futures unfinished after {timeout}s") from None
        group = groups.pop(key)
        finished += sum(item.n if isinstance(item, Chunk) else 1 for item in group)
        yield from _yield_group(group)
