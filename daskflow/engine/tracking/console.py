"""The run console: what the process that submits runs prints about them, as Prefect users know it.

The tracker's writer thread hands every batch here (``echo``) after storing it, so
nothing is printed from a hot path. Lines go to the ``daskflow.runs`` logger:

- a run's log records, labelled by run *name*: ``Task run 'load-3' - loading item 3``,
  ``Flow run 'etl' - starting``;
- a run that ends badly: ``Task run 'load-3' - Finished in state Failed('ValueError: ...')``;
- a flow run that fails: ``Flow run 'etl' - Finished in state Failed('...')``;
- each retry: ``Task run 'load-3' - Finished in state AwaitingRetry('ValueError: ...'),
  will run again``;
- a big map does not print a line per element: past ``DETAILED`` bad runs of a task
  in one batch (and past ``DETAILED_PER_TASK`` in this process), the rest become one
  summary line that says how to list them.

Names come from the batch's own records (``Submitted`` chunks, ``Finished`` envelopes,
``FlowChange``), remembered while the chunk or flow run is in flight: log records
shipped while a chunk runs arrive in later batches than the chunk's submission. A name
is forgotten one batch after its chunk or flow run ended (log records of the last
moments may trail the end by a batch), so these maps hold what is in flight, whatever
the process ran before.
"""

from __future__ import annotations

import collections
import logging
import uuid
from typing import Any, Callable, NamedTuple

from daskflow.codes import CANCELLED, CODE_STATES, OK_CODES
from daskflow.engine.core.states import describe_error
from daskflow.engine.tracking.records import DirectCall, Ended, Finished, FlowChange, Record, Submitted
from daskflow.ids import run_id

__all__ = ["echo"]

DETAILED = 3  # bad runs of one task per batch printed in full
DETAILED_PER_TASK = 20  # ... and at most this many per task in this process
_REMEMBER = 1_000_000  # a backstop only: names are forgotten when their runs end
_FLOW_OWNER = b"\xff" * 8


class RunLabel(NamedTuple):
    """How the runs of one chunk are called: its task's name, and names given by ``task_run_name``."""

    task: str
    names: dict[int, str]

    def name(self, start: int, i: int) -> str:
        return self.names.get(i) or f"{self.task}-{start + i}"


_labels: collections.OrderedDict[tuple[int, int], RunLabel] = collections.OrderedDict()
_flows: collections.OrderedDict[str, str] = collections.OrderedDict()
_detailed: collections.Counter[str] = collections.Counter()
_ending: list[tuple[collections.OrderedDict, Any]] = []  # names of what ended in the previous batch


def _remember(store: collections.OrderedDict, key: Any, value: Any) -> None:
    store[key] = value
    if len(store) > _REMEMBER:
        store.popitem(last=False)


def _observe(records: list[Record], failed_flows: list[FlowChange]) -> list[tuple[RunLabel, int, Any]]:
    """Learn run and flow names from a batch; the envelopes in it (label, start, result), its failed flows."""
    envelopes = []
    for store, key in _ending:
        store.pop(key, None)
    _ending.clear()
    for record in records:
        if isinstance(record, Submitted):
            for c in record.chunks:
                _remember(_labels, (c.base, c.start), RunLabel(c.task.name, {}))
        elif isinstance(record, (Finished, DirectCall)):
            res = record.result
            label = RunLabel(res.task_name, dict(res.names))
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
                if record.fields.get("state_type") in ("FAILED", "CRASHED"):
                    failed_flows.append(record)
    return envelopes


def _label(owner: bytes, index: int) -> str:
    if owner[16:] == _FLOW_OWNER:
        fid = str(uuid.UUID(bytes=owner[:16]))
        name = _flows.get(fid)
        return f"Flow run {name!r}" if name else f"Flow run {fid[:8]}"
    base, start = int.from_bytes(owner[:16], "big"), int.from_bytes(owner[16:], "big")
    label = _labels.get((base, start))
    return f"Task run {label.name(start, index)!r}" if label else f"Task run {run_id(base, start + index)[:8]}"


def _outcome_lines(envelopes: list[tuple[RunLabel, int, Any]]) -> list[tuple[int, str]]:
    """``(level, line)`` for the retries and bad final states of a batch's envelopes."""
    lines: list[tuple[int, str]] = []
    skipped: collections.Counter[tuple[str, str]] = collections.Counter()
    shown: collections.Counter[str] = collections.Counter()
    for label, start, res in envelopes:
        for i, events in sorted(res.history.items()):
            for event in events:
                if event[1] == "AwaitingRetry":
                    lines.append((logging.WARNING, f"Task run {label.name(start, i)!r} - Finished in state "
                                                   f"AwaitingRetry({event[3] or ''!r}), will run again"))
        if res.n_failed == 0 and all(code in OK_CODES for code in res.codes):
            continue
        for i, code in enumerate(res.codes):
            if code in OK_CODES or code == CANCELLED:  # cancelled on purpose (Ctrl-C, cancel()): not news
                continue
            state = CODE_STATES[code].name
            if shown[label.task] < DETAILED and _detailed[label.task] < DETAILED_PER_TASK:
                shown[label.task] += 1
                _detailed[label.task] += 1
                why = res.messages.get(i) or describe_error(res.errors.get(i))
                lines.append((logging.ERROR, f"Task run {label.name(start, i)!r} - Finished in state {state}({why!r})"))
            else:
                skipped[(label.task, state)] += 1
    for (task, state), n in skipped.items():
        lines.append((logging.ERROR, f"Task {task!r} - {n} more task runs finished in state {state} "
                                     f"(daskflow runs ls --task {task} --state {state})"))
    return lines


def echo(records: list[Record], logs: list[list], console: Callable[[], logging.Logger]) -> None:
    """Print a stored batch: its runs' log records, retries and bad outcomes, by run name.

    ``console`` gives the logger, called only when there is something to print (it may
    install a handler).
    """
    failed_flows: list[FlowChange] = []
    lines = _outcome_lines(_observe(records, failed_flows))
    for flow in failed_flows:
        name = _flows.get(flow.flow_run_id) or flow.flow_run_id[:8]
        lines.append((logging.ERROR, f"Flow run {name!r} - Finished in state {flow.fields['state']}"
                                     f"({flow.fields.get('message') or ''!r})"))
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
