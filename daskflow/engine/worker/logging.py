"""Run logs: ``get_run_logger()`` and ``log_prints``, collected per chunk, shipped in batches.

A run logger is a standard ``logging.LoggerAdapter`` bound to the current task run
(or flow run) when it is asked for. Its records do not go to the worker's console:
a handler appends them to the *sink* of the chunk being executed (one list per chunk,
set by ``open_sink``). About every 100 ms the sink's records leave as one batch (a
Dask structured event from a worker, a direct hand-off in-process) so logs show up
while a long chunk runs; the rest travel inside the chunk's envelope. The client's
tracker writes them to the run store and echoes them on its console.

``log_prints=True`` turns ``print()`` inside the run into INFO records: ``print`` is
wrapped once per process, and the wrapper checks a context variable, so threads and
runs without the option print as usual.
"""

from __future__ import annotations

import builtins
import io
import logging
import time
import uuid
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from daskflow.engine.core.context import flow_run_ctx, task_run_ctx
from daskflow.engine.tracking.events import LogsShipped
from daskflow.engine.worker.hosts import current_host
from daskflow.exceptions import MissingContextError

if TYPE_CHECKING:
    from daskflow.runners.base import Host

__all__ = ["adopt", "get_run_logger", "open_sink", "close_sink", "log_prints", "publish"]

FLUSH_SECONDS = 0.1
_FLOW_OWNER = b"\xff" * 8
_sink: ContextVar[_Sink | None] = ContextVar("daskflow_log_sink", default=None)
capturing_prints: ContextVar[bool] = ContextVar("daskflow_log_prints", default=False)


class _Sink:
    __slots__ = ("records", "last", "host")

    def __init__(self) -> None:
        self.records: list[list] = []
        self.last = time.monotonic()
        self.host: Host | None = None

    def add(self, record: list) -> None:
        self.records.append(record)
        now = time.monotonic()
        if now - self.last >= FLUSH_SECONDS:
            self.last = now
            self.ship()

    def ship(self) -> None:
        from daskflow.engine.worker import reports

        records, self.records = self.records, []
        if self.host is None:
            self.host = current_host()
        reports.report(LogsShipped(records), self.host)


class _RunHandler(logging.Handler):
    """Routes run log records to the current chunk's sink (or straight to the tracker)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            owner = getattr(record, "daskflow_owner", None)
            if owner is None:
                return
            row = [owner[0], owner[1], record.created, record.levelno, self.format(record), record.name]
            sink = getattr(record, "daskflow_sink", None)
            if sink is not None:
                sink.add(row)
            else:
                from daskflow.engine.tracking import tracker

                tracker.record_logs([row])
        except Exception:  # noqa: BLE001 - logging must never fail a run
            self.handleError(record)


def _logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    if not any(isinstance(h, _RunHandler) for h in log.handlers):
        handler = _RunHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False  # the client echoes records; workers stay quiet
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    return log


def get_run_logger() -> logging.LoggerAdapter:
    """A logger whose records are attached to the current task run or flow run.

    Records reach the run store (``daskflow runs logs ID``) and the console of the
    process that submitted the run, in batches.

    Raises:
        MissingContextError: outside a task run or flow run.

    Example:
        >>> @task
        ... def load(path):
        ...     get_run_logger().info("loading %s", path)  # doctest: +SKIP
    """
    ctx = task_run_ctx.get()
    if ctx is not None:
        from daskflow.store.runs import chunk_key

        flow = flow_run_ctx.get()
        extra = {"daskflow_owner": (chunk_key(ctx.base, ctx.start), ctx.index), "daskflow_sink": _sink.get(),
                 "run_id": ctx.task_run_id, "task_run_id": ctx.task_run_id,
                 "task_run_name": ctx.run_name,
                 "task_name": ctx.task.name, **_flow_fields(flow, ctx.flow_run_id)}
        return logging.LoggerAdapter(_logger("daskflow.task_runs"), extra)
    flow = flow_run_ctx.get()
    if flow is not None:
        extra = {"daskflow_owner": (uuid.UUID(flow.flow_run_id).bytes + _FLOW_OWNER, 0), "daskflow_sink": None,
                 "run_id": flow.flow_run_id, **_flow_fields(flow, flow.flow_run_id)}
        return logging.LoggerAdapter(_logger("daskflow.flow_runs"), extra)
    raise MissingContextError(
        "get_run_logger() was called outside of a task run or flow run; call it inside a @task or @flow "
        "function, or use logging.getLogger(...) elsewhere"
    )


def publish(message: str, logger_name: str, level: int) -> None:
    """Put one record in the current run's log stream, past ``logging``'s level filters.

    It travels as the run's log records do (its chunk's sink, batched; a flow's, or no
    run's, straight to the tracker) and the run store files it by ``logger_name``
    (artifacts use this). Outside any run its owner is all zeros.
    """
    ctx = task_run_ctx.get()
    sink = None
    if ctx is not None:
        from daskflow.store.runs import chunk_key

        owner, index, sink = chunk_key(ctx.base, ctx.start), ctx.index, _sink.get()
    else:
        flow = flow_run_ctx.get()
        owner = uuid.UUID(flow.flow_run_id).bytes + _FLOW_OWNER if flow is not None else bytes(24)
        index = 0
    row = [owner, index, time.time(), level, message, logger_name]
    if sink is not None:
        sink.add(row)
    else:
        from daskflow.engine.tracking import tracker

        tracker.record_logs([row])


def _flow_fields(flow: Any, flow_run_id: str | None) -> dict[str, Any]:
    """The flow fields of a run's log records, as Prefect's: names are known where the flow runs."""
    same = flow is not None and flow.flow_run_id == flow_run_id
    run = flow.flow_run if same else None
    return {"flow_run_id": flow_run_id, "flow_name": flow.flow.name if same else None,
            "flow_run_name": run.name if run is not None else None}


def open_sink() -> Token:
    """Start collecting the log records of a chunk's runs (called by the chunk function)."""
    return _sink.set(_Sink())


def adopt(records: list[list]) -> None:
    """Add log records made elsewhere (a run retried on another worker) to the open sink."""
    sink = _sink.get()
    if sink is not None and records:
        sink.records.extend(records)


def close_sink(token: Token) -> list[list] | None:
    """Stop collecting; returns the records not shipped yet (they travel in the envelope)."""
    sink = _sink.get()
    _sink.reset(token)
    return sink.records or None if sink is not None else None


# -- log_prints --------------------------------------------------------------------------------

_original_print = builtins.print


def _print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
    import sys

    if not capturing_prints.get() or file not in (None, sys.stdout):
        return _original_print(*args, sep=sep, end=end, file=file, flush=flush)
    try:
        logger = get_run_logger()
    except MissingContextError:
        return _original_print(*args, sep=sep, end=end, file=file, flush=flush)
    buf = io.StringIO()
    _original_print(*args, sep=sep, end="", file=buf)
    logger.info(buf.getvalue())


def log_prints(on: bool) -> Token:
    """Turn ``print()`` into log records in this context (until the token is reset)."""
    if on and builtins.print is not _print:
        builtins.print = _print
    return capturing_prints.set(on)
