"""Messages about a chunk that came before the client registered it, kept a while for when it does.

A worker can report on a chunk (started, ended, its end summary) before the thread that
submitted it has registered it: a short chunk ends while the submitting thread waits for the
GIL between handing the graph to Dask and noting the chunk. Dropping such a message loses
what it said (a state, or the summary that spares gathering the chunk's values), so whoever
listens keeps it here, and the registration takes it. A message about another client's chunk
on the same scheduler is never taken: it goes after ``SECONDS``.

Two listeners use it: the tracker (states for the run store) and the client's eager reader of
end summaries. Each has its own ``EarlyMessages``, as each reads other fields of the messages.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Generic, Hashable, Iterator, TypeVar

Item = TypeVar("Item")


class EarlyMessages(Generic[Item]):
    """Items by chunk, oldest first; those kept more than ``seconds`` go at the next ``keep``."""

    SECONDS = 60.0

    def __init__(self, seconds: float = SECONDS) -> None:
        self.seconds = seconds
        self.held: collections.OrderedDict[Hashable, tuple[float, list[Item]]] = collections.OrderedDict()

    def keep(self, key: Hashable, item: Item) -> None:
        now, held = time.monotonic(), self.held
        while held and now - next(iter(held.values()))[0] > self.seconds:  # the stale first
            held.popitem(last=False)
        entry = held.get(key)
        if entry is None:
            held[key] = (now, [item])
        else:
            entry[1].append(item)

    def take(self, key: Hashable) -> list[Item]:
        """The items kept for ``key`` in the order they came (none: an empty list), forgotten."""
        entry = self.held.pop(key, None)
        return entry[1] if entry is not None else []

    def __contains__(self, key: Any) -> bool:
        return key in self.held

    def __bool__(self) -> bool:
        return bool(self.held)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.held)
