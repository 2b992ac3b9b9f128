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
