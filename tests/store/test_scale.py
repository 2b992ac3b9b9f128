"""The run store at scale: packed records, the indexes behind the listings, retention."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from array import array

import dask
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskflow.codes import CACHED, COMPLETED, FAILED
from daskflow.ids import new_run_base, run_id
from daskflow.store import queries
from daskflow.store.indexes import build_indexes, indexed
from daskflow.store.packing import pack_chunk, pack_times, unpack_chunk, unpack_times
from daskflow.store.runs import ChunkUpdate, FlowUpdate, chunk_key, open_run_store

DAY = 86400.0


def _ends(t: float, n: int, step: float = 3e-6) -> bytes:
    return array("d", [t + (i + 1) * step for i in range(n)]).tobytes()


def _chunk_op(n: int, t: float, codes: bytes | None = None, flow_run_id: str | None = None, **extra) -> ChunkUpdate:
    codes = codes if codes is not None else bytes([COMPLETED]) * n
    fields = {"task": "inc", "task_key": "inc-00000000", "n": n, "submitted": t, "started": t, "live": None,
              "flow_run_id": flow_run_id, "codes": codes, "ends": _ends(t, n), **extra}
    return ChunkUpdate(new_run_base(), 0, fields, new=True)


def test_packed_times_round_trip_to_the_microsecond_never_earlier():
    t = time.time()
    values = array("d", [t, t + 2.5e-6, t + 1.0, t + 0.5, t + 86400.123456])  # not monotone on purpose
    back = array("d")
    back.frombytes(unpack_times(pack_times(values.tobytes())))
    assert back[0] == values[0]  # the first exact
    for v, b in zip(values, back):
        assert v - 1e-6 <= b <= v + 1e-6 and b >= v - 1e-9


def test_plain_chunk_costs_about_a_byte_per_run_on_disk():
    n = 10_000
    rec = {"task": "inc", "task_key": "inc-00000000", "n": n, "codes": bytes([COMPLETED]) * n,
           "ends": _ends(time.time(), n), "base": new_run_base().to_bytes(16, "big"), "start": 0}
    raw = pack_chunk(rec)
    assert len(raw) < n  # < 1 byte a run, for the record itself
    back = unpack_chunk(raw)
    assert back["codes"] == rec["codes"] and "ends" not in back  # times decoded on demand only
    failed = dict(rec, codes=rec["codes"][:5] + bytes([FAILED]) + rec["codes"][6:])
    assert unpack_chunk(pack_chunk(failed))["codes"] == failed["codes"]


def test_store_of_an_older_layout_reads_and_gets_indexed():
    store = open_run_store()
    base, t = new_run_base(), time.time()
    old = {"task": "inc", "n": 3, "base": base.to_bytes(16, "big"), "start": 0, "submitted": t,
           "codes": bytes([COMPLETED, FAILED, CACHED]), "ends": _ends(t, 3)}
    key = chunk_key(base, 0)
    # a record as the previous version wrote it (raw codes and ends), with no index and no layout mark
    store.env.write(lambda txn: (txn.put(key, msgpack.packb(old, use_bin_type=True), db=store.dbs["chunks"]),
                                 txn.put(int(t * 1e6).to_bytes(8, "big") + key, (3).to_bytes(4, "big"),
                                         db=store.dbs["bytime"]),
                                 txn.delete(b"layout", db=store.dbs["meta"])))
    assert not store.env.read(lambda txn: indexed(txn, store.dbs))
    assert [r["state"] for r in store.task_runs(state="Failed", limit=None)] == ["Failed"]  # walks every chunk
    store.env.write(lambda txn: build_indexes(txn, store.dbs))
    assert store.env.read(lambda txn: indexed(txn, store.dbs))
    assert [r["id"] for r in store.task_runs(state="Failed", limit=None)] == [run_id(base, 1)]
    assert store.task_run(run_id(base, 2))["state"] == "Cached"


def test_state_listing_walks_only_chunks_with_such_runs_and_pages():
    store = open_run_store()
    t = time.time() - 100
    ops = [_chunk_op(100, t + i) for i in range(50)]
    bad = [ops[7], ops[30], ops[31]]
    for op in bad:
        codes = bytearray(op.fields["codes"])
        codes[10] = codes[50] = FAILED
        op.fields.update(codes=bytes(codes), messages={10: "boom", 50: "boom"})
    store.apply(ops)
    assert store.env.stat("odd")["entries"] == 3  # chunks of plain completed runs are not indexed
    expected = {run_id(op.base, i) for op in bad for i in (10, 50)}
    page = queries.runs_page(store, state="Failed", limit=4)
    assert len(page.rows) == 4 and page.next
    rest = queries.runs_page(store, state="failed", limit=4, after=page.next)
    assert {r["id"] for r in page.rows + rest.rows} == expected and rest.next is None
    assert all(r["state"] == "Failed" for r in page.rows + rest.rows)
    assert len(queries.runs_page(store, state="Completed", limit=None).rows) == 50 * 100 - 6


def test_flow_counts_follow_chunk_changes_and_prune():
    store = open_run_store()
    fid, t = str(uuid.uuid4()), time.time()
    store.apply([FlowUpdate(fid, {"name": "f", "state": "Running", "state_type": "RUNNING", "start": t})])
    live = _chunk_op(100, t, flow_run_id=fid)
    del live.fields["codes"], live.fields["ends"]
    live.fields["live"] = ["PENDING", "Pending", t, ""]
    store.apply([live, _chunk_op(10, t, codes=bytes([CACHED]) * 10, flow_run_id=fid)])
    assert queries.flow_run_rows(store)[0]["counts"] == {"Pending": 100, "Cached": 10}
    store.apply([ChunkUpdate(live.base, 0, {"codes": bytes([FAILED]) + bytes(99), "ends": _ends(t, 100)})])
    row = queries.flow_run_rows(store)[0]
    assert row["counts"] == {"Failed": 1, "Completed": 99, "Cached": 10} and row["task_runs"] == 110
    assert store.flow_run(fid)["counts"] == row["counts"]


def test_writer_applies_runs_keep_on_its_first_write():
    from daskflow.engine.tracking import tracker

    store = open_run_store()
    old = _chunk_op(10, time.time() - 40 * DAY)
    store.apply([old])
    with dask.config.set({"daskflow.runs.keep": "30d"}):
        rid = run_id(new_run_base())
        tracker.record_states([(rid, "Completed", time.time(), "")], task_name="fresh")
        assert tracker.flush()
    ids = {r["id"] for r in store.task_runs(limit=None)}
    assert rid in ids and run_id(old.base, 0) not in ids


# -- prune beside a live owner and readers: real processes ------------------------------------------

OWNER = textwrap.dedent("""
    import sys, time, uuid
    from array import array
    from daskflow import owners
    from daskflow.ids import new_run_base
    from daskflow.store.runs import ChunkUpdate, FlowUpdate, open_run_store
    store = open_run_store()
    me, old = owners.me().key, time.time() - 10 * 86400
    fid = str(uuid.uuid4())
    base_live, base_flow, base_done = new_run_base(), new_run_base(), new_run_base()
    common = {"task": "owned", "task_key": "owned-0", "n": 5, "submitted": old, "owner": me}
    store.apply([
        FlowUpdate(fid, {"name": "long", "state": "Running", "state_type": "RUNNING", "start": old, "owner": me}),
        ChunkUpdate(base_live, 0, dict(common, live=["RUNNING", "Running", old, ""])),  # in flight, no flow
        ChunkUpdate(base_flow, 0, dict(common, flow_run_id=fid, codes=bytes(5),       # final, of the running flow
                                       ends=array("d", [old] * 5).tobytes(), live=None)),
        ChunkUpdate(base_done, 0, dict(common, codes=bytes(5), ends=array("d", [old] * 5).tobytes(), live=None)),
    ], lease=owners.lease())
    print(fid, base_live, base_flow, base_done, flush=True)
    sys.stdin.read()  # lives until the test closes stdin or kills it
""")

READER = textwrap.dedent("""
    import os, sys, time
    from daskflow.store import queries
    from daskflow.store.runs import open_run_store
    store = open_run_store(readonly=True)
    stop, ids = sys.argv[1], sys.argv[2:]
    n, end = 0, time.time() + 120
    while time.time() < end and not os.path.exists(stop):
        queries.runs_page(store, limit=50)
        queries.runs_page(store, state="Failed", limit=20)
        for row in queries.flow_run_rows(store, 20):
            queries.flow_run_detail(store, row["id"])
        for rid in ids:
            try:
                queries.run_detail(store, rid)
            except LookupError:
                pass  # pruned meanwhile: "no task run", never an error
        n += 1
        if n == 3:
            print("reading", flush=True)
    print("done", n, flush=True)
""")


def _python(code: str, *args: str, stdin: int | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_prune_keeps_what_a_live_owner_has_in_flight_while_readers_read(tmp_path):
    store = open_run_store()
    old = time.time() - 10 * DAY
    doomed = [_chunk_op(10, old + i, codes=bytes([FAILED]) + bytes(9)) for i in range(1200)]  # two prune batches
    for i in range(0, len(doomed), 500):
        store.apply(doomed[i:i + 500])
    fresh = _chunk_op(10, time.time())
    store.apply([fresh])
    owner = _python(OWNER, stdin=subprocess.PIPE)
    try:
        fid, *bases = owner.stdout.readline().split()
        base_live, base_flow, base_done = (int(b) for b in bases)
        sample_ids = [run_id(op.base, 0) for op in doomed[::200]]
        stop = tmp_path / "stop"
        readers = [_python(READER, str(stop), *sample_ids) for _ in range(2)]
        for r in readers:
            assert r.stdout.readline().strip() == "reading", r.stderr.read()
        pruner = _python("from daskflow.cli import main; main(['runs', 'prune', '--older-than', '7d'])")
        out, err = pruner.communicate(timeout=120)
        assert pruner.returncode == 0, err
        assert "pruned 12005 task run(s) and 0 flow run(s)" in out  # doomed + the owner's finished chunk
        stop.touch()
        for r in readers:
            rest, err = r.communicate(timeout=120)
            assert r.returncode == 0 and "Traceback" not in err, err
            assert rest.startswith("done")
        kept = {r["id"] for r in store.task_runs(limit=None)}
        assert kept == ({run_id(fresh.base, i) for i in range(10)} | {run_id(base_live, i) for i in range(5)}
                        | {run_id(base_flow, i) for i in range(5)})
        assert store.flow_record(fid)["state"] == "Running"
        assert queries.runs_page(store, state="Failed", limit=None).rows == []
    finally:
        owner.kill()  # SIGKILL of the process this test started
        owner.wait(30)
    # the owner is dead: its runs end Crashed (the next writer) and are no longer kept
    store.end_dead_owners()
    assert store.prune(7 * DAY) == (10, 1)
    assert {r["id"] for r in store.task_runs(limit=None)} == {run_id(fresh.base, i) for i in range(10)}


def test_flow_listing_reads_the_newest_from_the_start_index_and_ids_by_key_range():
    store = open_run_store()
    t = time.time() - 1000
    ids = [str(uuid.uuid4()) for _ in range(120)]
    store.apply([FlowUpdate(fid, {"name": f"f{i}", "state": "Completed", "state_type": "COMPLETED", "start": t + i})
                 for i, fid in enumerate(ids)])
    assert store.env.stat("flowtime")["entries"] == 120
    rows = queries.flow_run_rows(store, 50)
    assert [r["id"] for r in rows] == ids[::-1][:50]
    target = ids[17]
    assert store.flow_record(target[:8])["name"] == "f17" and store.flow_record(target)["id"] == target
    with pytest.raises(LookupError, match="ambiguous"):
        store.flow_record("")
    with pytest.raises(LookupError, match="no flow run"):
        store.flow_record("zz")
    assert store.prune(0) == (0, 120) and store.env.stat("flowtime")["entries"] == 0


@settings(max_examples=300, deadline=None)
@given(base=st.integers(0, (1 << 128) - 1), start=st.integers(0, 10**9), n=st.integers(1, 2000),
       pick=st.integers(0, 1999), digits=st.integers(1, 8), own=st.booleans(), other=st.integers(0, (1 << 128) - 1))
def test_id_prefix_matches_equal_testing_every_run(base, start, n, pick, digits, own, other):
    from daskflow.ids import MASK, STRIDE, parse_id_prefix, prefix_matches

    rid = run_id(base, start + pick % n) if own else f"{other:032x}"
    wanted, shift = parse_id_prefix(rid.replace("-", "")[:digits])
    expected, value = [], (base + start * STRIDE) & MASK
    for i in range(n):
        if value >> shift == wanted:
            expected.append(i)
        value = (value + STRIDE) & MASK
    assert list(prefix_matches(base, start, n, wanted, shift)) == expected


def test_short_id_prefix_finds_a_run_among_10_8_without_testing_each():
    from daskflow.ids import parse_id_prefix, prefix_matches

    base = new_run_base()
    target = run_id(base, 87_654_321)
    t0 = time.perf_counter()
    assert list(prefix_matches(base, 0, 10**8, *parse_id_prefix(target[:13]))) == [87_654_321]
    assert time.perf_counter() - t0 < 1.0  # testing each run: about a minute here


def test_readers_decode_times_without_numpy_to_the_same_values():
    import json

    store = open_run_store()
    op = _chunk_op(5000, time.time() - 5)
    store.apply([op])
    here = [(r["start"], r["end"]) for r in store.task_runs(limit=None)]
    code = ("import json, sys; from daskflow.store.runs import open_run_store; "
            "rows = open_run_store(readonly=True).task_runs(limit=None); "
            "print(json.dumps(['numpy' in sys.modules, [(r['start'], r['end']) for r in rows]]))")
    proc = _python(code)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    numpy_loaded, there = json.loads(out)
    assert not numpy_loaded and [tuple(p) for p in there] == here
