"""The run console: what the process that submits runs prints about them, in causal order, without floods.

The tracker's writer thread hands every batch here (``echo``) after storing it, so
nothing is printed from a hot path. Lines go to the ``daskflow.runs`` logger:

- a run's log records, labelled by run *name*: ``Task run 'load-3' - loading item 3``,
  ``Flow run 'etl' - starting``;
- the first run of each distinct error (``error_kind``: run ids and numbers blanked) of a
  task, as the root cause: ``Task run 'load-3' - Finished in state Failed('ValueError: ...')``;
  later runs with the same error are counted, not printed (at most ``DETAILED_PER_TASK``
  distinct errors of a task are printed in full per flow run);
- the first retry of each task (``... AwaitingRetry(...), will run again``); later retries
  are counted;
- a downstream run that did not run because an upstream failed (``NotReady``) is counted,
  never printed before its cause;
- when a flow run ends, one line per task and kind of outcome counted above, each with
  its count and the command that lists those runs, then the flow's own line if it failed.

Runs outside any flow have no end to wait for: their counts are printed at the end of
each batch. Names come from the batch's own records (``Submitted`` chunks, ``Finished``
envelopes, ``FlowChange``), remembered while the chunk or flow run is in flight: log
records shipped while a chunk runs arrive in later batches than the chunk's submission. A
name is forgotten one batch after its chunk or flow run ended (log records of the last
moments may trail the end by a batch), so these maps hold what is in flight, whatever the
process ran before. Which flow run a chunk belongs to is kept longer, until that flow run
ends: an envelope may be fetched well after its chunk's end message.

Lines reach the terminal through ``ConsoleHandler``, which writes to ``sys.stderr`` as it
is at that moment: while a progress bar is live, that is rich's proxy, which clears the
bar, prints the line, and draws the bar again below it.
"""

from __future__ import annotations

import collections
import logging
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from daskflow.codes import CANCELLED, CODE_STATES, NOT_READY, OK_CODES, all_ok
from daskflow.engine.core.states import describe_error, error_kind
from daskflow.engine.tracking.records import DirectCall, DirectCallDone, Ended, Finished, FlowChange, Record, Submitted
from daskflow.ids import run_id

__all__ = ["echo", "ConsoleHandler"]

DETAILED_PER_TASK = 5  # distinct errors of one task printed in full, per flow run
_REMEMBER = 1_000_000  # a backstop only: names are forgotten when their runs end
_FLOWS_KEPT = 1_000
_FLOW_OWNER = b"\xff" * 8


class RunLabel(NamedTuple):
    """How the runs of one chunk are called (its task's name, names given by ``task_run_name``), and its flow run."""

    task: str
    names: dict[int, str]
    flow_run_id: str | None = None

    def name(self, start: int, i: int) -> str:
        return self.names.get(i) or f"{self.task}-{start + i}"


class ErrorCount:
    """One distinct error of one task: how many runs ended with it, and the first one's text."""

    __slots__ = ("count", "printed", "example")

    def __init__(self, example: str) -> None:
        self.count, self.printed, self.example = 0, False, example


@dataclass
class Tally:
    """What one flow run's runs did that is counted rather than printed line by line."""

    errors: dict[tuple[str, str, str], ErrorCount] = field(default_factory=dict)  # (task, state, kind)
    detailed: collections.Counter[str] = field(default_factory=collections.Counter)  # task -> errors printed
    retried: collections.Counter[str] = field(default_factory=collections.Counter)  # task -> runs retried
    retries: collections.Counter[str] = field(default_factory=collections.Counter)  # task -> retries
    recovered: collections.Counter[str] = field(default_factory=collections.Counter)  # retried, then completed
    not_ready: collections.Counter[str] = field(default_factory=collections.Counter)


_labels: collections.OrderedDict[tuple[int, int], RunLabel] = collections.OrderedDict()
_flows: collections.OrderedDict[str, str] = collections.OrderedDict()
_tallies: collections.OrderedDict[str | None, Tally] = collections.OrderedDict()
_ending: list[tuple[collections.OrderedDict, Any]] = []  # names of what ended in the previous batch
# The flow run of each chunk in flight, kept past the chunk's end message (its envelope, which the
# console reads, may come later) until its flow run ends: counts are printed at that end.
_chunk_flows: collections.OrderedDict[tuple[int, int], str | None] = collections.OrderedDict()
_flow_chunks: dict[str, list[tuple[int, int]]] = {}


class ConsoleHandler(logging.StreamHandler):
    """A stream handler on ``sys.stderr`` as it is when a line is written (see the module docstring)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


def _remember(store: collections.OrderedDict, key: Any, value: Any, limit: int = _REMEMBER) -> None:
    store[key] = value
    if len(store) > limit:
        store.popitem(last=False)


def _tally(flow_run_id: str | None) -> Tally:
    tally = _tallies.get(flow_run_id)
    if tally is None:
        tally = Tally()
        _remember(_tallies, flow_run_id, tally, _FLOWS_KEPT)
    return tally


def _observe(records: list[Record], ended: list[FlowChange]) -> list[tuple[RunLabel, int, Any]]:
    """Learn run and flow names from a batch; its envelopes (label, start, result); the flows that ended."""
    envelopes = []
    for store, key in _ending:
        store.pop(key, None)
    _ending.clear()
    for record in records:
        if type(record) is DirectCallDone:  # a plain direct call: no name, nothing to print (the most common)
            continue
        if isinstance(record, Submitted):
            flow = record.flow_run_id
            for c in record.chunks:
                _remember(_labels, (c.base, c.start), RunLabel(c.task.name, {}, flow))
                _remember(_chunk_flows, (c.base, c.start), flow)
            if flow is not None:
                _flow_chunks.setdefault(flow, []).extend((c.base, c.start) for c in record.chunks)
        elif isinstance(record, (Finished, DirectCall)):
            res = record.result
            flow = record.flow_run_id if isinstance(record, DirectCall) else _chunk_flows.get((res.base, res.start))
            label = RunLabel(res.task_name, dict(res.names), flow)
            _remember(_labels, (res.base, res.start), label)
            _ending.append((_labels, (res.base, res.start)))
            envelopes.append((label, res.start, res))
        elif isinstance(record, Ended):
            _ending.append((_labels, (record.base, record.start)))
        elif isinstance(record, FlowChange):
            if record.fields.get("name"):
                _remember(_flows, record.flow_run_id, record.fields["name"])
            if "end" in record.fields:
                _ending.append((_flows, record.flow_run_id))
                for key in _flow_chunks.pop(record.flow_run_id, ()):
                    _chunk_flows.pop(key, None)
                ended.append(record)
    return envelopes


def _label(owner: bytes, index: int) -> str:
    if owner[16:] == _FLOW_OWNER:
        fid = str(uuid.UUID(bytes=owner[:16]))
        name = _flows.get(fid)
        return f"Flow run {name!r}" if name else f"Flow run {fid[:8]}"
    base, start = int.from_bytes(owner[:16], "big"), int.from_bytes(owner[16:], "big")
    label = _labels.get((base, start))
    return f"Task run {label.name(start, index)!r}" if label else f"Task run {run_id(base, start + index)[:8]}"


def _retry_lines(label: RunLabel, start: int, res: Any, tally: Tally) -> list[tuple[int, str]]:
    """Count the envelope's retries; the first of its task in this flow run is printed."""
    lines: list[tuple[int, str]] = []
    for i, events in sorted(res.history.items()):
        retries = [event for event in events if event[1] == "AwaitingRetry"]
        if not retries:
            continue
        task = label.task
        if not tally.retried[task]:
            lines.append((logging.WARNING, f"Task run {label.name(start, i)!r} - Finished in state "
                                           f"AwaitingRetry({retries[0][3] or ''!r}), will run again "
                                           f"(further retries of {task!r} are counted, not printed)"))
        tally.retried[task] += 1
        tally.retries[task] += len(retries)
        if res.codes[i] in OK_CODES:
            tally.recovered[task] += 1
    return lines


def _failure_lines(label: RunLabel, start: int, res: Any, tally: Tally) -> list[tuple[int, str]]:
    """Count the envelope's bad outcomes; the first run of each distinct error is printed."""
    lines: list[tuple[int, str]] = []
    task = label.task
    for i, code in enumerate(res.codes):
        if code in OK_CODES or code == CANCELLED:  # cancelled on purpose (Ctrl-C, cancel()): not news
            continue
        if code == NOT_READY:  # a consequence: its cause is printed, this is counted
            tally.not_ready[task] += 1
            continue
        state = CODE_STATES[code].name
        why = res.messages.get(i) or describe_error(res.errors.get(i))
        key = (task, state, error_kind(why))
        seen = tally.errors.get(key)
        if seen is None:
            seen = tally.errors[key] = ErrorCount(why)
            if tally.detailed[task] < DETAILED_PER_TASK:
                tally.detailed[task] += 1
                seen.printed = True
                lines.append((logging.ERROR, f"Task run {label.name(start, i)!r} - Finished in state {state}({why!r})"))
        seen.count += 1
    return lines


def _summary_lines(tally: Tally) -> list[tuple[int, str]]:
    """One line per task and kind of counted outcome: retries, each distinct error, NotReady."""
    lines: list[tuple[int, str]] = []
    for task, n in tally.retried.items():
        failed = n - tally.recovered[task]
        lines.append((logging.WARNING if failed else logging.INFO,
                      f"Task {task!r} - {n} task runs retried ({tally.retries[task]} retries): "
                      f"{tally.recovered[task]} then completed, {failed} did not"))
    others: collections.Counter[tuple[str, str]] = collections.Counter()
    kinds: collections.Counter[tuple[str, str]] = collections.Counter()
    for (task, state, _kind), seen in tally.errors.items():
        if seen.printed and seen.count == 1:
            continue
        if not seen.printed:
            others[(task, state)] += seen.count
            kinds[(task, state)] += 1
            continue
        lines.append((logging.ERROR, f"Task {task!r} - {seen.count} task runs finished in state {state} with "
                                     f"{seen.example.split(':')[0]} as shown above (daskflow runs ls --task {task} "
                                     f"--state {state})"))
    for (task, state), n in others.items():
        lines.append((logging.ERROR, f"Task {task!r} - {n} task runs finished in state {state} with "
                                     f"{kinds[(task, state)]} other errors (daskflow runs ls --task {task} "
                                     f"--state {state})"))
    for task, n in tally.not_ready.items():
        lines.append((logging.WARNING, f"Task {task!r} - {n} task runs finished in state NotReady: an upstream "
                                       f"run failed (daskflow runs ls --task {task} --state NotReady)"))
    return lines


def _outcome_lines(envelopes: list[tuple[RunLabel, int, Any]], ended: list[FlowChange]) -> list[tuple[int, str]]:
    """``(level, line)`` for a batch: first retries and root causes, then the counts of flows that ended."""
    lines: list[tuple[int, str]] = []
    for label, start, res in envelopes:
        if res.history:
            lines.extend(_retry_lines(label, start, res, _tally(label.flow_run_id)))
        if res.n_failed or not all_ok(res.codes):
            lines.extend(_failure_lines(label, start, res, _tally(label.flow_run_id)))
    if None in _tallies:  # runs outside any flow: counted per batch
        lines.extend(_summary_lines(_tallies.pop(None)))
    for flow in ended:
        tally = _tallies.pop(flow.flow_run_id, None)
        if tally is not None:
            lines.extend(_summary_lines(tally))
        if flow.fields.get("state_type") in ("FAILED", "CRASHED"):
            name = _flows.get(flow.flow_run_id) or flow.flow_run_id[:8]
            lines.append((logging.ERROR, f"Flow run {name!r} - Finished in state {flow.fields['state']}"
                                         f"({flow.fields.get('message') or ''!r})"))
    return lines


def echo(records: list[Record], logs: list[list], console: Callable[[], logging.Logger]) -> None:
    """Print a stored batch: its runs' log records, then root causes and counts, by run name.

    ``console`` gives the logger, called only when there is something to print (it may
    install a handler).
    """
    ended: list[FlowChange] = []
    lines = _outcome_lines(_observe(records, ended), ended)
    if not lines and not logs:
        return
    logger = console()
    for owner, index, ts, level, message, _name in logs:  # what the runs said, then how they ended
        if logger.isEnabledFor(level):
            record = logger.makeRecord(logger.name, level, "", 0, "%s - %s", (_label(bytes(owner), index), message),
                                       None)
            record.created = ts
            logger.handle(record)
    for level, line in lines:
        if logger.isEnabledFor(level):
            logger.log(level, "%s", line)
