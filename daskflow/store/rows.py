"""Chunk records read back as runs: the row and the history of run ``i`` of a chunk record.

The run store keeps one msgpack record per chunk (see ``store/runs.py``); these pure
functions expand a record into the per-run shapes the CLI and the UI show (``runs ls
-o json`` rows, ``runs show`` histories), with the run-count rule of the ground
(``codes.run_count_of``), and summarise a record (counts per state, durations).
"""

from __future__ import annotations

import heapq
import sys
from array import array

from daskflow.codes import CODE_OF_NAME, CODE_STATES, run_count_of
from daskflow.ids import run_id
from daskflow.store.packing import time_in, time_planes, times

_DECODE_AFTER = 4  # reads of single ends of one record before all its ends are decoded at once


def end_at(rec: dict, i: int) -> float | None:
    """Run ``i``'s end (None: none recorded). A listing that shows one or two runs of a chunk
    sums a prefix of its packed ends instead of decoding them all (``packing.time_at``); a
    record read more often than that is decoded once (``ends_of``)."""
    packed_ends = rec.get("zends")
    reads = rec.get("_end_reads", 0)
    if "_ends" not in rec and rec.get("ends") is None and packed_ends is not None and reads < _DECODE_AFTER \
            and "numpy" not in sys.modules:  # with numpy loaded, decoding them all is as cheap
        rec["_end_reads"] = reads + 1
        if "_end_planes" not in rec:
            rec["_end_planes"] = time_planes(packed_ends)
        planes = rec["_end_planes"]
        return None if planes is None else time_in(planes, i)
    ends = ends_of(rec)
    return ends[i] if 0 <= i < len(ends) else None


def ends_of(rec: dict) -> array:
    ends = rec.get("_ends")
    if ends is None:
        ends = array("d")
        raw = times(rec, "ends")
        if raw:
            ends.frombytes(raw)
        rec["_ends"] = ends
    return ends


def packed(rec: dict, name: str) -> array | None:
    """A per-run packed time array of a direct-call record (``starts``, ``submits``), or None."""
    raw = times(rec, name)
    if raw is None:
        return None
    values = rec.get("_" + name)
    if values is None:
        values = rec["_" + name] = array("d")
        values.frombytes(raw)
    return values


def submitted_at(rec: dict, i: int) -> float | None:
    submits = packed(rec, "submits")
    return submits[i] if submits is not None and i < len(submits) else rec.get("submitted")


def started_at(rec: dict, i: int) -> float | None:
    """When run ``i`` started: its own recorded start, else when the run before it ended.

    Runs of a chunk run back to back, so only run 0 needs a start of its own: ``first``,
    when the chunk's loop began (the chunk's setup, ``started`` .. ``first``, is no run's
    time). Runs that did not run back to back (direct calls folded into one record,
    retries parked while later runs went on) have ``starts``, 0 for a run not timed.
    """
    starts = packed(rec, "starts")
    if starts is not None and i < len(starts) and starts[i]:
        return starts[i]
    before = end_at(rec, i - 1) if i > 0 else None
    if before is not None:
        return before
    return rec.get("first") or rec.get("started")


def expand(rec: dict, i: int) -> dict:
    """Run ``i`` of a chunk record as a row (the ``runs ls -o json`` shape)."""
    base = int.from_bytes(rec["base"], "big")
    index = rec["start"] + i
    codes = rec.get("codes")
    recorded = (rec.get("run_counts") or {}).get(i)
    end = None
    if codes is not None:
        state_type, state = CODE_STATES[codes[i]]
        end = end_at(rec, i)
        run_count = run_count_of(codes[i], recorded)
        start = started_at(rec, i) if run_count else None
        message = final_message(rec, i) if state_type != "COMPLETED" else ""
    else:
        events = (rec.get("events") or {}).get(i)
        live = events[-1] if events else rec.get("live") or ["PENDING", "Pending", rec.get("submitted"), ""]
        state_type, state = live[0], live[1]
        start = rec.get("started") if state_type == "RUNNING" else None
        run_count = 0 if state_type in ("PENDING", "SCHEDULED") else recorded or 1
        message = live[3] or ""
    return {
        "id": run_id(base, index),
        "name": (rec.get("names") or {}).get(i) or f"{rec.get('task')}-{index}",
        "task_name": rec.get("task"),
        "task_key": rec.get("task_key"),
        "flow_run_id": rec.get("flow_run_id"),
        "state": state,
        "state_type": state_type,
        "submitted": submitted_at(rec, i),
        "start": start,
        "end": end,
        "run_count": run_count,
        "worker": rec.get("worker"),
        "message": message,
    }


def history(rec: dict, i: int) -> list[dict]:
    """Run ``i``'s states, oldest first: Pending, [recorded events], Running, [retries], final."""
    events = (rec.get("events") or {}).get(i, ())
    out = []
    if not events or events[0][1] not in ("Scheduled", "Pending"):
        # a chunk may start before its future (and submission time) is recorded
        sub = submitted_at(rec, i)
        pending = min(t for t in (sub, started_at(rec, i) if packed(rec, "starts") is not None else rec.get("started")) if t) \
            if sub else None
        out.append({"name": "Pending", "type": "PENDING", "timestamp": pending, "message": ""})
    extra = (rec.get("history") or {}).get(i)
    for t, name, ts, msg in events:
        if extra and name in ("Running", "Retrying", "AwaitingRetry"):
            continue  # the envelope's history holds these, with the first Running
        out.append({"name": name, "type": t, "timestamp": ts, "message": msg or ""})
    codes = rec.get("codes")
    if codes is None:
        live = rec.get("live")
        if live and live[1] != "Pending" and not (rec.get("events") or {}).get(i):
            out.append({"name": live[1], "type": live[0], "timestamp": live[2], "message": live[3] or ""})
        return out
    row = expand(rec, i)
    if extra:
        out.extend({"name": n, "type": t, "timestamp": ts, "message": m or ""} for t, n, ts, m in extra)
    elif row["run_count"] and not any(h["type"] == "RUNNING" for h in out):
        out.append({"name": "Running", "type": "RUNNING", "timestamp": row["start"], "message": ""})
    if not out or out[-1]["name"] != row["state"]:
        out.append({"name": row["state"], "type": row["state_type"], "timestamp": row["end"],
                    "message": final_message(rec, i)})
    return out


def final_message(rec: dict, i: int) -> str:
    """Run ``i``'s final message: its own, else the chunk's (one for all, e.g. its owner died)."""
    return (rec.get("messages") or {}).get(i) or rec.get("message") or ""


def may_hold(rec: dict, state_l: str) -> bool:
    """Whether a chunk may hold runs in a state (name or type, lower case), from its codes."""
    codes = rec.get("codes")
    if codes is None or rec.get("events"):
        return True
    names = {state.name for code, state in CODE_STATES.items() if code in codes}  # a C scan per code, not per run
    kinds = {n.lower() for n in names} | {CODE_STATES[CODE_OF_NAME[n]].type.lower() for n in names}
    return state_l in kinds


def runs_in_state(rec: dict, state_l: str, indexes: range) -> range | list[int]:
    """The indexes among ``indexes`` of a chunk's runs that may be in a state (name or type, lower case).

    Found with ``bytes.find`` on the codes of a final chunk, so a rare state costs what it
    finds; a live chunk (or one with recorded events) keeps every index, for the caller to check.
    """
    codes = rec.get("codes")
    if codes is None or rec.get("events"):
        return indexes
    match = [bytes((c,)) for c, cs in CODE_STATES.items() if state_l in (cs.name.lower(), cs.type.lower())]
    found: list[int] = []
    for code in match:
        at = codes.find(code, indexes.start, indexes.stop)
        while at >= 0:
            found.append(at)
            at = codes.find(code, at + 1, indexes.stop)
    return sorted(found)


def chunk_counts(rec: dict) -> dict[str, int]:
    """How many runs of a chunk are in each state (by name)."""
    codes = rec.get("codes")
    if codes is None:
        live = rec.get("live") or ["PENDING", "Pending"]
        return {live[1]: rec["n"]}
    out: dict[str, int] = {}
    left = len(codes)
    for code, state in CODE_STATES.items():  # Completed first: most chunks stop after one count
        count = codes.count(code)  # in C; ``set(codes)`` walked the runs one by one (50x slower)
        if count:
            out[state.name] = count
            left -= count
            if not left:
                break
    return out


def durations(rec: dict) -> list[float]:
    """How long each run of a finished chunk took, in seconds (empty while it is live)."""
    ends = ends_of(rec)
    if rec.get("codes") is None or not ends:
        return []
    prev = [rec.get("first") or rec.get("started") or ends[0], *ends[:-1]]
    starts = packed(rec, "starts")
    if starts is not None:
        prev = [s or p for s, p in zip(starts, prev)]
    return [e - s for s, e in zip(prev, ends)]


def chunk_span(rec: dict) -> tuple[float | None, float | None]:
    """When a chunk's first run started and, once final, when its last run ended."""
    ends = ends_of(rec)
    starts = packed(rec, "starts")
    first = starts[0] if starts and starts[0] else rec.get("started") or (ends[0] if ends else rec.get("submitted"))
    return first, (max(ends) if ends and rec.get("codes") is not None else None)


_ROOT_CAUSES = frozenset(code for code, cs in CODE_STATES.items() if cs.type in ("FAILED", "CRASHED")
                         and cs.name != "NotReady")
_NOT_READY = CODE_OF_NAME["NotReady"]


def bad_runs(rec: dict, causes: list[dict], consequences: list[dict], limit: int) -> None:
    """Add a finished chunk's failed runs (rows with their message): root causes, and NotReady runs."""
    codes = rec.get("codes")
    if codes is None or not (set(codes) & (_ROOT_CAUSES | {_NOT_READY})):
        return
    for i, code in enumerate(codes):
        into = causes if code in _ROOT_CAUSES else consequences if code == _NOT_READY else None
        if into is not None and len(into) < limit * 4:  # enough to keep the earliest after sorting
            into.append(expand(rec, i))


def slowest_runs(rec: dict, k: int) -> list[tuple[float, dict]]:
    spent = durations(rec)
    return [(spent[i], expand(rec, i)) for i in heapq.nlargest(k, range(len(spent)), key=spent.__getitem__)]


def run_resources(rec: dict, i: int, row: dict) -> dict | None:
    """Run ``i``'s wall time, CPU time and memory (``runs show``), or None when nothing was measured.

    ``resolution`` says whose figures they are: ``"run"`` (a run of 5 ms or more, measured
    alone), ``"chunk"`` (a light run: CPU is its even share of its chunk's, memory its
    chunk's peak increase), or ``"killed"`` (its worker was killed for memory: the RSS
    of the last sample). See ``engine/worker/resources.py``.
    """
    res = rec.get("res")
    wall = row["end"] - row["start"] if row.get("end") and row.get("start") else None
    if not res:
        return None if wall is None else {"wall_seconds": wall, "resolution": None}
    out: dict = {"wall_seconds": wall, "worker_rss_bytes": res.get("rss")}
    killed = [[res.get("rss"), res["killed"]]] if res.get("killed") else \
        [[rss, limit] for index, rss, limit in res.get("killed_runs") or () if index == i]
    if killed:
        rss, limit = killed[0]
        return dict(out, resolution="killed", worker_rss_bytes=rss, cpu_seconds=None, peak_rss_increase_bytes=None,
                    memory_limit_bytes=limit if limit is not True else None)
    for index, cpu, mem in res.get("runs") or ():
        if index == i:
            return dict(out, resolution="run", cpu_seconds=cpu, peak_rss_increase_bytes=mem)
    n = rec.get("n", 1)
    return dict(out, resolution="chunk", cpu_seconds=res.get("cpu", 0.0) / n, peak_rss_increase_bytes=res.get("mem"),
                chunk_runs=n)


def resource_columns(rec: dict) -> tuple[list[float], list[float]] | None:
    """Per-run CPU seconds and peak RSS increases of a chunk (light runs: their chunk's share,
    see ``run_resources``), or None when it recorded none."""
    res = rec.get("res")
    if not res or res.get("killed"):
        return None
    n = rec.get("n", 1)
    cpu = [res.get("cpu", 0.0) / n] * n
    mem = [float(res.get("mem") or 0)] * n
    for index, run_cpu, run_mem in res.get("runs") or ():
        if 0 <= index < n:
            cpu[index], mem[index] = run_cpu, float(run_mem)
    return cpu, mem


def wanted_chunk(rec: dict, task: str | None, flow_run_id: str | None, state_l: str | None) -> bool:
    """Whether a chunk record may hold runs a listing filtered by task, flow run and state wants."""
    if task and task not in (rec.get("task"), rec.get("task_key")):
        return False
    if flow_run_id and not (rec.get("flow_run_id") or "").startswith(flow_run_id):
        return False
    return not state_l or may_hold(rec, state_l)  # decided from the packed codes, without expanding
