"""The UI's Cancel button: a real flow subprocess, `daskflow ui`, headless chromium clicking.

Also the guards of the one mutating endpoint: the token `daskflow ui` prints (also on
loopback) and the CSRF check; a refused request changes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from ui_procs import env_for, get, get_json, start_ui, stop_ui

from test_browser import CHROMIUM

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")

FLOW = textwrap.dedent("""
    import threading
    from daskflow import flow, task
    from daskflow.runners import ThreadPoolTaskRunner
    from daskflow.runtime import flow_run

    hooks = []

    @task
    def nap(i):
        threading.Event().wait(1.0)  # 200 s in all if not cancelled
        return i

    @flow(name="long-etl", task_runner=ThreadPoolTaskRunner(max_workers=1),
          on_cancellation=[lambda fl, run, state: hooks.append(state.name)])
    def long_etl():
        futs = nap.map(range(200), chunksize=1)
        futs[0].result()
        print("started", flow_run.id, flush=True)
        futs.result()

    state = long_etl(return_state=True)
    print("final", state.name, hooks, flush=True)
""")


@pytest.fixture
def running_flow(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    script = tmp_path / "long_etl.py"
    script.write_text(FLOW)
    proc = subprocess.Popen([sys.executable, str(script)], env=env_for(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line[:1] == ["started"], proc.stderr.read()
    ui = start_ui(home)
    get_json(ui.base + f"/api/flow-runs/{line[1]}")  # recorded (the writer flushes within ~0.1 s)
    yield proc, line[1], ui
    stop_ui(ui)
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_cancel_button_cancels_a_running_flow(running_flow, tmp_path):
    from cdp import Browser

    proc, fid, ui = running_flow
    token = ui.url.split("token=")[1]  # printed on loopback too: actions need it
    browser = Browser(CHROMIUM, tmp_path / "profile", f"{ui.base}/flow-runs/{fid}?token={token}")
    try:
        browser.wait_for("document.getElementById('cancel') !== null")
        assert "Running" in browser.evaluate("document.querySelector('h1').innerText")
        browser.evaluate("document.getElementById('cancel').click()")
        note = browser.wait_for("document.getElementById('action-note')?.innerText")
        assert note == "cancel: the flow run is Cancelled", note
        heading = browser.wait_for("document.querySelector('h1').innerText.includes('Cancelled') && "
                                   "document.querySelector('h1').innerText")
        assert "Cancel\n" not in heading and browser.evaluate("document.getElementById('cancel')") is None
    finally:
        browser.close()
    out, err = proc.communicate(timeout=60)
    assert "final Cancelled ['Cancelled']" in out, out + err
    counts = get_json(ui.base + f"/api/flow-runs/{fid}")["counts"]
    assert counts.get("Cancelled", 0) >= 100 and "Running" not in counts, counts


def test_cancel_needs_token_and_csrf_and_refuses_unknown(running_flow):
    proc, fid, ui = running_flow
    token = ui.url.split("token=")[1]
    url = f"{ui.base}/api/flow-runs/{fid}/cancel"
    assert get(url, method="POST")[0] == 403  # no token
    status, _, body = get(url, headers={"Authorization": f"token {token}"}, method="POST")
    assert status == 403 and b"_xsrf" in body  # token, no CSRF pair
    status, headers, _ = get(ui.base + f"/flow-runs/{fid}")
    xsrf = re.search(r"_xsrf=([^;]+)", headers["Set-Cookie"]).group(1)
    both = {"Authorization": f"token {token}", "Cookie": f"_xsrf={xsrf}", "X-XSRFToken": xsrf}
    status, _, body = get(url, headers=dict(both, Origin="http://evil.example"), method="POST")
    assert status == 403 and b"cross-origin" in body
    assert get(url, headers=dict(both, Authorization="token wrong"), method="POST")[0] == 403
    status, _, body = get(f"{ui.base}/api/flow-runs/0123abcd/cancel", headers=both, method="POST")
    assert status == 404 and json.loads(body)["error"].startswith("no flow run")
    assert get_json(ui.base + f"/api/flow-runs/{fid}")["state"] == "Running"  # nothing changed
    assert proc.poll() is None
    status, _, body = get(url, headers=both, method="POST")  # all given: cancelled
    assert status == 200 and json.loads(body)["state"] == "Cancelled", body
    status, _, body = get(url, headers=both, method="POST")
    assert status == 409 and b"already Cancelled" in body
