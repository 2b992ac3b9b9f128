"""A ``.map()`` over an iterator: runs submitted as the iterator is consumed, a window at a time.

``t.map(generator)`` does not read the generator through: it returns a ``MapStream``, which
cuts chunks as it reads (``chunking.stream_size``) and keeps at most a *window* of chunks
submitted and not yet consumed (``daskflow.map.stream-window``, default four per worker
thread), of ``daskflow.map.stream-read-ahead`` runs in all at most. Reading the stream (``iter_chunks``, ``reduce``, iteration, ``result``) submits more.
So a map over 10^8 generated elements never holds them on the client, and the scheduler
sees a window of Dask tasks, not the whole map. ``range``s and lists need none of this: a
chunk carries its slice (a ``range`` as its bounds).

Sized arguments mapped beside the iterator are sliced window by window; ``unmapped``,
``quote`` and the other broadcast rules are those of ``.map()``. At the end of a flow, a
stream nobody read is read through (its runs all run, as every run a flow submits does);
one whose reader stopped early (``break``) submits nothing more.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sized
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable

from daskflow import config
from daskflow.engine.client import chunking
from daskflow.engine.client.chunks import Chunk
from daskflow.engine.client.futures import MapChunk, MapFutures, TaskRunFuture, fold_chunks
from daskflow.engine.core.context import flow_run_ctx
from daskflow.engine.core.inputs import allow_failure, quote, unmapped
from daskflow.exceptions import MappingLengthMismatch
from daskflow.ids import new_run_base

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

Submit = Callable[[dict, int, int, int], MapFutures]  # (window's arguments, run base, offset, chunksize)


def is_stream_input(value: Any) -> bool:
    """Whether a ``.map()`` argument is read lazily: an iterator (a generator, ``map``, a file...)."""
    return isinstance(value, (Iterator, MapStream))


class MapStream:
    """The futures of a ``.map()`` over an iterator (see the module's text).

    Example:
        >>> rows = (parse(line) for line in open("big.csv"))  # doctest: +SKIP
        >>> total = clean.map(rows).reduce(operator.add)       # doctest: +SKIP
    """

    def __init__(self, task: Task, params: dict[str, Any], given: set[str], wait_for: Any,
                 chunksize: int | None, submit: Submit) -> None:
        from daskflow.engine.client.submit import current_runner

        self.task = task
        self._submit = submit
        self._chunksize = chunksize
        self._iterators: dict[str, Iterator] = {}
        self._sized: dict[str, Any] = {}  # mapped beside the iterators, sliced window by window
        self._fixed: dict[str, Any] = {}  # passed whole to every window (broadcast by .map()'s rules)
        for name in given:
            value = params[name]
            if is_stream_input(value):
                self._iterators[name] = iter(value)
            elif _mapped_sequence(value):
                self._sized[name] = value if hasattr(value, "__getitem__") else list(value)
            else:
                self._fixed[name] = value
        self._base = new_run_base()
        self._offset = 0  # the map index of the next element read
        self._size = 0  # the last chunk size cut
        self._open: dict[int, Chunk] = {}  # submitted and not yet consumed, in map order
        self._done: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self._exhausted = False
        self._stopped = False  # a reader stopped early: nothing more is submitted
        threads = current_runner().total_threads()
        self.window = int(config.get("map.stream-window") or 0) or max(2, 4 * threads)
        # the inputs of the window's chunks stay here until their envelopes come (to submit them
        # again after a lost connection): at most ``map.stream-read-ahead`` runs' worth, so chunks
        # of a window of 8 are 25,000 runs at most, not ``map.max-chunksize``'s 10^5
        ahead = config.get("map.stream-read-ahead")
        self._most = max(1, int(ahead) // self.window) if ahead and not chunksize else 2**62
        self._ctx = flow_run_ctx.get()
        self._taken = 0  # chunks taken by readers so far
        self._next_sweep = 64
        if self._ctx is not None:
            self._ctx.streams.append(self)

    # -- submitting ---------------------------------------------------------------------
    def _fill(self) -> None:
        """Submit chunks until the window is full or the iterator is read through."""
        while not self._exhausted and not self._stopped and len(self._open) < self.window:
            size = self._size = min(chunking.stream_size(self.task, self._size, self._chunksize), self._most)
            block, count, error = self._read((self.window - len(self._open)) * size)
            if count:
                futs = self._submit(block, self._base, self._offset, size)
                self._offset += count
                for chunk in futs.chunks:
                    self._open[id(chunk)] = chunk
                    chunk.add_done_callback(self._done.put)
            if error is not None:
                raise error

    def _read(self, wanted: int) -> tuple[dict[str, Any], int, BaseException | None]:
        """The next ``wanted`` (or fewer, at the end) elements of every mapped argument, and the
        error an iterator raised meanwhile (the elements read before it are submitted)."""
        parts: dict[str, list] = {}
        error = None
        for name, it in self._iterators.items():
            part = parts[name] = []
            try:
                part.extend(islice(it, wanted))
            except Exception as exc:
                self._exhausted, error = True, exc
                exc.add_note(f"task {self.task.name!r}: .map() argument {name!r} raised at element "
                             f"{self._offset + len(part)}; the runs of the elements before it were submitted")
                wanted = len(part)
        lengths = {name: len(p) for name, p in parts.items()}
        count = min(lengths.values())
        if error is not None:
            for name in parts:
                parts[name] = parts[name][:count]
            lengths = dict.fromkeys(parts, count)
        for name, seq in self._sized.items():
            part = seq[self._offset:self._offset + count]
            parts[name] = part if isinstance(part, (list, range)) else list(part)
            lengths[name] = len(part)
        if count < wanted and error is None:
            self._exhausted = True
            for name, seq in self._sized.items():
                lengths[name] = len(seq) - self._offset
        if len(set(lengths.values())) > 1:
            self._exhausted = True
            at = {name: self._offset + n for name, n in lengths.items()}
            raise MappingLengthMismatch(f"task {self.task.name!r}: .map() arguments ended at different "
                                        f"lengths ({', '.join(f'{k}={v}' for k, v in at.items())})")
        block = dict(self._fixed)
        block.update(parts)
        return block, count, error

    # -- reading ------------------------------------------------------------------------
    def _completed(self, timeout: float | None = None) -> Iterator[Chunk]:
        """The stream's chunks as they complete, submitting more as each is taken."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._fill()
            while self._open:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    chunk = self._done.get(timeout=left)
                except queue.Empty:
                    raise TimeoutError(f"task {self.task.name!r}: {len(self._open)} chunks of the stream "
                                       f"unfinished after {timeout}s") from None
                if self._open.pop(id(chunk), None) is None:
                    continue  # taken in order by an earlier reader
                self._fill()
                self._sweep()
                yield chunk
        except GeneratorExit:
            self._stopped = True
            raise

    def _sweep(self) -> None:
        """Drop from the flow run's list the chunks a reader consumed and let go (final, recorded,
        their failures seen): a stream's client memory is then its window, not its length.
        Amortised: a sweep once the flow run's list may have doubled."""
        self._taken += 1
        ctx = self._ctx
        if ctx is None or self._taken < self._next_sweep:
            return
        ctx.submitted[:] = [c for c in ctx.submitted
                            if c.result is None or not c.result.released or c.observed is not True]
        self._next_sweep = self._taken + max(64, len(ctx.submitted))

    def _in_order(self) -> Iterator[Chunk]:
        self._fill()
        while self._open:
            chunk = self._open.pop(next(iter(self._open)))
            self._fill()
            yield chunk

    def iter_chunks(self, timeout: float | None = None) -> Iterator[MapChunk]:
        """The runs' outcomes a chunk at a time, as chunks complete (``MapFutures.iter_chunks``)."""
        return MapFutures.iter_chunks_of(self._completed(timeout), "MapStream.iter_chunks()")

    def reduce(self, fn: Callable[[Any, Any], Any], initial: Any = MapFutures.NO_INITIAL,
               timeout: float | None = None) -> Any:
        """Every run's value folded with ``fn`` where the values are (``MapFutures.reduce``)."""
        return fold_chunks(self._completed(timeout), fn, initial)

    def as_completed(self) -> Iterator[TaskRunFuture]:
        """Element futures as their chunks complete (what ``as_completed(stream)`` yields)."""
        for chunk in self._completed():
            yield from MapFutures([chunk])

    def __iter__(self) -> Iterator[TaskRunFuture]:
        """Element futures in map order; each value stays readable (as a ``.map()``'s do)."""
        for chunk in self._in_order():
            yield from MapFutures([chunk])

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list:
        """Every run's value in map order (all of them held: for what fits in memory)."""
        out: list = []
        for chunk in self._in_order():
            out.extend(MapFutures([chunk]).result(timeout, raise_on_failure))
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Read the stream through and wait for every run to be final."""
        for chunk in self._completed(timeout):
            chunk.outcome()

    def drain(self) -> None:
        """At the end of a flow: a stream nobody stopped runs through; values are not kept."""
        if not self._stopped:
            for _ in self.iter_chunks():
                pass

    def stop(self) -> None:
        """Submit nothing more (an interrupted flow); what was submitted finishes or is cancelled."""
        self._stopped = True

    def __len__(self) -> int:
        if not self._exhausted:
            raise TypeError(f"task {self.task.name!r}: a .map() over an iterator has no length until it "
                            "is read through")
        return self._offset

    def __repr__(self) -> str:
        return f"MapStream({self.task.name!r}, read={self._offset}, open_chunks={len(self._open)})"


def _mapped_sequence(value: Any) -> bool:
    """Whether ``.map()`` would map over ``value`` (rather than pass it whole to every run)."""
    if isinstance(value, (unmapped, quote, allow_failure, str, bytes, bytearray, dict)):
        return False
    return isinstance(value, Sized) and hasattr(value, "__iter__")

