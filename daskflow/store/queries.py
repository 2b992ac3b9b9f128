"""What the faces show: the records of ``daskflow runs|flow-runs ... -o json`` and of the UI's API.

The CLI prints these objects as JSON and ``daskflow ui`` serves the very same objects
(``/api/runs`` is ``runs ls -o json``, ``/api/flow-runs/<id>`` is ``flow-runs show
-o json``, ...), so the two cannot drift apart: both faces call these functions and
``dumps``. Shapes (DESIGN.md, Observability; more fields are welcome, none go away):

- a task run: ``{id, name, task_key, flow_run_id, state, state_type, start, end,
  run_count, ...}``; shown alone it adds ``history``, ``error``, ``traceback``, ``cache_key``;
- a log record: ``{timestamp, level, message}`` (level by name); in a flow run's logs
  also ``run_id`` and ``run`` (the task run's name, None for the flow's own records);
- a flow run: its record plus ``counts`` (task runs per state name) and ``task_runs``;
- a task's metrics in a flow run (``task_metrics``) and the chunks of a flow run
  across workers (``timeline``).

Everything here only reads; timestamps are epoch seconds.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from daskflow.codes import CODE_OF_NAME, CODE_STATES, LIVE_STATES
from daskflow.store.rows import chunk_counts, chunk_span, durations, ends_of, expand, resource_columns, started_at
from daskflow.store.runs import RunPage, RunStore, chunk_key, unpack

__all__ = ["LEVELS", "dumps", "flow_logs", "flow_run_detail", "flow_run_rows", "public_run", "run_detail",
           "run_logs", "runs_page", "task_metrics", "timeline"]

RUN_FIELDS = ("id", "name", "task_key", "flow_run_id", "state", "state_type", "start", "end", "run_count")
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
_BAD_TYPES = ("FAILED", "CRASHED")


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text of a record or listing, as every face prints it (unknown values by ``str``)."""
    return json.dumps(obj, indent=indent, default=str)


def public_run(row: dict) -> dict:
    """A task-run row with the documented fields first."""
    out = {k: row.get(k) for k in RUN_FIELDS}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


def runs_page(store: RunStore, state: str | None = None, task: str | None = None, flow_run: str | None = None,
              limit: int | None = 50, after: str | None = None, id_prefix: str | None = None,
              budget: float | None = None) -> RunPage:
    """A page of task runs, newest first (``runs ls``); ``RunStore.task_runs_page`` says how."""
    page = store.task_runs_page(state, task, flow_run, limit, after=after, id_prefix=id_prefix, budget=budget)
    return RunPage([public_run(r) for r in page.rows], page.next)


def run_detail(store: RunStore, run_id: str) -> dict:
    """One task run (``runs show``): ``LookupError`` when no run or several match."""
    return public_run(store.task_run(run_id))


def level_name(level: int) -> str:
    return LEVELS.get(level, str(level))


def run_logs(store: RunStore, run_id: str, tail: int | None = None) -> list[dict]:
    """Log records of a task run or a flow run (its own records), oldest first (``runs logs``)."""
    return [{"timestamp": r["timestamp"], "level": level_name(r["level"]), "message": r["message"]}
            for r in store.logs(run_id, tail)]


def flow_run_rows(store: RunStore, limit: int | None = 50) -> list[dict]:
    """Flow runs, newest first, each with its task runs' counts per state (``flow-runs ls``).

    The counts come from the store's per-flow-run index (``store/indexes.py``), kept as
    chunks change: the listing reads one small record per flow run, whatever it ran.
    """
    rows = []
    for rec in store.flow_runs(limit):
        counts = store.flow_counts(rec["id"])
        rows.append(dict(rec, counts=dict(counts), task_runs=sum(counts.values())))
    return rows


LIVE_TYPES = ("PENDING", "SCHEDULED", "RUNNING")


def flow_run_detail(store: RunStore, flow_run_id: str) -> dict:
    """One flow run with counts per state and its slowest task runs (``flow-runs show``)."""
    return store.flow_run(flow_run_id)


def flow_logs(store: RunStore, flow_run_id: str, tail: int = 500) -> list[dict]:
    """The last ``tail`` log records of a flow run and of its task runs, oldest first (``flow-runs logs``)."""
    rec = store.flow_record(flow_run_id)
    chunks = store.flow_chunks(rec["id"])
    db = store.env.db("logs")

    def read(txn: Any) -> list[tuple[bytes, int, dict]]:
        found = []
        for owner, chunk in [(None, None), *((chunk_key(int.from_bytes(c["base"], "big"), c["start"]), c)
                                             for c in chunks)]:
            prefix = owner or _flow_owner(rec["id"])
            cur = txn.cursor(db=db)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    found.append((chunk, int.from_bytes(k[24:28], "big"), unpack(v)))
        return found

    records = sorted(store.env.read(read), key=lambda f: f[2]["timestamp"])[-tail:]
    out = []
    for chunk, i, r in records:
        row = expand(chunk, i) if chunk is not None else None
        out.append({"timestamp": r["timestamp"], "level": level_name(r["level"]), "message": r["message"],
                    "run_id": row and row["id"], "run": row and row["name"]})
    return out


def _flow_owner(flow_run_id: str) -> bytes:
    return uuid.UUID(flow_run_id).bytes + b"\xff" * 8


def _type_of(name: str) -> str:
    code = CODE_OF_NAME.get(name)
    return CODE_STATES[code].type if code is not None else LIVE_STATES.get(name, "PENDING")


def _quantile(ordered: Any, q: float) -> float | None:
    """The ``q`` quantile of sorted durations (the element at ``q * len``, no interpolation)."""
    if not len(ordered):
        return None
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def task_metrics(store: RunStore, flow_run_id: str) -> list[dict]:
    """Per task of a flow run: how many runs ended how, and how long they took (``flow-runs metrics``).

    Rows ``{task, task_key, runs, completed, cached, failed, retried, running, pending,
    p50, p95, max, total, cpu_p50, cpu_p95, cpu_max, mem_p50, mem_p95, mem_max}``, the task
    with the most total time first; durations (seconds) cover finished runs that ran (a
    Cached run took no time and is left out); CPU (seconds) and memory (peak RSS increase,
    bytes) cover the runs that recorded them (``rows.resource_columns``: light runs count
    their chunk's figures), None when none did.
    """
    import numpy as np  # sorting 10^6 durations in Python takes a third of a second

    rec = store.flow_record(flow_run_id)
    by_task: dict[str, dict] = {}
    times: dict[str, list] = {}
    used: dict[str, tuple[list, list]] = {}
    for chunk in store.flow_chunks(rec["id"]):
        name = chunk.get("task") or "?"
        m = by_task.setdefault(name, {"task": name, "task_key": chunk.get("task_key"), "runs": 0, "completed": 0,
                                      "cached": 0, "failed": 0, "retried": 0, "running": 0, "pending": 0})
        m["runs"] += chunk["n"]
        for state, n in chunk_counts(chunk).items():
            key = _metric_of(state)
            if key:
                m[key] += n
        m["retried"] += sum(1 for c in (chunk.get("run_counts") or {}).values() if c and c > 1)
        spent = np.asarray(durations(chunk), dtype=float)
        if len(spent):
            ran = np.frombuffer(bytes(chunk["codes"]), dtype=np.uint8)[: len(spent)] != CODE_OF_NAME["Cached"]
            times.setdefault(name, []).append(spent[ran])
        columns = resource_columns(chunk)
        if columns is not None:
            cpu, mem = used.setdefault(name, ([], []))
            cpu.extend(columns[0])
            mem.extend(columns[1])
    out = []
    for name, m in by_task.items():
        ordered = np.sort(np.concatenate(times[name])) if name in times else np.empty(0)
        out.append(dict(m, p50=_quantile(ordered, 0.5), p95=_quantile(ordered, 0.95),
                        max=float(ordered[-1]) if len(ordered) else None, total=float(ordered.sum())))
        cpu, mem = used.get(name, ([], []))
        for prefix, values in (("cpu", cpu), ("mem", mem)):
            spread = np.sort(np.asarray(values, dtype=float))
            out[-1].update({f"{prefix}_p50": _quantile(spread, 0.5), f"{prefix}_p95": _quantile(spread, 0.95),
                            f"{prefix}_max": float(spread[-1]) if len(spread) else None})
    out.sort(key=lambda m: m["total"], reverse=True)
    return out


def _metric_of(state: str) -> str | None:
    """The metrics column a state name counts in."""
    kind = _type_of(state)
    if state == "Cached":
        return "cached"
    return {"COMPLETED": "completed", "FAILED": "failed", "CRASHED": "failed", "RUNNING": "running",
            "PENDING": "pending", "SCHEDULED": "pending"}.get(kind)


def timeline(store: RunStore, flow_run_id: str, limit: int = 2000) -> list[dict]:
    """The chunks of a flow run as bars on workers: ``{task, worker, start, end, runs, failed, segments}``.

    One bar per chunk (the runs one Dask task executed), the latest ``limit`` by start;
    ``end`` is None while the chunk runs, ``worker`` None for direct calls in the client.
    ``segments`` colour the bar by its runs' states: ``[start, end, state type]`` for each
    stretch of consecutive runs of one state type (a chunk with one failed run is green,
    a sliver of red, green), at most ``MAX_SEGMENTS`` (then the shortest merge into
    their neighbours, failures kept).
    """
    rec = store.flow_record(flow_run_id)
    bars = []
    for chunk in store.flow_chunks(rec["id"]):
        start, end = chunk_span(chunk)
        counts = chunk_counts(chunk)
        bars.append({"task": chunk.get("task"), "worker": chunk.get("worker"), "start": start, "end": end,
                     "runs": chunk["n"], "failed": sum(n for s, n in counts.items() if _type_of(s) in _BAD_TYPES),
                     "segments": run_segments(chunk)})
    bars.sort(key=lambda b: b["start"] or 0)
    return bars[-limit:]


MAX_SEGMENTS = 40


def run_segments(chunk: dict) -> list[list]:
    """``[start, end, state type]`` stretches of a finished chunk's runs (empty while it runs)."""
    codes = chunk.get("codes")
    ends = ends_of(chunk)
    if codes is None or len(ends) < len(codes):
        return []
    out: list[list] = []
    for i, code in enumerate(codes):
        kind = CODE_STATES[code].type
        if out and out[-1][2] == kind:
            out[-1][1] = max(out[-1][1], ends[i])
        else:
            out.append([started_at(chunk, i) or ends[i], ends[i], kind])
    while len(out) > MAX_SEGMENTS:  # merge the shortest completed stretch into the one before it
        j = min(range(1, len(out)), key=lambda k: (out[k][2] != "COMPLETED", out[k][1] - out[k][0]))
        out[j - 1][1] = max(out[j - 1][1], out[j][1])
        del out[j]
    return out


def run_artifacts(store: RunStore, run_id: str) -> list[dict]:
    """The artifacts a task run (id or unique prefix) published, oldest first."""
    from daskflow.store.artifacts import artifacts_of_run

    return artifacts_of_run(store, store.task_run(run_id)["id"])


def flow_run_artifacts(store: RunStore, flow_run_id: str) -> list[dict]:
    """The artifacts a flow run (id or unique prefix) and its task runs published, oldest first."""
    from daskflow.store.artifacts import artifacts_of_flow_run

    return artifacts_of_flow_run(store, store.flow_record(flow_run_id)["id"])


def artifact_keys(store: RunStore, limit: int | None = 100) -> list[dict]:
    """``daskflow artifacts ls``: the newest version of every key."""
    from daskflow.store.artifacts import latest_artifacts

    return latest_artifacts(store, limit)


def artifact(store: RunStore, ref: str) -> list[dict]:
    """``daskflow artifacts show REF``: every version of a key, or the artifact with that id."""
    from daskflow.store.artifacts import find_artifact

    return find_artifact(store, ref)
