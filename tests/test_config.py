import dask.config
import pytest

from daskflow import config, flow, task
from daskflow.runners.dask import DaskTaskRunner


@task
def read_setting():
    from daskflow import config

    return config.get("map.chunk-seconds")


def test_defaults_and_aliases(monkeypatch, tmp_path):
    assert config.get("map.chunk-seconds") == 0.2
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    assert config.get("scheduler-address") == "tcp://127.0.0.1:1"
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "h"))
    home = config.home()
    assert home == tmp_path / "h" and (home.stat().st_mode & 0o777) == 0o700


def test_settings_reach_local_cluster_workers():
    with dask.config.set({"daskflow.map.chunk-seconds": 0.123}):
        @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1}))
        def f():
            return read_setting.submit().result()

        assert f() == 0.123


_READ_BOTH = """
import json, sys
from daskflow import config
keys = sys.argv[1:]
ours = {k: config.get(k, "<missing>") for k in keys}
assert "dask" not in sys.modules, "reading settings imported dask"
import dask.config
import pytest
config.register_defaults()
theirs = {k: dask.config.get("daskflow." + k, "<missing>") for k in keys}
print(json.dumps({"ours": ours, "theirs": theirs, "tree_equal": config.read_settings()["daskflow"] == dask.config.get("daskflow")}))
"""


def test_settings_read_without_dask_equal_dask_configs_answer(tmp_path):
    """Every source dask.config reads, in its order, with both spellings of keys: the reader
    the CLI uses (no dask import) gives dask.config's answer for each key."""
    import base64
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root, user_home, extra = tmp_path / "root", tmp_path / "user", tmp_path / "extra"
    (user_home / ".config" / "dask").mkdir(parents=True)
    root.mkdir()
    extra.mkdir()
    (root / "a.yaml").write_text("daskflow:\n  runs: {keep: 1d, prune_every: 2h}\n  map: {chunk_seconds: 0.5}\n"
                                 "  cache: {max-bytes: 1GiB}\n")
    (user_home / ".config" / "dask" / "z.yml").write_text("daskflow:\n  runs: {keep: 2d}\n  tracking: false\n")
    (extra / "b.yaml").write_text("daskflow:\n  cache: {max_bytes: 5GiB}\n  owners: {lease-seconds: 7}\n")
    (extra / "a.json").write_text(json.dumps({"daskflow": {"owners": {"lease_seconds": 3, "renew-seconds": 1}}}))
    (extra / "notes.txt").write_text("daskflow: {progress: false}\n")  # not a config file: ignored by both
    inherited = {"daskflow": {"progress": False, "map": {"max-chunksize": 77}}}
    root_of_repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root_of_repo, HOME=str(user_home), DASK_ROOT_CONFIG=str(root), DASK_CONFIG=str(extra),
               DASK_INTERNAL_INHERIT_CONFIG=base64.urlsafe_b64encode(json.dumps(inherited).encode()).decode(),
               DASK_DASKFLOW__MAP__MAX_CHUNKSIZE="123", DASK_DASKFLOW__RUNS__PRUNE_EVERY="3h",
               DASK_DASKFLOW__RESULTS__STORAGE_OPTIONS="{'endpoint_url': 'http://127.0.0.1:1'}",
               DASK_DASKFLOW__SUBMIT_BATCH__DELAY="None", DASK_DASKFLOW__DASK_INTERNALS="False")
    env.pop("DASKFLOW_HOME", None)
    keys = ["runs.keep", "runs.prune-every", "runs.prune_every", "map.chunk-seconds", "map.max-chunksize",
            "cache.max-bytes", "cache.max_bytes", "owners.lease-seconds", "owners.renew-seconds", "tracking",
            "progress", "results.storage-options", "submit-batch.delay", "dask-internals", "connect-timeout",
            "results.keep", "no.such.key", "runs.keep.deeper"]
    out = subprocess.run([sys.executable, "-c", _READ_BOTH, *keys], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    both = json.loads(out.stdout)
    assert both["ours"] == both["theirs"] and both["tree_equal"]
    ours = both["ours"]  # and the precedence is the one documented: env > DASK_CONFIG > ~/.config > root
    assert ours["runs.keep"] == "2d" and ours["runs.prune-every"] == "3h" and ours["map.max-chunksize"] == 123
    assert ours["cache.max-bytes"] == "5GiB" and ours["owners.lease-seconds"] == 7 and ours["progress"] is False
    assert ours["map.chunk-seconds"] == 0.5 and ours["connect-timeout"] == "10s" and ours["submit-batch.delay"] is None


@pytest.mark.parametrize("text", ["7d", "1h", "30s", "2ms", "1.5 hours", "90", 90, 2.5, "3 weeks", "300us", "1W", "0",
                                  "s", "hour", "10 Minutes", "5 foos", "x3s", "", "1e3ms"])
def test_parse_timedelta_reads_as_dask_utils_does(text):
    import dask.utils

    assert _outcome(config.parse_timedelta, text) == _outcome(dask.utils.parse_timedelta, text)


@pytest.mark.parametrize("text", ["10GiB", "5 kB", "1e6", 123, 2.7, "100M", "1kiB", "MB", "5 foos", "0", "1.5 tb",
                                  "12 b", "", "x", "2Pi"])
def test_parse_bytes_reads_as_dask_utils_does(text):
    import dask.utils

    assert _outcome(config.parse_bytes, text) == _outcome(dask.utils.parse_bytes, text)


def _outcome(parse, text):
    try:
        value = parse(text)
        return type(value), value
    except Exception as exc:
        return type(exc)


def test_defaults_survive_a_dask_config_set_that_added_the_namespace(monkeypatch):
    """Defaults registered late, inside a ``dask.config.set`` that created ``daskflow``, leave
    with it when it exits: settings still read daskflow's defaults."""
    monkeypatch.setitem(dask.config.config, "daskflow", None)
    monkeypatch.delitem(dask.config.config, "daskflow")
    with dask.config.set({"daskflow.runs.keep": "1d"}):
        assert config.get("runs.keep") == "1d"
    assert "daskflow" not in dask.config.config
    assert config.get("runs.keep") == "30d" and config.get("map.chunk-seconds") == 0.2
    assert config.get("no-such-setting", 5) == 5
