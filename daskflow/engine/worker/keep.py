"""Keeping a chunk's completed values for ``flow-runs retry``, where the chunk ran.

A chunk submitted inside a flow run carries a ``KeepSpec`` (``ChunkSpec.kept``): which
flow run and which *call* of it the chunk belongs to, and where to keep values
(``cache.kept``). At the end of the chunk (``run_rows``), ``keep_chunk`` writes one signed
record holding every run that ended Completed or Cached, in one LMDB commit (and one
object put when a result storage is set). Nothing is done per run; a task without a flow
run pays one attribute check.

**Which run is "the same run" in a retried flow run.** A retry runs the flow function
again, which calls its tasks again. A run is identified by *its call* and *its position in
that call*: the call is ``{subflow path}{task name}#{k}``, the k-th ``.submit()``,
``.map()`` or direct call of a task of that name in the flow run (and ``#k`` of each
subflow on the path), the position is the map index (0 for a single run). This needs no
hashing of inputs (inputs holding futures are not known on the client, and unhashable ones
are common), and costs one dict increment per call. Its limit: the flow must make its calls
of a task in the same order when run again with the same parameters. A flow whose calls
depend on timing (e.g. submitting in ``as_completed`` order) or on the outside world may
pair a call with another call's values; such a flow should not be retried (or should give
those tasks an INPUTS cache policy, which keys on the inputs instead).

Direct calls ``t(x)`` run in the flow's own process, one at a time: they are not kept here
but batched by their flow run (``engine.client.direct_keep``), so that a loop of direct
calls does not pay a commit per call.

When a retry submits a chunk some of whose runs were kept, the chunk's ``reuse`` holds
their values: they end ``Cached`` without running (``reuse_kept``), the others run.

A run whose value the chunk's own cache holds (a hit, or a fresh record of ``REF_BYTES`` or
more that the chunk's cache write carries) is kept as its cache key (``CacheRefs``), not as
a second copy of its value, when the cache and the kept values share home and storage.
"""

from __future__ import annotations

import time
import warnings
from array import array
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable

from daskflow.cache import kept
from daskflow.cache.storage_spec import StorageSpec
from daskflow.cache.store import CacheWarning
from daskflow.cache.tokens import reaches_store
from daskflow.codes import CACHED, OK_CODES, all_ok
from daskflow.engine.worker.write_behind import Write

if TYPE_CHECKING:
    from daskflow.engine.core.envelope import ChunkResult, ChunkSpec


REF_BYTES = 64 * 1024  # a fresh record this large is kept as a reference to its cache record


@dataclass(slots=True)
class CacheRefs:
    """The runs of a chunk whose value its cache holds under their keys (read from it, or being
    written to it), in the cache of ``home`` in front of ``storage``."""

    home: str | None
    storage: StorageSpec | None
    positions: list[int] | None  # None: every run of the chunk
    keys: list[bytes]


@dataclass(slots=True)
class KeepSpec:
    """Where and under which name a chunk keeps its completed values (travels in its spec)."""

    home: str | None  # the submitter's daskflow home
    token: str | None  # proves a worker sees that home (None: the submitting process itself)
    storage: StorageSpec | None
    flow_run_id: str  # the root flow run: every kept record of a flow run shares its prefix
    call: str
    attempt: str  # names the flow run's attempt in keys: a retry never overwrites an earlier attempt's records
    keep_seconds: float
    single: bool = False  # a .submit() or direct call: its one run is position 0 of its call
    reuse: dict[int, Any] | None = None  # chunk positions kept by an earlier attempt: not run again

    def part(self, reuse: dict[int, Any] | None) -> KeepSpec:
        return self if not reuse else replace(self, reuse=reuse)

    def store(self) -> Any:
        """The kept store this process writes: the home's (in front of the storage), the storage
        alone on a host that does not see the home, or None (nothing can be kept here)."""
        reach = self.token is None or reaches_store(self.home, self.token)  # type: ignore[arg-type]
        if self.storage is None:
            return kept.get_kept_store(self.home) if reach else None
        if not reach and not self.storage.secret_file:
            return None
        return kept.get_kept_store(self.home if reach else None, self.storage)


def reuse_kept(reuse: dict[int, Any], items: Iterable[tuple[int, tuple]], res: ChunkResult,
               ends: array) -> list[tuple[int, tuple]]:
    """Runs kept by an earlier attempt end Cached with their kept value; the others, to run."""
    values, codes, now = res.values, res.codes, time.time()
    rest = []
    for i, row in items:
        if i in reuse:
            values[i] = reuse[i]  # type: ignore[index]
            codes[i] = CACHED
            ends[i] = now
        else:
            rest.append((i, row))
    return rest


_warned: set[str] = set()


def keep_chunk(spec: ChunkSpec, res: ChunkResult, writes: list[Write] | None = None) -> None:
    """Write the chunk's completed values in one record (never raises: a value not kept only
    means the run executes again on a retry). With ``writes``, the record's copy for a result
    storage goes there, for the caller to write (the local store is written here)."""
    keep: KeepSpec | None = spec.kept
    if keep is None or (res.values is None and res.blob is None) or keep.keep_seconds <= 0:  # keep 0: keeps nothing new
        return
    codes, start = res.codes, 0 if keep.single else spec.start
    every = all_ok(codes)
    done = None if every else [i for i in range(res.n) if codes[i] in OK_CODES]
    if not every and not done:
        return
    try:
        store = keep.store()
        if store is None:
            return
        refs = res.cache_refs
        if refs is not None and (refs.home, refs.storage) == (keep.home, keep.storage):
            chunk = _with_refs(keep.call, res, refs, start, done)
        elif every:  # the common chunk: its values as its envelope pickled them (``seal``), or the list
            chunk = kept.KeptChunk(keep.call, None, None if res.blob is not None else res.values, start, res.blob)
        else:
            values = res.get_values()
            chunk = kept.KeptChunk(keep.call, [start + i for i in done], [values[i] for i in done])  # type: ignore[union-attr]
        record = kept.encode(chunk, spec.task.name, keep.keep_seconds, store.secret)
        items = [(kept.chunk_key(keep.flow_run_id, keep.call, start, keep.attempt), record)]
        if writes is None or not hasattr(store, "put_hot"):
            store.put_many(items)
            return
        store.put_hot(items)  # the storage's copy goes with the chunk's other writes
        writes.append(Write(store.storage, items, spec.task.name, False))
    except Exception as exc:  # noqa: BLE001 - keeping is best effort: the runs are final all the same
        _not_kept(spec.task.name, keep.flow_run_id, exc)


def _not_kept(task_name: str, flow_run_id: str, exc: BaseException) -> None:
    if task_name not in _warned:
        _warned.add(task_name)
        warnings.warn(f"task {task_name!r}: completed values could not be kept for a retry of flow run "
                      f"{flow_run_id} ({type(exc).__name__}: {exc}); a retry runs them again",
                      CacheWarning, stacklevel=3)


def _with_refs(call: str, res: ChunkResult, refs: CacheRefs, start: int, done: list[int] | None) -> kept.KeptChunk:
    """The kept record of a chunk some of whose runs' values are in its cache: their keys, and
    the values of the other completed runs."""
    if refs.positions is None:  # every run came from the cache (a rerun's chunk): its keys alone
        return kept.KeptChunk(call, None, None, start, ref_keys=refs.keys)
    referred = set(refs.positions)
    rest = [i for i in (range(res.n) if done is None else done) if i not in referred]
    values = res.get_values() if rest else []
    return kept.KeptChunk(call, [start + i for i in rest], [values[i] for i in rest], start,
                          ref_positions=[start + i for i in refs.positions], ref_keys=refs.keys)
