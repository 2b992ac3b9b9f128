"""`daskflow runs ...` and `daskflow flow-runs ...`: read the run store; never import distributed
(except `flow-runs retry`, which runs a flow again).

Every command that prints a table or a record takes ``-o json`` (shapes in DESIGN.md);
run ids may be given as any unique prefix. Timestamps in JSON are epoch seconds (UTC
floats), in every command. These commands never create a store: under a home with no
run store, ``ls`` commands say "no runs recorded under HOME" on stderr and list nothing
(exit 0); ``show`` and ``logs`` fail with that message (exit 1).
"""

from __future__ import annotations

import datetime
import re
import sys
from typing import Any

import click

from daskflow.cli.cache import output_option
from daskflow.codes import STATE_NAMES, STATE_TYPES

__all__ = ["COMMANDS"]

_output = output_option
_STYLES = {"COMPLETED": "green", "FAILED": "red", "CRASHED": "magenta", "CANCELLED": "yellow",
           "RUNNING": "cyan", "PENDING": "dim", "SCHEDULED": "dim"}


def _store():
    """The run store, after ending the runs of processes that died (no run outlives its owner)."""
    from daskflow.store.runs import open_run_store

    store = open_run_store(create=False)
    store.end_dead_owners()
    return store


def _listing(query: str, *args: Any) -> list[dict]:
    """Rows of a listing (a function of ``daskflow.store.queries``); none, and a note on stderr, without a store."""
    try:
        store = _store()
    except LookupError as exc:
        click.echo(str(exc.args[0]), err=True)
        return []
    return _query(query)(store, *args)


def _query(name: str) -> Any:
    from daskflow.store import queries

    return getattr(queries, name)


def _json(obj: Any) -> None:
    click.echo(_query("dumps")(obj))


def _when(ts: float | None, short: bool = False) -> str:
    if not ts:
        return "-"
    when = datetime.datetime.fromtimestamp(ts)
    if short and when.date() == datetime.date.today():
        return when.strftime("%H:%M:%S.%f")[:-3]
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _dur(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    d = end - start
    return f"{d * 1e3:.1f} ms" if d < 1 else f"{d:.2f} s"


def _state(row: dict) -> str:
    return f"[{_STYLES.get(row['state_type'], 'white')}]{row['state']}[/]"


def _console():
    from rich.console import Console

    return Console()


def _lookup(query: str, *args: Any) -> Any:
    try:
        return _query(query)(_store(), *args)
    except LookupError as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None


def parse_age(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"`` (or plain seconds) → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 7d, 12h, 30m or 45s")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


class StateParam(click.ParamType):
    """A state name or state type, in any case; anything else is an error listing the valid ones."""

    name = "state"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        for known in (*STATE_NAMES, *STATE_TYPES):
            if str(value).lower() == known.lower():
                return known
        self.fail(f"{value!r} is not a state. State names: {', '.join(STATE_NAMES)}; "
                  f"state types: {', '.join(STATE_TYPES)}", param, ctx)


@click.group("runs")
def runs() -> None:
    """Task runs: list them, show one, read its logs, prune old ones."""


@runs.command("ls")
@click.option("--state", type=StateParam(), metavar="STATE", help="Only runs in this state: a state name (Completed, Cached, Failed, ...) "
              "or a state type (COMPLETED, FAILED, ...).")
@click.option("--task", "task_name", help="Only runs of this task (name or task key).")
@click.option("--flow-run", "flow_run", help="Only runs of this flow run (id or prefix).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="At most this many runs, newest first.")
@_output
def runs_ls(state: str | None, task_name: str | None, flow_run: str | None, limit: int, output: str) -> None:
    """List task runs, newest first.

    Example: daskflow runs ls --state Failed --limit 10 -o json
    """
    rows = _listing("runs_page", state, task_name, flow_run, limit)
    rows = rows.rows if rows else []
    if output == "json":
        return _json(rows)
    from rich.table import Table

    table = Table(title=f"task runs ({len(rows)}); ids are shortened, any unique prefix works")
    for col in ("id", "name", "state", "start", "duration", "runs", "flow run"):
        table.add_column(col, no_wrap=col in ("id", "start"))
    for r in rows:
        table.add_row(r["id"][:13], r["name"], _state(r), _when(r["start"], True), _dur(r["start"], r["end"]),
                      str(r["run_count"]), (r["flow_run_id"] or "-")[:8])
    _console().print(table)


@runs.command("show")
@click.argument("run_id")
@_output
def runs_show(run_id: str, output: str) -> None:
    """One task run: state history with timestamps, durations, retries, cache key, inputs of a failed run, traceback."""
    row = _lookup("run_detail", run_id)
    if output == "json":
        return _json(row)
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{row['name']}[/]  {row['id']}  {_state(row)}")
    for label, key in (("task", "task_key"), ("flow run", "flow_run_id"), ("worker", "worker"),
                       ("run count", "run_count"), ("cache key", "cache_key")):
        console.print(f"  {label:10} {row.get(key) if row.get(key) is not None else '-'}")
    console.print(f"  {'duration':10} {_dur(row['start'], row['end'])}")
    if row.get("resources"):
        console.print(f"  {'resources':10} {_resources(row['resources'])}")
    table = Table(title="history")
    for col in ("state", "time", "since previous", "message"):
        table.add_column(col)
    prev = None
    for h in row["history"]:
        table.add_row(_state({"state": h["name"], "state_type": h["type"]}), _when(h["timestamp"], True),
                      _dur(prev, h["timestamp"]) if prev else "-", h["message"] or "")
        prev = h["timestamp"] or prev
    console.print(table)
    if row.get("error"):
        console.print(f"[red]error:[/] {row['error']}")
    if row.get("inputs"):  # what a failed run failed on (short reprs; redact_inputs hides values)
        console.print("inputs:")
        for name, text in row["inputs"].items():
            console.print(f"  {name} = {text}", markup=False, highlight=False)
    if row.get("traceback"):
        console.print(row["traceback"], markup=False, highlight=False)


def _resources(res: dict) -> str:
    """A run's CPU and memory on one line, saying whose figures they are."""
    if res.get("resolution") == "killed":
        return (f"killed for memory: worker RSS {_size(res.get('worker_rss_bytes'))} at the last sample, limit "
                f"{_size(res.get('memory_limit_bytes'))}")
    if res.get("resolution") is None:
        return "not measured"
    whose = "this run" if res["resolution"] == "run" else f"its chunk of {res.get('chunk_runs')} runs (CPU: its share)"
    return (f"CPU {_dur(0, res.get('cpu_seconds'))}, peak RSS increase {_size(res.get('peak_rss_increase_bytes'))}"
            f" ({whose}), worker RSS {_size(res.get('worker_rss_bytes'))}")


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


@runs.command("logs")
@click.argument("run_id")
@click.option("--tail", type=click.IntRange(min=1), help="Only the last N records (N >= 1).")
@_output
def runs_logs(run_id: str, tail: int | None, output: str) -> None:
    """Log records of a task run (or a flow run), oldest first."""
    records = _lookup("run_logs", run_id, tail)
    if output == "json":
        return _json(records)
    for r in records:
        click.echo(f"{_when(r['timestamp'])} | {r['level']:<7} | {r['message']}")


@runs.command("prune")
@click.option("--older-than", required=True, help="Delete runs older than this (7d, 12h, 30m).")
def runs_prune(older_than: str) -> None:
    """Delete task runs, flow runs and their logs older than a given age.

    Example: daskflow runs prune --older-than 7d
    """
    try:
        store = _store()
    except LookupError as exc:
        click.echo(str(exc.args[0]), err=True)
        return
    tasks, flows = store.prune(parse_age(older_than))
    click.echo(f"pruned {tasks} task run(s) and {flows} flow run(s)")


@click.group("flow-runs")
def flow_runs() -> None:
    """Flow runs: list them, show one with its task runs' states."""


@flow_runs.command("ls")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many flow runs.")
@_output
def flow_runs_ls(limit: int, output: str) -> None:
    """List flow runs, newest first."""
    rows = _listing("flow_run_rows", limit)
    if output == "json":
        return _json(rows)
    from rich.table import Table

    table = Table(title=f"flow runs ({len(rows)})")
    for col in ("id", "name", "state", "start", "duration", "task runs"):
        table.add_column(col, no_wrap=col == "id")
    for r in rows:
        table.add_row(r["id"][:13], r.get("name", "?"), _state(r), _when(r.get("start"), True),
                      _dur(r.get("start"), r.get("end")), _counts(r["counts"]))
    _console().print(table)


@flow_runs.command("show")
@click.argument("flow_run_id")
@_output
def flow_runs_show(flow_run_id: str, output: str) -> None:
    """One flow run: parameters, counts of its task runs per state, failures (root causes first), slowest task runs."""
    rec = _lookup("flow_run_detail", flow_run_id)
    if output == "json":
        return _json(rec)
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{rec.get('name')}[/]  {rec['id']}  {_state(rec)}  {_dur(rec.get('start'), rec.get('end'))}")
    for k, v in (rec.get("parameters") or {}).items():
        console.print(f"  {k} = {v}")
    console.print("  task runs: " + _counts(rec["counts"]))
    for r in rec.get("retries") or ():
        console.print(f"  retried {_when(r.get('at'))} (attempt {r.get('attempt')}, was {r.get('previous_state')}): "
                      f"{r.get('state', 'running')}, {r.get('reused', 0)} runs reused")
    if rec.get("failures"):
        table = Table(title="failures, root causes first")
        for col in ("id", "name", "state", "message"):
            table.add_column(col)
        for r in rec["failures"]:
            table.add_row(r["id"][:13], r["name"], _state(r), r.get("message") or "")
        console.print(table)
    if rec["slowest"]:
        table = Table(title="slowest task runs")
        for col in ("id", "name", "state", "duration"):
            table.add_column(col)
        for r in rec["slowest"]:
            table.add_row(r["id"][:13], r["name"], _state(r), _dur(0, r["duration"]))
        console.print(table)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none"


@flow_runs.command("metrics")
@click.argument("flow_run_id")
@_output
def flow_runs_metrics(flow_run_id: str, output: str) -> None:
    """Per task of a flow run: runs per outcome and p50/p95/max/total durations (find the bottleneck)."""
    rows = _lookup("task_metrics", flow_run_id)
    if output == "json":
        return _json(rows)
    from rich.table import Table

    table = Table(title="task metrics (slowest total first)")
    for col in ("task", "runs", "completed", "cached", "failed", "retried", "p50", "p95", "max", "total",
                "cpu p50", "cpu p95", "cpu max", "mem p50", "mem p95", "mem max"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for m in rows:
        table.add_row(m["task"], *(str(m[k]) for k in ("runs", "completed", "cached", "failed", "retried")),
                      *(_dur(0, m[k]) for k in ("p50", "p95", "max", "total")),
                      *(_dur(0, m.get(k)) if m.get(k) is not None else "-" for k in ("cpu_p50", "cpu_p95", "cpu_max")),
                      *(_size(m.get(k)) for k in ("mem_p50", "mem_p95", "mem_max")))
    _console().print(table)


@flow_runs.command("logs")
@click.argument("flow_run_id")
@click.option("--tail", default=500, show_default=True, type=click.IntRange(min=1), help="Only the last N records.")
@_output
def flow_runs_logs(flow_run_id: str, tail: int, output: str) -> None:
    """Log records of a flow run and of its task runs, oldest first."""
    records = _lookup("flow_logs", flow_run_id, tail)
    if output == "json":
        return _json(records)
    for r in records:
        click.echo(f"{_when(r['timestamp'])} | {r['level']:<7} | {r['run'] or 'flow run'} - {r['message']}")


@flow_runs.command("retry")
@click.argument("flow_run_id")
@click.option("--entrypoint", help="The flow to run, path/to/file.py:flow_fn or module:flow_fn "
              "(default: the one the flow run recorded).")
def flow_runs_retry(flow_run_id: str, entrypoint: str | None) -> None:
    """Run a failed, crashed or interrupted flow run again with its parameters, reusing what completed.

    Task runs that completed in it come back from their kept values (state Cached) without
    executing; the others run, with whatever depends on them. Exit 1 if the retry does not complete.
    """
    from daskflow.engine.api.retry import load_entrypoint, source_of
    from daskflow.exceptions import CannotRetry

    try:
        if entrypoint is None:
            source = source_of(flow_run_id)
            if source is None:
                raise CannotRetry(f"flow run {flow_run_id!r}: no record of its entrypoint and parameters here "
                                  "(unknown, expired after daskflow.results.keep, or recorded on another host "
                                  "without a result storage)")
            if source.entrypoint is None:
                raise CannotRetry(f"flow run {flow_run_id!r} recorded no entrypoint ({source.reason}); "
                                  "pass --entrypoint path/to/file.py:flow_fn")
            entrypoint = source.entrypoint
        flow = load_entrypoint(entrypoint)
        state = flow.retry(flow_run_id, return_state=True)
    except CannotRetry as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"flow run {flow_run_id}: {state.name}" + (f" ({state.message})" if state.message else ""))
    if not state.is_completed():
        sys.exit(1)


@flow_runs.command("cancel")
@click.argument("flow_run_id")
@click.option("--wait", "wait_seconds", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for the flow run to end Cancelled (0: only ask).")
@_output
def flow_runs_cancel(flow_run_id: str, wait_seconds: float, output: str) -> None:
    """Cancel a running flow run of this host (its process receives the request within ~0.5 s).

    Runs not started end Cancelled, the flow's body is interrupted, its on_cancellation
    hooks fire. An unknown, finished or foreign flow run is an error (exit 1); nothing changes.
    """
    rec = cancel_flow_run(flow_run_id, wait_seconds)
    if output == "json":
        return _json(rec)
    if rec.get("state_type") == "CANCELLED":
        click.echo(f"flow run {rec.get('name')} ({rec['id']}) cancelled: {rec.get('message', '')}")
    elif rec.get("state_type") in ("COMPLETED", "FAILED", "CRASHED"):
        raise click.ClickException(f"flow run {rec['id']} ended {rec.get('state')} before the cancel reached it")
    elif wait_seconds:
        raise click.ClickException(f"cancel requested; flow run {rec['id']} is still {rec.get('state')} after "
                                   f"{wait_seconds:g} s (its body may be blocked in a call that cannot be interrupted)")
    else:
        click.echo(f"cancel requested for flow run {rec.get('name')} ({rec['id']})")


def cancel_flow_run(prefix: str, wait_seconds: float) -> dict:
    """Check, request, and wait up to ``wait_seconds`` for the end: the flow run's record."""
    from daskflow import config
    from daskflow.store import cancels

    try:
        return cancels.cancel_flow_run(_store_or_fail(), config.home_path(), prefix, "daskflow flow-runs cancel",
                                       wait_seconds)
    except cancels.CancelRefused as exc:
        raise click.ClickException(str(exc)) from None


def _store_or_fail():
    try:
        return _store()
    except LookupError as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None


@runs.command("cancel")
@click.argument("run_id")
def runs_cancel(run_id: str) -> None:
    """Cancel a background run (``.delay()``) that no task worker has taken yet, through the server.

    A run a task worker has taken is left to finish (exit 1, saying so); a task run of a
    flow is cancelled with its flow run (``daskflow flow-runs cancel``).
    """
    from daskflow import config

    row = _lookup("run_detail", run_id)
    label = f"run {row.get('name')} ({row['id']})"
    if row.get("state_type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        raise click.ClickException(f"{label} is already {row.get('state')}: nothing to cancel")
    address = config.get("scheduler-address")
    if not address:
        raise click.ClickException("cancelling a background run asks the daskflow server: set "
                                   "DASKFLOW_SCHEDULER_ADDRESS (see `daskflow server start`)")
    from daskflow.background.futures import BackgroundFuture
    from daskflow.exceptions import UnknownRun

    fut = BackgroundFuture(row["id"], address)
    try:
        known = fut.known_to_server()
    except UnknownRun:
        known = False
    if not known:
        flow = row.get("flow_run_id")
        hint = f": cancel its flow run with `daskflow flow-runs cancel {flow}`" if flow else ""
        raise click.ClickException(f"{label} is not a background run of the server at {address}{hint}")
    if fut.cancel():
        click.echo(f"{label} cancelled")
        return
    state = fut.state
    raise click.ClickException(f"{label} was not cancelled: it is {state.name}"
                               + (" (a task worker has taken it; it is left to finish)" if not state.is_final() else ""))


COMMANDS: list[click.Command] = [runs, flow_runs]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(runs())
