"""Helpers of the UI tests: `daskflow ui` subprocesses and HTTP requests to them."""

from __future__ import annotations

import json
import os
import pathlib
import selectors
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[2]


def env_for(home: pathlib.Path) -> dict[str, str]:
    return dict(os.environ, DASKFLOW_HOME=str(home), PYTHONPATH=str(ROOT))


class UiProcess(NamedTuple):
    proc: subprocess.Popen
    url: str  # as printed: http://127.0.0.1:PORT/ (with ?token=... when it has one)
    started_in: float  # seconds from the command to the printed URL

    @property
    def base(self) -> str:
        return self.url.split("?")[0].rstrip("/")


def start_ui(home: pathlib.Path, *args: str, timeout: float = 20.0) -> UiProcess:
    """Start `daskflow ui --port 0 ARGS` and wait for the line with its URL (a deadline, no sleeps)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "daskflow", "ui", "--port", "0", *args], env=env_for(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("daskflow UI at "):
                return UiProcess(proc, line.split()[3], time.monotonic() - t0)
    proc.kill()
    raise AssertionError(f"daskflow ui did not start: {proc.stderr.read()}")


def stop_ui(ui: UiProcess) -> None:
    ui.proc.terminate()
    ui.proc.wait(10)
    ui.proc.stdout.close()
    ui.proc.stderr.close()


def get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> object:
    status, _, body = get(url)
    assert status == 200, (url, status, body)
    return json.loads(body)
