"""A chunk of several runs that Dask gave up on (``KilledWorker``), taken apart run by run.

One run that kills its worker (past the memory limit, a segfault) takes its chunk with it
every time Dask tries the chunk, and Dask's ``KilledWorker`` would end every run of the chunk
``Crashed``. ``split_lost`` gives the chunk the outcome of ``chunksize=1`` instead: the runs
it had noted finished come from the ledger's checkpoints, the others run again one per Dask
task (``one_run_of``), and their envelopes are put back in place (``put_run``).
"""

from __future__ import annotations

import time
import uuid
from array import array
from typing import TYPE_CHECKING

from daskflow.codes import OK_CODES
from daskflow.engine.client.chunks import Chunk, submit_chunks
from daskflow.engine.client.losses import lost
from daskflow.engine.core.envelope import ChunkResult, ChunkSpec
from daskflow.engine.core.inputs import ALIGNED, MAPPED, Column, Ref
from daskflow.engine.worker import resources
from daskflow.engine.worker.checkpoints import Checkpoint

if TYPE_CHECKING:
    from daskflow.runners.base import TaskRunner

__all__ = ["one_run_of", "put_run", "split_lost"]


def split_lost(runner: TaskRunner, chunk: Chunk, exc: BaseException) -> ChunkResult | None:
    """The envelope of a chunk of several runs that Dask gave up on (``KilledWorker``), run by run.

    One run that kills its worker (past the memory limit, a segfault) took its chunk with it
    each time Dask tried it. Here its runs that finished are taken from the ledger's
    checkpoints, and the others run again one per Dask task (under the same run ids): one at a
    time until one of them is given up on too (the culprit), then the rest together, so only
    the culprit ends ``Crashed``: the outcome of ``chunksize=1``. (Two culprits in one chunk:
    the second may take the runs queued with it on its worker.) None when this does not
    apply (one run, another error, a chunk whose spec is gone). It waits for those runs
    here, holding up other readers' recording meanwhile: a rare path, kept simple.
    """
    spec = chunk.spec
    if chunk.n == 1 or spec is None or spec.row is not None or type(exc).__name__ != "KilledWorker":
        return None
    notes = runner.notes_of([chunk.handle]).get(chunk.handle, []) if runner.checkpoints else []
    done = Checkpoint.joined(notes, chunk.n) if notes else None
    first = done.hi if done is not None else 0
    parts = [one_run_of(spec, j) for j in range(first, chunk.n)]
    deps = [u.result if u.result is not None else u.handle for u in chunk.ups]
    handles, outs = [], []

    def run(batch: list[ChunkSpec]) -> None:
        got = submit_chunks(runner, batch, [deps] * len(batch), [f"{chunk.task.name}-{uuid.uuid4().hex}" for _ in batch])
        runner.wait(got, None)
        handles.extend(got)
        outs.extend(runner.gather(got))

    # One at a time until the culprit is found (Dask counts a worker's death against every
    # task it was given, queued ones too), then the rest together.
    while len(outs) < len(parts) and not any(type(o).__name__ == "KilledWorker" for o in outs):
        run([parts[len(outs)]])
    if len(outs) < len(parts):
        run(parts[len(outs):])
    res = ChunkResult(chunk.task.name, chunk.base, chunk.start, chunk.n, bytearray(chunk.n), [None] * chunk.n)
    res.started = chunk.submitted
    res.ends = array("d", bytes(8 * chunk.n))
    if done is not None:
        done.restore(res)
    for part, handle, out in zip(parts, handles, outs):
        if not isinstance(out, ChunkResult):
            out = lost(Chunk.submitted_as(part, handle, runner, [], ""), out)
        put_run(res, part.start - chunk.start, out)
    return res


def one_run_of(spec: ChunkSpec, j: int) -> ChunkSpec:
    """The spec of run ``j`` of the chunk ``spec`` alone (same run id, inputs and cache keys)."""
    columns, refs = [], spec.refs
    for kind, payload in spec.columns:
        if kind is MAPPED:
            columns.append(Column(MAPPED, payload[j:j + 1]))
        elif kind is ALIGNED:  # run j of the aligned upstream chunk's envelope
            columns.append(Column(MAPPED, [Ref(payload, j)]))
            refs = True
        else:
            columns.append(Column(kind, payload))
    cache = spec.cache.part(j, j + 1, spec.cache.lookup) if spec.cache is not None else None
    return ChunkSpec(spec.task, spec.base, spec.start + j, 1, columns, refs, spec.wait_refs, spec.flow_run_id,
                     cache, task_blob=spec.task_blob, behind=spec.behind)


def put_run(res: ChunkResult, j: int, one: ChunkResult) -> None:
    """Put the outcome of a one-run envelope ``one`` at run ``j`` of ``res``."""
    code = one.codes[0]
    if code in OK_CODES:
        res.codes[j] = code
        res.values[j] = one.get_values()[0]  # type: ignore[index]
    else:
        res.fail(j, code, one.errors.get(0), one.messages.get(0, ""))
    for name in ("history", "run_counts", "names", "tracebacks", "inputs"):
        if 0 in getattr(one, name):
            getattr(res, name)[j] = getattr(one, name)[0]
    if one.resources:
        res.resources = resources.put_run(res.resources, j, one.resources)
    res.ends[j] = one.ends[0] if len(one.ends) else time.time()
