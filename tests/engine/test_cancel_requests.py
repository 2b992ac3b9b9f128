"""Cancel requests seen by the flow's own process (the watcher), in process: subflows go with
their parent, `except Exception` in the body does not swallow the cancel, the call raises
CancelledRun, hooks fire once. (From another process: tests/cli/test_cancel_cli.py.)"""

from __future__ import annotations

import threading

import pytest

from daskflow import config, flow
from daskflow.exceptions import CancelledRun
from daskflow.runtime import flow_run
from daskflow.store import cancels


def run_in_thread(fn):
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, box


def test_cancel_reaches_a_subflow_and_a_body_that_catches_exception():
    started, ids, hooks = threading.Event(), {}, []

    @flow(on_cancellation=[lambda fl, run, state: hooks.append(("child", state.name))])
    def child():
        ids["child"] = flow_run.id
        started.set()
        while True:
            try:
                sum(range(100))
            except Exception:  # a body that swallows errors does not swallow the cancel
                pass

    @flow(on_cancellation=[lambda fl, run, state: hooks.append(("parent", state.name))])
    def parent():
        ids["parent"] = flow_run.id
        return child()

    t, box = run_in_thread(lambda: parent(return_state=True))
    assert started.wait(30)
    cancels.request(config.home(), ids["parent"], "a test")
    t.join(30)
    assert not t.is_alive()
    state = box["value"]
    assert state.name == "Cancelled" and "a test" in state.message
    assert sorted(hooks) == [("child", "Cancelled"), ("parent", "Cancelled")]
    with pytest.raises(CancelledRun):
        state.result()
    assert cancels.pending(config.home_path()) == set()  # the request is removed once handled


def test_the_call_raises_cancelled_run_and_other_flows_go_on():
    started = threading.Event()
    ids = {}

    @flow
    def busy(tag):
        ids[tag] = flow_run.id
        started.set()
        while tag == "busy":
            sum(range(100))
        return tag

    t, box = run_in_thread(lambda: busy("busy"))
    assert started.wait(30)
    cancels.request(config.home(), ids["busy"], "a test")
    t.join(30)
    assert isinstance(box.get("error"), CancelledRun), box
    assert busy("other") == "other"  # a later flow of the same process is not touched
