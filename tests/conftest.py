"""Shared fixtures: one LocalCluster per test session, a private DASKFLOW_HOME per test."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import dask.config
import pytest

# Nothing a test starts may write the user's real ~/.daskflow: session-scoped clusters and
# servers start before the per-test home below is set, so they get this session home.
_SESSION_HOME = tempfile.mkdtemp(prefix="daskflow-tests-")
os.environ["DASKFLOW_HOME"] = _SESSION_HOME
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def daskflow_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    yield home
    tracker = sys.modules.get("daskflow.engine.tracking.tracker")
    if tracker is not None:  # run records of this test land in its own home, now
        tracker.flush()


@pytest.fixture(scope="session")
def cluster():
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0")
    yield lc
    from daskflow.runners.clients import close_shared_clients

    close_shared_clients()
    lc.close()


@pytest.fixture
def dask_runner(cluster):
    from daskflow.runners.dask import DaskTaskRunner

    return DaskTaskRunner(address=cluster.scheduler_address)


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """Make the session cluster the default for flows and bare submissions."""
    from daskflow.runners import set_default_runner

    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", cluster.scheduler_address)
    set_default_runner(None)
    yield cluster
    set_default_runner(None)


@pytest.fixture(params=["threads", "dask"])
def runner(request, cluster):
    """Each runner kind, to parametrize behaviour tests over."""
    from daskflow.runners import ThreadPoolTaskRunner
    from daskflow.runners.dask import DaskTaskRunner

    if request.param == "threads":
        return ThreadPoolTaskRunner(max_workers=4)
    return DaskTaskRunner(address=cluster.scheduler_address)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def remote_cluster(tmp_path_factory):
    """A real `dask scheduler` and two `dask worker` subprocesses on 127.0.0.1."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.path.dirname(__file__)]),
               DASKFLOW_HOME=_SESSION_HOME)
    log = tmp_path_factory.mktemp("remote") / "cluster.log"
    out = open(log, "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0", "--no-dashboard"],
                              stdout=out, stderr=out, env=env)]
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                       "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                                      stdout=out, stderr=out, env=env))
    try:
        client = Client(address, timeout="30s", set_as_default=False)
        client.wait_for_workers(2, timeout=60)
        client.close()
        yield address
    finally:
        from daskflow.runners.clients import close_shared_clients

        close_shared_clients()
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        out.close()


@pytest.fixture(autouse=True)
def _pickle_test_module_by_value(request):
    """Workers (remote ones included) need not import the test modules."""
    import cloudpickle

    module = request.module
    if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)
