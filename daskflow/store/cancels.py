"""Cancel requests: how ``daskflow flow-runs cancel`` (or the UI's Cancel button) reaches
the process that runs a flow.

Design. The canceller and the flow's process share one thing already: the daskflow home.
A request is a small file ``$DASKFLOW_HOME/cancel-requests/<flow run id>`` (0600, in a
0700 directory), written atomically by the canceller after it checked, in the run store,
that the flow run exists, is not final, and is owned by a live process of this host. The
flow's process polls that directory (one ``listdir`` per poll for all its flow runs, about
twice a second, only while it has flow runs in flight: ``engine.client.cancels``) and
removes the request when the flow run has ended. No server, no port, no import of
distributed in the canceller; a request for a run whose process died is never written
(that run is ended ``Crashed`` instead, as the store does for every dead owner).

Store layer: it knows the run store's records, nothing of the engine.
"""

from __future__ import annotations

import os
import pathlib
import socket
import time
from typing import TYPE_CHECKING

from daskflow.owners import Owner, is_alive

if TYPE_CHECKING:
    from daskflow.store.runs import RunStore

__all__ = ["CancelRefused", "DIRNAME", "cancel_flow_run", "check_cancellable", "clear", "pending", "request",
           "wait_final"]

DIRNAME = "cancel-requests"
_FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


class CancelRefused(LookupError):
    """A cancel that cannot be done (unknown, finished or foreign run); the message says why."""


def request_dir(home: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(home) / DIRNAME


def pending(home: str | os.PathLike) -> set[str]:
    """The flow run ids with a cancel request under ``home`` (one ``listdir``)."""
    try:
        return {name for name in os.listdir(request_dir(home)) if not name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def request(home: str | os.PathLike, flow_run_id: str, by: str) -> None:
    """Write the request for ``flow_run_id`` (atomically: the poller never sees half a file)."""
    folder = request_dir(home)
    folder.mkdir(mode=0o700, exist_ok=True)
    tmp = folder / f".{flow_run_id}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(by)
    os.replace(tmp, folder / flow_run_id)


def reason(home: str | os.PathLike, flow_run_id: str) -> str:
    """Who asked (the text the canceller wrote), for the Cancelled state's message."""
    try:
        return (request_dir(home) / flow_run_id).read_text()[:200] or "a cancel request"
    except OSError:
        return "a cancel request"


def clear(home: str | os.PathLike, flow_run_id: str) -> None:
    try:
        os.unlink(request_dir(home) / flow_run_id)
    except OSError:
        pass


def check_cancellable(store: RunStore, prefix: str) -> dict:
    """The record of the flow run ``prefix`` names, if a cancel request can reach it.

    Raises ``CancelRefused`` naming the reason: no such run (or an ambiguous prefix), a
    run already final, a run owned by a process of another host (its home is not this
    one's: cancel it there) or by a process that is gone (the store ends it Crashed).
    """
    try:
        rec = store.flow_record(prefix)
    except LookupError as exc:
        raise CancelRefused(str(exc.args[0])) from None
    label = f"flow run {rec.get('name') or ''} ({rec['id']})"
    if rec.get("state_type") in _FINAL:
        raise CancelRefused(f"{label} is already {rec.get('state')}: nothing to cancel")
    owner_rec = store.owner_record(rec.get("owner"))
    if owner_rec is None:
        raise CancelRefused(f"{label} has no owning process on record: nothing can receive a cancel request")
    owner = Owner(owner_rec["host"], owner_rec["pid"], owner_rec["started"])
    if owner.host != socket.gethostname():
        raise CancelRefused(f"{label} is run by a process on host {owner.host!r}, not this one: "
                            f"cancel it there")
    if not is_alive(owner, owner_rec.get("lease_until")):
        try:
            store.end_dead_owners()
        except Exception:  # noqa: BLE001 - a read-only store (the UI): the next writer ends it
            pass
        raise CancelRefused(f"{label} is not running: its process ({owner.describe()}) is gone; "
                            f"it is ended Crashed")
    return rec


def cancel_flow_run(store: RunStore, home: str | os.PathLike, prefix: str, by: str, wait_seconds: float) -> dict:
    """Check (``check_cancellable``), write the request, wait up to ``wait_seconds`` for the
    flow run to end: its record. The CLI and the UI both cancel through this."""
    rec = check_cancellable(store, prefix)
    request(home, rec["id"], f"{by}, {canceller()}")
    return wait_final(store, rec["id"], wait_seconds) if wait_seconds else rec


def wait_final(store: RunStore, flow_run_id: str, timeout: float) -> dict:
    """The flow run's record once final, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    poll = 0.05
    while True:
        rec = store.flow_record(flow_run_id)
        if rec.get("state_type") in _FINAL or time.monotonic() >= deadline:
            return rec
        time.sleep(poll)
        poll = min(poll * 1.5, 0.5)


def canceller() -> str:
    """What a request says about who made it."""
    return f"{socket.gethostname()} pid {os.getpid()}"
