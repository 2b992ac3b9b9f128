"""The wire form of worker tracker messages (Dask events carry msgpack-able values only)."""

import msgpack

from daskflow.codes import StateEvent
from daskflow.engine.tracking.events import (
    ChunkEnded,
    ChunkStarted,
    LogsShipped,
    RunRetrying,
    batch_from_wire,
    batch_to_wire,
)


def _roundtrip(messages):
    # what Dask does to an event payload on its way to the client
    return batch_from_wire(msgpack.unpackb(msgpack.packb(batch_to_wire(messages)), strict_map_key=False))


def test_a_chunk_that_started_and_ended_in_one_batch_travels_as_one_message():
    base = 2**127 + 5
    got = _roundtrip([ChunkStarted(base, 0, 1.0, "w"), ChunkStarted(7, 10, 1.5, "w"),
                      ChunkEnded(base, 0, 2.0, "w", [[3, 2]])])
    assert got == [ChunkStarted(7, 10, 1.5, "w"), ChunkEnded(base, 0, 2.0, "w", [[3, 2]], started=1.0)]


def test_messages_come_back_in_the_order_of_a_chunks_life_whatever_the_batch_order():
    retry = RunRetrying(9, 0, 2, StateEvent("SCHEDULED", "AwaitingRetry", 3.0))
    logs = LogsShipped([[b"x" * 24, 0, 1.0, 20, "hello", "daskflow.runs"]])
    got = _roundtrip([logs, ChunkEnded(9, 0, 4.0, None, []), retry, ChunkStarted(9, 0, 1.0, None)])
    assert [type(m) for m in got] == [RunRetrying, ChunkEnded, LogsShipped]
    assert got[0] == retry and got[1].started == 1.0
    assert _roundtrip([logs])[0].records[0][4] == "hello"
    assert batch_from_wire(batch_to_wire([logs, retry]), only=LogsShipped) == [logs]


def test_the_end_of_a_chunk_where_most_runs_failed_carries_every_code():
    from array import array

    from daskflow.codes import COMPLETED, FAILED
    from daskflow.engine.core.envelope import ChunkResult
    from daskflow.engine.worker import reports
    from daskflow.runners.base import LOCAL_HOST

    n = 20_000
    res = ChunkResult("t", 1, 0, n, bytearray([COMPLETED] * 5_000 + [FAILED] * 15_000), [None] * n,
                      n_failed=15_000, ends=array("d", [0.0]) * n)
    sent: list = []
    reports.report, real = (lambda msg, remote: sent.append(msg)), reports.report
    try:
        reports.chunk_ended(res, LOCAL_HOST)
    finally:
        reports.report = real
    (end,) = _roundtrip(sent)
    codes = end.run_codes(n)
    assert codes.count(FAILED) == 15_000 and codes[19_999] == FAILED and codes[4_999] == COMPLETED
    few = ChunkEnded(1, 0, 1.0, None, [[3, FAILED]])
    assert _roundtrip([few])[0].run_codes(5) == bytearray([0, 0, 0, FAILED, 0])


def test_an_end_event_keeps_the_start_it_was_given_and_its_packed_ends():
    # the end event carries the envelope's start: the record it writes and the one the envelope
    # rewrites then agree (one comparison on the writer, not two histograms and a repack)
    got = _roundtrip([ChunkStarted(3, 0, 1.0, "w"), ChunkEnded(3, 0, 2.0, "w", [], started=1.25, zends=b"packed")])
    assert got == [ChunkEnded(3, 0, 2.0, "w", [], started=1.25, zends=b"packed")]


def test_a_big_chunks_envelope_travels_with_packed_ends_and_one_code():
    import pickle
    import time
    from array import array

    import cloudpickle

    from daskflow.engine.core.envelope import ChunkResult

    n, t0 = 100_000, time.time()
    res = ChunkResult("t", 1, 0, n, bytearray(n), None, started=t0)
    res.ends = array("d", [t0 + 1e-6 * i * 1.37 for i in range(n)])
    blob = cloudpickle.dumps(res, protocol=5)
    assert len(blob) < n // 4  # 8 bytes of end time and one of code a run would be 900 KB
    back = pickle.loads(blob)
    assert bytes(back.codes) == res.codes and type(back.codes).__name__ == "UniformCodes"  # one code, kept as one
    assert back.ends[0] == res.ends[0]
    # whole microseconds, rounded up: an end never reads as earlier than it was
    assert all(0 <= b - a < 1.001e-6 for a, b in zip(res.ends, back.ends))
    res.codes[7], res.ends[9] = 2, 0.0  # a failed run; a run without an end: raw, as they are
    back = pickle.loads(cloudpickle.dumps(res, protocol=5))
    assert back.codes == res.codes and back.ends == res.ends


def test_an_envelope_that_came_packed_keeps_its_ends_packed_until_a_time_is_read():
    import pickle
    import time
    from array import array

    import cloudpickle

    from daskflow.engine.core.compact import PackedEnds
    from daskflow.engine.core.envelope import ChunkResult

    n, t0 = 1000, time.time()
    res = ChunkResult("t", 1, 0, n, bytearray(n), None, started=t0)
    res.ends = array("d", [t0 + 1e-5 * i for i in range(n)])
    back = pickle.loads(cloudpickle.dumps(res, protocol=5))
    ends = back.ends
    assert type(ends) is PackedEnds and len(ends) == n
    # what a chunk's record and the chunk-size model read: no decoded array kept
    assert ends[0] == res.ends[0] and abs(ends[-1] - res.ends[-1]) < 1.001e-6 and list(ends[-1:]) == [ends[-1]]
    assert ends._raw is None
    assert abs(back.state(500).timestamp - res.ends[500]) < 1.001e-6  # a run's time: decoded then
    again = pickle.loads(cloudpickle.dumps(back, protocol=5))  # passed on as it came
    assert again.ends.packed == ends.packed and again.ends.tobytes() == ends.tobytes()


def test_packed_ends_arrive_with_their_first_and_last_and_are_not_decoded_on_arrival():
    """Decoding 10^5 ends costs ~5 ms and a chunk reaches the client twice (summary, values):
    the first and last travel beside the packed bytes, equal to what decoding gives."""
    import pickle
    import time
    from array import array

    from daskflow.engine.core.compact import PackedEnds
    from daskflow.engine.core.envelope import ChunkResult

    n, t0 = 5000, time.time()
    res = ChunkResult("t", 1, 0, n, bytearray(n), None, started=t0)
    res.ends = array("d", [t0 + 3.3e-6 * i + 1e-7 * (i % 3) for i in range(n)])
    ends = pickle.loads(pickle.dumps(res, protocol=5)).ends
    assert type(ends) is PackedEnds and ends._raw is None
    assert (ends[0], ends[-1]) == (ends.array()[0], ends.array()[-1])  # exactly as decoded
    told = pickle.loads(pickle.dumps(PackedEnds(b"not decodable", n, 1.0, 2.0)))
    assert (told[0], told[-1], len(told)) == (1.0, 2.0, n)  # arrival reads nothing of the packed bytes
    ends[10] = 5.0  # changed after arrival: sent on as it is now, not as it came
    again = pickle.loads(pickle.dumps(ends))
    assert again[10] == 5.0 and list(again) == list(ends)
