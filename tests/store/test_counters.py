"""The run store's counters (``store/metrics.py``): what the writer adds, once, as records change."""

from __future__ import annotations

import time
from array import array

from daskflow.ids import new_run_base
from daskflow.store.metrics import COUNTED
from daskflow.store.runs import ChunkUpdate, open_run_store


def _live(store, base, n, task="inc", submitted=None):
    store.apply([ChunkUpdate(base, 0, {"task": task, "n": n, "submitted": submitted or time.time(),
                                       "live": ["PENDING", "Pending", time.time(), ""], "caches": True}, new=True)])


def _final(store, base, codes, run_counts=None):
    t = time.time()
    fields = {"codes": bytes(codes), "ends": array("d", [t + 0.002 * (i + 1) for i in range(len(codes))]).tobytes(),
              "started": t, "live": None}
    if run_counts:
        fields["run_counts"] = run_counts
    store.apply([ChunkUpdate(base, 0, fields)])


def _values(store):
    return store.counters().values


def test_counters_follow_a_chunk_from_pending_to_final_once():
    store = open_run_store()
    base = new_run_base()
    _live(store, base, 4)
    assert _values(store)[("flight", "inc", "")] == 4
    _final(store, base, [0, 1, 2, 0], run_counts={2: 3})
    _final(store, base, [0, 1, 2, 0], run_counts={2: 3})  # the envelope after the end event: nothing new
    v = _values(store)
    assert v[("flight", "inc", "")] == 0
    assert (v[("runs", "inc", "Completed")], v[("runs", "inc", "Cached")], v[("runs", "inc", "Failed")]) == (2, 1, 1)
    assert v[("retries", "inc", "")] == 2
    assert (v[("hits", "inc", "")], v[("misses", "inc", "")]) == (1, 3)
    assert v[("dur", "inc", "1")] == 3  # three runs that ran, each 2 ms: the 1-5 ms bucket
    assert v[("dur_sum", "inc", "")] == __import__("pytest").approx(0.006, abs=1e-6)


def test_prune_keeps_counters_and_lowers_runs_in_flight():
    store = open_run_store()
    old_live, old_done = new_run_base(), new_run_base()
    long_ago = time.time() - 10 * 86400
    _live(store, old_live, 3, submitted=long_ago)
    _live(store, old_done, 2, submitted=long_ago)
    _final(store, old_done, [0, 0])
    assert store.prune(86400)[0] == 5
    v = _values(store)
    assert v[("flight", "inc", "")] == 0 and v[("runs", "inc", "Completed")] == 2


def test_a_store_without_counters_is_counted_in_full_by_its_next_writer():
    store = open_run_store()
    base = new_run_base()
    _live(store, base, 3)
    _final(store, base, [0, 0, 2])
    store.env.write(lambda txn: txn.drop(store.dbs["metrics"], delete=False))  # as a store of an older version
    assert store.counters() is None
    _live(store, new_run_base(), 5, task="other")
    v = _values(store)
    assert v[("runs", "inc", "Completed")] == 2 and v[("runs", "inc", "Failed")] == 1
    assert v[("flight", "other", "")] == 5
    assert store.env.read(lambda txn: txn.get(COUNTED, db=store.dbs["metrics"])) is not None


def test_runs_of_a_dead_owner_count_as_crashed():
    from daskflow import owners

    store = open_run_store()
    gone = owners.Owner("expired-host", 4242, 1.0)  # another host whose lease ran out
    base = new_run_base()
    store.apply([ChunkUpdate(base, 0, {"task": "inc", "n": 3, "submitted": time.time(), "owner": gone.key,
                                       "live": ["RUNNING", "Running", time.time(), ""]}, new=True)],
                lease=owners.Lease(gone, time.time() - 1))
    assert _values(store)[("flight", "inc", "")] == 3
    assert [o.host for o in store.end_dead_owners()] == ["expired-host"]
    v = _values(store)
    assert v[("flight", "inc", "")] == 0 and v[("runs", "inc", "Crashed")] == 3


def test_durations_read_from_packed_ends_are_those_of_the_decoded_times():
    """The writer buckets a chunk's durations from its packed deltas (``_histogram_packed``),
    the decoded times' path kept for records with per-run starts: both agree, on trivial runs
    (every delta under 128 us: the low byte plane alone) and on mixed ones (a run out of order)."""
    import random

    from daskflow.codes import CODE_STATES, NEVER_RAN
    from daskflow.store import metrics, packing

    rng = random.Random(24)
    for trial in range(60):
        n, t0 = rng.choice([64, 300, 5000]), time.time()
        steps = [1e-6, 3e-6, 5e-5] if trial % 2 else [1e-6, 0.0007, 0.0012, 0.05, 0.3, 2.0]
        ends, x = array("d"), t0
        for _ in range(n):
            x += rng.choice(steps) * (0.5 + rng.random() * 0.3) - (1e-4 if rng.random() < 0.01 else 0.0)
            ends.append(x)
        codes = bytes(rng.choice(list(CODE_STATES)) for _ in range(n))
        started = t0 - rng.random() * 0.01
        packed = packing.pack_times(ends.tobytes())
        decoded: metrics.Delta = {}
        metrics.tally({"task": "t", "codes": codes, "ends": packing.unpack_times(packed), "started": started}, decoded)
        read: metrics.Delta = {}
        metrics.tally({"task": "t", "codes": codes, "zends": packed, "started": started}, read)
        total = read.pop(("dur_sum", "t", ""))
        assert abs(total - decoded.pop(("dur_sum", "t", ""))) < 1e-6 * n
        assert read == decoded
        assert sum(v for (kind, _, _), v in read.items() if kind == "dur") == sum(c not in NEVER_RAN for c in codes)
