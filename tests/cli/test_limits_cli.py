"""`daskflow limits set/ls/rm`: definitions in the home, usage errors, no distributed import."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def cli(*args, env=None):
    code = ("import sys; from daskflow.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('DISTRIBUTED', 'distributed' in sys.modules, file=sys.stderr); raise\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.getcwd(), **(env or {})))


def test_set_ls_rm_round_trip(daskflow_home, monkeypatch):
    monkeypatch.delenv("DASKFLOW_SCHEDULER_ADDRESS", raising=False)
    out = cli("limits", "set", "db", "5")
    assert out.returncode == 0 and "limit db: 5 slot(s)" in out.stdout, out.stderr
    assert "DISTRIBUTED False" in out.stderr  # no scheduler configured: nothing of distributed
    assert cli("limits", "set", "api", "10", "--per-second", "2").returncode == 0
    rows = json.loads(cli("limits", "ls", "-o", "json").stdout)
    assert rows == [{"name": "api", "limit": 10, "per_second": 2.0, "in_use": None},
                    {"name": "db", "limit": 5, "per_second": None, "in_use": None}]
    assert (daskflow_home / "limits.json").stat().st_mode & 0o777 == 0o600
    assert cli("limits", "set", "db", "0").returncode == 0  # 0 is allowed: it blocks (documented)
    assert cli("limits", "rm", "api").returncode == 0
    assert [r["name"] for r in json.loads(cli("limits", "ls", "-o", "json").stdout)] == ["db"]


def test_usage_errors_change_nothing(daskflow_home):
    assert cli("limits", "set", "db", "2").returncode == 0
    before = (daskflow_home / "limits.json").read_text()
    for args, words in ((("limits", "set", "db", "-1"), "-1 is not in the range"),
                        (("limits", "set", "a/b", "1"), "limit name"),
                        (("limits", "set", "db", "two"), "not a valid integer"),
                        (("limits", "set", "api", "1", "--per-second", "0"), "per-second"),
                        (("limits", "rm", "nope"), "no limit named 'nope'")):
        out = cli(*args)
        assert out.returncode == 2 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert (daskflow_home / "limits.json").read_text() == before


def test_set_tells_the_configured_scheduler(cluster, daskflow_home):
    env = {"DASKFLOW_SCHEDULER_ADDRESS": cluster.scheduler_address}
    out = cli("limits", "set", "told", "4", env=env)
    assert out.returncode == 0 and "on the scheduler" in out.stdout, out.stderr
    rows = json.loads(cli("limits", "ls", "-o", "json", env=env).stdout)
    assert {"name": "told", "limit": 4, "per_second": None, "in_use": 0} in rows
    from daskflow.runners.clients import shared_client
    from daskflow.runners.slots import DaskSlots

    assert DaskSlots(shared_client(cluster.scheduler_address)).status()["told"]["limit"] == 4
    assert cli("limits", "rm", "told", env=env).returncode == 0
    assert "told" not in DaskSlots(shared_client(cluster.scheduler_address)).status()
