import datetime
import json
import os
import subprocess
import sys

from click.testing import CliRunner

from daskflow import task
from daskflow.cache import INPUTS
from daskflow.cli import main


def _fill():
    @task(name="keep", cache_policy=INPUTS)
    def keep(x):
        return x

    @task(name="gone", cache_policy=INPUTS, cache_expiration=datetime.timedelta(seconds=-1))
    def gone(x):
        return x

    for i in range(3):
        keep(i)
    gone(1)


def _json(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_cache_ls_and_stats_json():
    _fill()
    rows = _json(["cache", "ls", "-o", "json"])
    assert len(rows) == 4
    assert {r["task_key"].rsplit("-", 1)[0] for r in rows} == {"keep", "gone"}
    assert all(r["key"].startswith("v1/") and r["bytes"] > 0 for r in rows)
    assert len(_json(["cache", "ls", "--task", "keep", "-o", "json"])) == 3
    stats = _json(["cache", "stats", "-o", "json"])
    assert stats["entries"] == 4 and stats["expired"] == 1 and len(stats["tasks"]) == 2
    table = CliRunner().invoke(main, ["cache", "ls"])
    assert table.exit_code == 0 and "keep-" in table.output


def test_cli_cache_clear_by_task_and_all():
    _fill()
    assert _json(["cache", "clear", "--task", "gone", "--yes", "-o", "json"]) == {"removed": 1}
    assert len(_json(["cache", "ls", "-o", "json"])) == 3
    assert _json(["cache", "clear", "-y", "-o", "json"]) == {"removed": 3}
    assert _json(["cache", "ls", "-o", "json"]) == []


def test_cli_cache_prune_drops_expired():
    _fill()
    out = _json(["cache", "prune", "-o", "json"])
    assert out["removed"] == 1 and out["bytes_after"] <= out["bytes_before"]
    rows = _json(["cache", "ls", "-o", "json"])
    assert len(rows) == 3 and not any(r["expired"] for r in rows)


def test_cli_cache_commands_do_not_import_distributed(daskflow_home):
    _fill()
    code = ("import sys; from daskflow.cli import main\n"
            "for args in (['cache','ls','-o','json'], ['cache','stats','-o','json'], ['cache','prune']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
            "print('DISTRIBUTED', 'distributed' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), DASKFLOW_HOME=str(daskflow_home))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "DISTRIBUTED False" in out
    assert '"entries": 4' in out
