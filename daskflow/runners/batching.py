"""Calls submitted in a burst reach the Dask scheduler as one graph.

Every ``client.submit`` is one ``update-graph`` message: the client pickles it, walks
the caller's stack for Dask's record of computations and hands it to its event loop;
the scheduler unpickles it and makes its task states, a message at a time. A program
that builds a graph call by call (a chain, a diamond of ``.submit()`` calls) pays that
for every call, and on a LocalCluster the scheduler shares the client's process. One
graph of many calls pays it once: on this machine a diamond of 1,201 calls costs about
half of what 1,201 ``client.submit`` calls cost.

``GraphBuffer`` holds the calls of a burst and sends them as one graph:

- A call's handle exists at once: its Dask ``Future`` names the call's key before the
  scheduler knows it, and is pending until the scheduler reports on it.
- Held calls go after ``delay`` seconds (``daskflow.submit-batch.delay``, a timer on the
  client's event loop: less than the 10 ms Dask's client holds its own messages), once
  ``max-calls`` are held, or at once when anything needs the scheduler to know them
  (waiting on a call or cancelling one: ``flush``).
- Order: graphs go in submission order, and a held call's argument futures are kept
  until its graph is sent. A future released before that would reach the scheduler
  first, and it would cancel the call for "lost dependencies".

It uses names Dask does not document (``Client._graph_to_futures``,
``dask._expr.LLGExpr``, ``dask._task_spec``: what ``client.submit`` and ``client.map``
use), through ``runners.dask_internals``; where they are missing or changed, switched
off (``daskflow.dask-internals``), or with a delay of 0, calls go one
``client.submit``/``client.map`` at a time as before.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from daskflow import config
from daskflow.runners import dask_internals
from daskflow.runners.window import Windows

if TYPE_CHECKING:
    from distributed import Client, Future


def available() -> bool:
    """Whether the graph path can be used now (``dask_internals``: detected once, and switched on)."""
    return dask_internals.enabled("graph")


def settings() -> tuple[float, int]:
    """``(delay seconds, max calls)`` of ``daskflow.submit-batch``; a delay of 0 turns holding off."""
    import dask.utils

    delay = config.get("submit-batch.delay", 0.002)
    seconds = dask.utils.parse_timedelta(delay, default="s") if delay not in (None, "") else 0.0
    return float(seconds or 0.0), int(config.get("submit-batch.max-calls", 512) or 1)


class GraphBuffer:
    """Calls held for one client, sent as one graph (see the module's text)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.delay, self.max_calls = settings()
        self.holding = self.delay > 0 and available()
        self.tasks: dict[str, Any] = {}  # key -> dask Task, in submission order
        self.keep: list[Any] = []  # the held calls' futures and argument lists, until sent
        self.lock = threading.Lock()  # held while appending and while sending: graphs go in order
        self.armed = False
        if self.holding:
            from distributed import Future

            (self.make_task, self.parse), self.future = dask_internals.task_spec(), Future
        self.windows = Windows(self.send_now, self.future if self.holding else object)

    def submit(self, fn: Callable[..., Any], iterables: tuple[list, ...], keys: list[str],
               window: int = 0, prepare: Callable[[Any], Any] | None = None) -> list[Future]:
        """Hold ``fn(*row)`` for each row of ``iterables``; their futures, made now. With a
        ``window``, at most that many of these calls are sent and unfinished at a time
        (``runners.window``). ``prepare`` turns a row's first argument into what is sent,
        when the call goes (a chunk's spec pickled)."""
        client = self.client
        if not self.holding or client.status in ("closing", "closed"):  # one message per submission
            # (a closed client refuses here, with Dask's own error, as before batching)
            if prepare is not None:
                iterables = ([prepare(x) for x in iterables[0]], *iterables[1:])
            if len(keys) == 1:  # client.submit costs about half of a one-element client.map
                return [client.submit(fn, *(it[0] for it in iterables), key=keys[0], pure=False)]
            return client.map(fn, *iterables, key=keys, pure=False)
        build = self.builder(fn, prepare)
        futures = [self.future(key, client) for key in keys]
        windows = self.windows
        rows = list(zip(*iterables))
        if window and len(keys) > window:
            tasks, _ = windows.admit(keys, futures, rows, window, build)
        elif windows.busy() and any(map(windows.needs, rows)):  # they need calls still held: they wait their turn
            tasks, _ = windows.admit(keys, futures, rows, 0, build)
        else:
            tasks = {key: build(key, row) for key, row in zip(keys, rows)}
        self._hold(tasks, futures, iterables)  # all rows kept until the next graph: some go in it
        return futures

    def builder(self, fn: Callable[..., Any], prepare: Callable[[Any], Any] | None) -> Callable[[str, tuple], Any]:
        """How a call's graph node is made from its key and row; a row ``prepare`` fails on
        becomes a call that ends in that error alone."""
        make, parse = self.make_task, self.parse

        def build(key: str, row: tuple) -> Any:
            if prepare is not None:
                try:
                    row = (prepare(row[0]), *row[1:])
                except Exception as exc:  # noqa: BLE001 - reported through the call's own future
                    return make(key, refuse, f"{key}: its arguments could not be serialized ({type(exc).__name__}: {exc})")
            return make(key, fn, *map(parse, row))
        return build

    def send_now(self, tasks: dict[str, Any], rows: list[tuple]) -> None:
        """Send these calls (and any held for one graph before them) at once, in order; their
        ``rows`` (argument lists) are kept until then, like those of any held call."""
        with self.lock:
            self.tasks.update(tasks)
            self.keep.append(rows)
        self.flush()

    def _hold(self, tasks: dict[str, Any], futures: list[Future], iterables: tuple[list, ...]) -> None:
        """Hold calls for the next graph, sent at once when ``max-calls`` are held, else on a timer."""
        if not tasks:
            return
        client = self.client
        with self.lock:
            self.tasks.update(tasks)
            self.keep.append((futures, iterables))
            full = len(self.tasks) >= self.max_calls
            arm = not full and not self.armed
            self.armed = self.armed or arm
        if full:
            self.flush()
        elif arm:
            client.loop.add_callback(self._arm)

    def _arm(self) -> None:
        from tornado.ioloop import IOLoop

        IOLoop.current().call_later(self.delay, self._flush_on_timer)

    def _flush_on_timer(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the client closed: its futures are cancelled with it
            pass

    def flush(self) -> None:
        """Send every held call to the scheduler now, as one graph."""
        if not self.holding:
            return
        with self.lock:
            tasks, keep = self.tasks, self.keep
            self.tasks, self.keep, self.armed = {}, [], False
            if not tasks:
                return
            try:
                sent = [self._send(tasks)]
            except Exception:  # noqa: BLE001 - a call that cannot be pickled fails alone, not its batch
                if not available():  # Dask changed under us: later calls go one client.submit each
                    self.holding = False
                sent = [self._send_alone(key, task) for key, task in tasks.items()]
        del sent, keep  # released after the graph: the scheduler sees them in that order

    def drop(self) -> None:
        """Forget the held calls (their runner shuts down)."""
        with self.lock:
            self.tasks, self.keep = {}, []
        self.windows.drop()

    def _send(self, tasks: dict[str, Any]) -> dict[str, Future]:
        return dask_internals.graph_submit(self.client, tasks)  # its futures are dropped by the caller

    def _send_alone(self, key: str, task: Any) -> dict[str, Future]:
        """Send one call; one whose arguments cannot be pickled ends in that error on a worker."""
        try:
            return self._send({key: task})
        except Exception as exc:  # noqa: BLE001 - reported through the call's own future
            why = f"{key}: its arguments could not be sent to the Dask scheduler ({type(exc).__name__}: {exc})"
            return self._send({key: self.make_task(key, refuse, why)})


def refuse(why: str) -> None:
    """The stand-in of a call that could not be sent: its future ends in this error."""
    raise TypeError(why)
