"""The client's cache lookups, before anything is submitted, and the writes of remote workers' results.

- ``for_map``/``for_single``: when every input of a submission is concrete (no futures),
  the client computes all keys and reads them in one LMDB transaction. Hits become chunks
  whose envelope is already known (no Dask work at all); the rest are submitted with their
  keys, so workers do not compute them again. Inputs holding futures leave the lookup to
  the worker (``engine.worker.managed``).
- ``write_returned``: workers that do not see the client's store (another host, no shared
  filesystem) return the keys of their fresh results in the envelope (``ReturnedCache``);
  the client signs those results with its own secret and writes them in one LMDB
  transaction per fetched batch, or, inside a ``transaction()`` block, hands them to the
  block, which commits them at exit.
"""

from __future__ import annotations

import time
import warnings
from array import array
from typing import TYPE_CHECKING, Any

from daskflow.cache import serialization as ser
from daskflow.cache.keys import KeyColumn, NotConcrete
from daskflow.cache.store import CacheWarning, get_store
from daskflow.codes import CACHED
from daskflow.engine.client.chunks import Chunk
from daskflow.engine.core.envelope import ChunkResult, inline_bytes
from daskflow.engine.core.hooks import fire_commit_hooks
from daskflow.engine.core.inputs import BROADCAST, MAPPED, Column, quote
from daskflow.engine.worker.cache_spec import CacheSpec, ReturnedCache, new_spec, run_txn, warn_unhashable
from daskflow.ids import run_id

if TYPE_CHECKING:
    from daskflow.engine.api.tasks import Task

_MAX_SEGMENTS = 8  # a partly cached chunk splits into at most this many chunks



class MapCache:
    """The cache decisions of one ``.map()``: which bounds to submit, which are already known."""

    def __init__(self, spec: CacheSpec, bounds: list[tuple[int, int]], known: dict[int, ChunkResult]) -> None:
        self.spec = spec
        self.bounds = bounds  # to submit
        self.known = known  # lo -> envelope of a fully cached range
        self._lookup: set[int] = set()  # submitted ranges the worker must still look up

    def spec_for(self, lo: int, hi: int) -> CacheSpec:
        return self.spec.part(lo, hi, lookup=self.spec.keys is None or lo in self._lookup)

    def merge(self, task: Task, base: int, chunks: list[Chunk], runner: Any) -> list[Chunk]:
        """Submitted chunks and cached ones, in element order."""
        if not self.known:
            return chunks
        out = chunks + [Chunk.known(task, res, runner) for res in self.known.values()]
        out.sort(key=lambda c: c.start)
        return out


def for_map(task: Task, names: list[str], kinds: dict[str, tuple[str, Any]], n: int,
            bounds: list[tuple[int, int]], base: int, has_waits: bool, aligned: Any, offset: int = 0) -> MapCache | None:
    """Look a map's runs up on the client when its inputs are concrete; plan what to submit.

    ``bounds`` index the columns; run ``i`` of them is map element ``offset + i`` (a window of a
    ``MapStream``)."""
    if not task.managed:
        return None
    spec = new_spec(task)
    cache = MapCache(spec, bounds, {})
    if spec.plan is None or not spec.lookup or has_waits or aligned is not None or spec.plan.problem:
        return cache
    if task.options.on_completion or task.options.on_running:
        return cache  # their hooks fire where the run is decided: on the worker
    columns = []
    for name in names:
        kind, value = kinds[name]
        if kind is BROADCAST and isinstance(value, quote):
            value = value.value
        if kind is MAPPED and not isinstance(value, (list, tuple, range)):
            return cache  # a MapFutures: resolved on the worker
        columns.append(KeyColumn(kind is MAPPED, value))
    try:
        keys, bad = spec.plan.keys_for(task, columns, n, lambda i: run_id(base, offset + i))
    except NotConcrete:
        return cache
    if bad is not None:
        warn_unhashable(task, bad)
    spec.keys = keys
    hits = spec.store().load_many(keys, max_bytes=inline_bytes())  # type: ignore[union-attr]
    if hits.too_large:  # large cached values stay out of this process: the workers look them up
        spec.keys = None
        return cache
    if not hits:
        return cache
    _commit_hooks_outside_block(task, spec, keys, hits)
    submit: list[tuple[int, int]] = []
    every = len(hits) == n  # the common rerun: no per-element segment scan
    for lo, hi in bounds:
        parts = [(lo, hi, True)] if every else segments(lo, hi, hits)
        if len(parts) > _MAX_SEGMENTS:
            submit.append((lo, hi))
            cache._lookup.add(lo)
            continue
        for s_lo, s_hi, hit in parts:
            if hit:
                cache.known[s_lo] = cached_envelope(task, base, offset + s_lo, [hits[i] for i in range(s_lo, s_hi)])
            else:
                submit.append((s_lo, s_hi))
    cache.bounds = submit
    return cache


def segments(lo: int, hi: int, marked: dict[int, Any], most: int | None = None) -> list[tuple[int, int, bool]]:
    """``[lo, hi)`` cut into runs of indexes in ``marked`` or not: ``(start, stop, in marked)``;
    past ``most`` segments it stops early (the caller will not split that finely)."""
    out: list[tuple[int, int, bool]] = []
    start, state = lo, lo in marked
    for i in range(lo + 1, hi):
        s = i in marked
        if s != state:
            out.append((start, i, state))
            start, state = i, s
            if most is not None and len(out) > most:
                return out
    out.append((start, hi, state))
    return out


def for_single(task: Task, row: tuple, base: int, has_deps: bool) -> tuple[CacheSpec | None, ChunkResult | None]:
    """``(spec, envelope)`` of one ``.submit()``: the envelope when the cache already has it."""
    if not task.managed:
        return None, None
    cache = for_map(task, list(task.param_names), {n: Column(BROADCAST, v) for n, v in zip(task.param_names, row)}, 1, [(0, 1)],
                    base, has_deps, None)
    if cache is None:
        return None, None
    known = cache.known.get(0)
    return (None if known is not None else cache.spec_for(0, 1)), known


def cached_envelope(task: Task, base: int, start: int, values: list) -> ChunkResult:
    n = len(values)
    res = ChunkResult(task.name, base, start, n, bytearray([CACHED]) * n, values)
    res.started = now = time.time()
    res.ends = array("d", [now]) * n
    return res


def _commit_hooks_outside_block(task: Task, spec: CacheSpec, keys: list, hits: dict[int, Any]) -> None:
    if task.options.on_commit and not spec.stage:
        for i in sorted(hits):
            fire_commit_hooks(task, "on_commit", run_txn(keys[i]))


def write_returned(results: list[ChunkResult]) -> None:
    """Write the fresh results that remote chunks returned: one LMDB transaction per home.

    Inside a ``transaction()`` block the signed records go to the envelope's
    ``cache_records`` instead, for the block to commit.
    """
    by_home: dict[str, list[tuple[bytes, bytes]]] = {}
    for res in results:
        back: ReturnedCache | None = res.cache_returned
        if back is None:
            continue
        res.cache_returned = None
        store = get_store(back.home)
        records = _encode_returned(res, back, store.secret)
        if back.stage:
            res.cache_records = (res.cache_records or []) + records
        else:
            by_home.setdefault(back.home, []).extend(records)
    for home, records in by_home.items():
        try:
            get_store(home).put_many(records)
        except Exception as exc:  # the results stay valid; only the cache misses them
            warnings.warn(f"{len(records)} results returned by workers could not be written to the cache: "
                          f"{type(exc).__name__}: {exc}", CacheWarning, stacklevel=3)


def _encode_returned(res: ChunkResult, back: ReturnedCache, secret: bytes) -> list[tuple[bytes, bytes]]:
    values = res.get_values()
    expires = time.time() + back.expires_in if back.expires_in is not None else None
    encoded = ser.encode_many([values[i] for i in back.positions], back.task_key, expires, back.serializer, secret)
    out = [(key, record) for key, record in zip(back.keys, encoded) if record is not None]
    if len(out) < len(back.keys):
        warnings.warn(f"task {res.task_name!r}: {len(back.keys) - len(out)} results cannot be serialized for "
                      "the cache; they are not cached", CacheWarning, stacklevel=4)
    return out


