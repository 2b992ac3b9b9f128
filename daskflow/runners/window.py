"""Windows: the calls of a big burst sent a few at a time, the rest held on the client.

A ``.map()`` over a sized input is cut into its chunks at once; sending them all at once
made the scheduler hold every chunk of the map (417 Dask tasks for one map at 8 workers,
thousands at 64), each a task state, a message, and a place in Dask's queues. A burst
submitted with a *window* of ``w`` calls instead has at most ``w`` of them sent and not
finished; the others wait here and go as earlier ones finish.

- Every call's future exists at once (as for calls held for one graph, ``runners.batching``):
  waiting on, gathering or cancelling a held call works as on any other; a call cancelled
  while held is dropped when its turn comes, never sent.
- A finished call frees its slot through its Dask future's done callback (one per *sent*
  call of a window, which is a chunk of many runs): the next held calls go through the
  graph buffer at once, in order.
- A call that only waits for its runs' retry delays (it gave its worker slot away) *steps
  aside*: its slot is freed at once (``step_aside``), not again when it finishes, so the
  window's other calls run meanwhile instead of waiting out the delays behind it.
- Dependencies go first: a call (windowed or not) whose arguments hold the future of a
  call still held here is held too, in submission order, and sent only once what it needs
  was sent. Windows are served oldest first.

Held calls are kept with their argument lists, so upstream futures they hold are not
released before the calls that need them reach the scheduler. A held call's graph node is
made only when it goes (``build``): a chunk's spec is pickled then, not while it waits (a
map of 10^8 runs holds ~1,000 chunks, 1.7 KB each pickled).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, NamedTuple

logger = logging.getLogger("daskflow")


class Held(NamedTuple):
    """A call waiting for a slot: its key, its future, its arguments, the keys of held calls
    it needs (sent before it), and how its graph node is made from them when it goes."""

    key: str
    future: Any
    row: tuple
    needs: tuple[str, ...]
    build: Callable[[str, tuple], Any]


class Window:
    """The calls of one burst: at most ``limit`` sent and unfinished (0: no limit)."""

    __slots__ = ("limit", "in_flight", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.held: collections.deque[Held] = collections.deque()

    def has_room(self) -> bool:
        return not self.limit or self.in_flight < self.limit


class Windows:
    """The windows of one client's graph buffer (see the module's text).

    ``send(tasks, rows)`` is the buffer's way to send graph nodes now, in the order given,
    keeping their argument rows until they are sent; ``future_type`` is Dask's ``Future``
    (what held arguments are looked for).
    """

    def __init__(self, send: Callable[[dict[str, Any], list[tuple]], None], future_type: type) -> None:
        self.send = send
        self.future_type = future_type
        self.lock = threading.Lock()
        self.open: list[Window] = []  # oldest first; drained ones are removed
        self.held_keys: set[str] = set()
        self.after: Window | None = None  # unlimited: calls that only wait for held ones
        self.sent: dict[str, Window] = {}  # calls of limited windows sent and holding a slot

    def busy(self) -> bool:
        """Whether any call is held (then new calls are checked for held arguments)."""
        return bool(self.held_keys)

    def needs(self, row: tuple) -> tuple[str, ...]:
        """The keys of held calls among a call's arguments (top level and one list deep)."""
        out = []
        held, fut = self.held_keys, self.future_type
        for arg in row:
            items = arg if isinstance(arg, (list, tuple)) else (arg,)
            out.extend(x.key for x in items if isinstance(x, fut) and x.key in held)
        return tuple(out)

    def admit(self, keys: list[str], futures: list[Any], rows: list[tuple], limit: int,
              build: Callable[[str, tuple], Any]) -> tuple[dict[str, Any], list[tuple]]:
        """Take a burst (``limit`` 0: an unlimited one that waits for held arguments); the graph
        nodes to send now (``build(key, row)``) and their rows, the rest held."""
        with self.lock:
            window = Window(limit)
            if not limit:
                if self.after is None or self.after not in self.open:
                    self.after = window
                    self.open.append(window)
                window = self.after
            else:
                self.open.append(window)
            for key, future, row in zip(keys, futures, rows):
                window.held.append(Held(key, future, row, self.needs(row), build))
                self.held_keys.add(key)
            return self._take()

    def _take(self) -> tuple[dict[str, Any], list[tuple]]:
        """Under the lock: the held calls that may go now, oldest window first, and their rows
        (their argument futures must outlive the send); slots taken."""
        out: dict[str, Any] = {}
        rows: list[tuple] = []
        for window in self.open:
            held = window.held
            while held and window.has_room():
                call = held[0]
                if call.future.status != "pending":  # cancelled while held: never sent
                    held.popleft()
                    self.held_keys.discard(call.key)
                    continue
                if any(k in self.held_keys for k in call.needs):
                    break
                held.popleft()
                self.held_keys.discard(call.key)
                out[call.key] = call.build(call.key, call.row)
                rows.append(call.row)
                if window.limit:
                    window.in_flight += 1
                    self.sent[call.key] = window
                    call.future.add_done_callback(self._finisher(call.key))
        self.open = [w for w in self.open if w.held or w.in_flight]
        return out, rows

    def _finisher(self, key: str) -> Callable[[Any], None]:
        def finished(_: Any) -> None:
            self.step_aside(key)
        return finished

    def step_aside(self, key: str) -> None:
        """Free the slot of the sent call ``key`` (finished, or waiting for retry delays only)
        and send what may go now; a call frees its slot once (unknown keys: nothing)."""
        with self.lock:
            window = self.sent.pop(key, None)
            if window is None:
                return
            window.in_flight -= 1
            ready, rows = self._take()
        if ready:
            try:
                self.send(ready, rows)
            except Exception:  # noqa: BLE001 - the client closed: its futures are cancelled with it
                logger.debug("daskflow: could not send held calls", exc_info=True)

    def drop(self) -> None:
        """Forget every held call (the runner shuts down)."""
        with self.lock:
            self.open, self.held_keys, self.after, self.sent = [], set(), None, {}
