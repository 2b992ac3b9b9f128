"""`daskflow server start` and `daskflow worker` as real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from background_procs import env_for, start_server


def test_server_start_binds_loopback_and_stops_on_sigterm(tmp_path):
    proc, address = start_server(tmp_path / "home")
    assert address.startswith("tcp://127.0.0.1:")
    assert proc.stop(signal.SIGTERM) == 0
    assert proc.out[-1].startswith("daskflow server stopped")
    assert (tmp_path / "home" / "background" / "data.mdb").exists()


@pytest.mark.parametrize("target, message", [
    ("bg_tasks:NOT_A_TASK", "'NOT_A_TASK' is a int, not a daskflow task"),
    ("no_such_module:task", "cannot import module 'no_such_module'"),
    ("bg_tasks:missing", "has no attribute 'missing'"),
    ("bg_tasks", "expected 'module:task'"),
])
def test_worker_bad_target_is_a_clear_error_at_start(tmp_path, target, message):
    env = env_for(tmp_path / "home", "tcp://127.0.0.1:9")  # nothing listens there: must not matter
    res = subprocess.run([sys.executable, "-m", "daskflow", "worker", target], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr


def test_worker_without_server_address_is_a_usage_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "daskflow", "worker", "bg_tasks:add"], env=env_for(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "DASKFLOW_SCHEDULER_ADDRESS" in res.stderr and "daskflow server start" in res.stderr
