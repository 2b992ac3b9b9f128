"""Argument annotations (``unmapped``, ``quote``, ``allow_failure``) and future references.

Futures found in a run's arguments (also inside lists, tuples, sets and dicts) are
replaced by ``Ref`` placeholders before the arguments are serialized; the run's
chunk depends on the futures' chunks, and ``resolve`` puts the upstream values back
where the placeholders stood, on whichever machine the run executes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")

ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})


class _Annotation(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def __reduce__(self):
        return type(self), (self.value,)


class unmapped(_Annotation[T]):
    """Broadcast a value to every run of a ``.map()`` instead of iterating over it.

    Example:
        >>> add.map([1, 2, 3], unmapped([10, 20]))  # doctest: +SKIP
    """


class quote(_Annotation[T]):
    """Pass a value as it is: futures inside are not resolved.

    ``.map()`` iterates a quoted iterable, each element passed quoted, as in Prefect.
    """

    def unquote(self) -> T:
        return self.value


class allow_failure(_Annotation[T]):
    """Run the downstream even if this upstream future failed; it receives the exception.

    Example:
        >>> cleanup.submit(allow_failure(risky.submit()))  # doctest: +SKIP
    """


class ColumnKind(enum.Enum):
    """How one parameter's values reach the runs of a chunk."""

    MAPPED = "mapped"  # a list: one value per run
    BROADCAST = "broadcast"  # one value for every run
    ALIGNED = "aligned"  # the values of an aligned upstream chunk; the payload is its dep index


MAPPED, BROADCAST, ALIGNED = ColumnKind.MAPPED, ColumnKind.BROADCAST, ColumnKind.ALIGNED


class Column(NamedTuple):
    """One parameter of a chunk (or of a whole ``.map()`` while it is planned)."""

    kind: ColumnKind
    payload: Any


@dataclass(frozen=True, slots=True)
class Ref:
    """Placeholder for a future's value: ``dep`` indexes the run's upstream chunks."""

    dep: int
    index: int
    allow_failure: bool = False



def same_items(new: Any, old: Any) -> bool:
    """True when no item was replaced: the caller's container then passes by identity."""
    return all(a is b for a, b in zip(new, old))


def has_refs(obj: Any) -> bool:
    kind = type(obj)
    if kind in ATOMS:
        return False
    if kind is Ref:
        return True
    if kind in (list, tuple, set, frozenset):
        return any(has_refs(v) for v in obj)
    if kind is dict:
        return any(has_refs(v) for v in obj.values())
    return False


class UpstreamNotCompleted(Exception):
    """Raised by ``resolve`` when an upstream run (not allowed to fail) did not complete."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def resolve(obj: Any, deps: list[Any]) -> Any:
    """Put upstream values back in place of the ``Ref``s in ``obj``.

    ``deps`` holds the upstream ``ChunkResult``s in ``Ref.dep`` order.
    """
    kind = type(obj)
    if kind in ATOMS:
        return obj
    if kind is Ref:
        chunk = deps[obj.dep]
        ok, value = chunk.element(obj.index)
        if ok:
            return value
        if obj.allow_failure:
            return value  # the upstream's exception object
        raise UpstreamNotCompleted(
            f"upstream task run {chunk.run_name(obj.index)!r} ({chunk.run_id(obj.index)}) "
            f"did not complete: {chunk.describe(obj.index)}"
        )
    if kind in (list, tuple, set, frozenset):
        items = [resolve(v, deps) for v in obj]
        return obj if same_items(items, obj) else kind(items)
    if kind is dict:
        new = {k: resolve(v, deps) for k, v in obj.items()}
        return obj if same_items(new.values(), obj.values()) else new
    return obj
