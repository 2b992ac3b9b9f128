"""Futures in a call's arguments become ``Ref`` placeholders, and their chunks the call's dependencies.

``collect_refs`` walks an argument (lists, tuples, sets, dicts; ``unmapped``, ``quote``,
``allow_failure`` wrappers) and swaps every ``TaskRunFuture`` for a ``Ref(dep, index)``;
a ``.map()``'s future list stands for the list of its values. The worker side puts the
upstream values back (``engine.core.inputs.resolve``).
"""

from __future__ import annotations

from typing import Any

from daskflow.engine.client.futures import MapFutures, TaskRunFuture
from daskflow.engine.core.inputs import ATOMS, Ref, allow_failure, quote, same_items, unmapped


def collect_refs(obj: Any, deps: dict[int, int], chunks: list[Any], allow: bool = False) -> Any:
    """Replace futures in ``obj`` by ``Ref``s; register their chunks in ``deps``/``chunks``.

    ``deps`` maps ``id(chunk)`` to its position in ``chunks``.
    """
    kind = type(obj)
    if kind in ATOMS:
        return obj
    if isinstance(obj, TaskRunFuture):
        chunk = obj.chunk
        chunk.observe()
        pos = deps.get(id(chunk))
        if pos is None:
            pos = deps[id(chunk)] = len(chunks)
            chunks.append(chunk)
        return Ref(pos, obj.index, allow)
    if kind is MapFutures:  # a whole fan-out as one argument: the list of its values
        return [collect_refs(f, deps, chunks, allow) for f in obj]
    if kind is allow_failure:
        return collect_refs(obj.value, deps, chunks, True)
    if kind is quote:
        return obj.value
    if kind is unmapped:
        return collect_refs(obj.value, deps, chunks, allow)
    if kind in (list, tuple, set, frozenset):
        if ATOMS.issuperset(map(type, obj)):  # C-speed: nothing to replace, pass it as it is
            return obj
        items = [collect_refs(v, deps, chunks, allow) for v in obj]
        return obj if same_items(items, obj) else kind(items)
    if kind is dict:
        if ATOMS.issuperset(map(type, obj.values())):
            return obj
        new = {k: collect_refs(v, deps, chunks, allow) for k, v in obj.items()}
        return obj if same_items(new.values(), obj.values()) else new
    return obj
