"""Fixtures of the UI tests: one store made by real flows, a `daskflow ui` on it, the CLI."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from ui_procs import ROOT, UiProcess, env_for, get_json, start_ui, stop_ui


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
