import dask.config

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
