"""The run store: per-chunk records expanded to runs, id lookup by prefix, prune."""

from __future__ import annotations

import time
import uuid

import pytest

from daskflow.ids import index_of, new_run_base, run_id
from daskflow.store.runs import ChunkUpdate, LogLine, open_run_store


def _chunk(store, base, start, n, codes, submitted=None, flow_run_id=None):
    from array import array

    t = submitted or time.time()
    store.apply([ChunkUpdate(base, start, {"task": "inc", "task_key": "inc-00000000", "n": n, "submitted": t,
                                         "flow_run_id": flow_run_id, "codes": bytes(codes),
                                         "ends": array("d", [t + i for i in range(1, n + 1)]).tobytes(),
                                         "started": t, "messages": {i: "boom" for i, c in enumerate(codes) if c == 2}})])


def test_index_of_inverts_run_id():
    base = new_run_base()
    for i in (0, 1, 7, 999_999):
        assert index_of(base, run_id(base, i)) == i


def test_store_expands_chunk_into_runs():
    store = open_run_store()
    base = new_run_base()
    _chunk(store, base, 0, 5, [0, 1, 2, 0, 0])
    rows = store.task_runs(limit=None)
    assert [r["state"] for r in rows] == ["Completed", "Completed", "Failed", "Cached", "Completed"]
    assert {r["id"] for r in rows} == {run_id(base, i) for i in range(5)}
    failed = store.task_run(run_id(base, 2))
    assert failed["error"] == "boom" and failed["end"] - failed["start"] == pytest.approx(1.0)
    assert store.task_runs(state="cached", limit=None)[0]["id"] == run_id(base, 1)


def test_store_prefix_lookup_unique_and_ambiguous():
    store = open_run_store()
    base = new_run_base()
    _chunk(store, base, 0, 200, [0] * 200)
    target = run_id(base, 137)
    assert store.task_run(target[:13])["id"] == target
    assert store.task_run(target.replace("-", "")[:12])["id"] == target
    with pytest.raises(LookupError, match="ambiguous"):
        store.task_run(target[:1])
    with pytest.raises(LookupError, match="no task run"):
        store.task_run(str(uuid.uuid4()))


def test_store_prune_drops_old_runs_and_logs_only():
    store = open_run_store()
    old, new = new_run_base(), new_run_base()
    _chunk(store, old, 0, 3, [0, 0, 0], submitted=time.time() - 10 * 86400)
    _chunk(store, new, 0, 2, [0, 0])
    owner = old.to_bytes(16, "big") + (0).to_bytes(8, "big")
    store.apply([LogLine(owner, 1, time.time(), 20, "old log", "x")])
    assert store.prune(7 * 86400) == (3, 0)
    assert {r["id"] for r in store.task_runs(limit=None)} == {run_id(new, 0), run_id(new, 1)}
    with pytest.raises(LookupError):
        store.logs(run_id(old, 1))


def test_store_million_run_chunks_are_compact():
    store = open_run_store()
    base = new_run_base()
    for start in range(0, 1_000_000, 10_000):
        _chunk(store, base, start, 10_000, [0] * 10_000)
    assert store.env.stat("chunks")["entries"] == 100
    rows = store.task_runs(limit=5)
    assert len(rows) == 5 and rows[0]["id"] == run_id(base, 999_999)
    assert store.task_run(run_id(base, 123_456))["state"] == "Completed"
