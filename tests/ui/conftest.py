"""Fixtures of the UI tests: one store made by real flows, `daskflow ui` subprocesses, the CLI."""

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

import pytest

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


@pytest.fixture(scope="package")
def ui_home(tmp_path_factory) -> pathlib.Path:
    """A home whose run store was written by real flows (tests/ui/make_store.py)."""
    home = tmp_path_factory.mktemp("ui") / "home"
    home.mkdir(mode=0o700)
    subprocess.run([sys.executable, str(ROOT / "tests" / "ui" / "make_store.py")], env=env_for(home), check=True,
                   capture_output=True, timeout=60)
    return home


@pytest.fixture(scope="package")
def ui(ui_home) -> UiProcess:
    server = start_ui(ui_home)
    yield server
    stop_ui(server)


@pytest.fixture(scope="package")
def cli_json(ui_home):
    def run(*args: str) -> object:
        out = subprocess.run([sys.executable, "-m", "daskflow", *args, "-o", "json"], env=env_for(ui_home),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    return run


@pytest.fixture(scope="package")
def etl_id(ui) -> str:
    return next(f["id"] for f in get_json(ui.base + "/api/flow-runs") if f["name"] == "etl")
