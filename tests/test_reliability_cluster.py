"""Truth on a real cluster: workers that do not see the client's disk, killed workers, lost connections.

Every test here starts real processes (``dask scheduler`` / ``dask worker`` subprocesses on
127.0.0.1) and kills only those, by pid. Executions are counted in files of a directory
every worker can reach.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from daskflow import flow, task, transaction, unmapped
from daskflow.cache import INPUTS
from daskflow.runners.clients import close_shared_client
from daskflow.runners.dask import DaskTaskRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mark(counter: str, x) -> None:
    """One file per execution, named by element and the process that ran it; its mtime is the start."""
    with open(os.path.join(counter, f"{x}-{os.getpid()}-{uuid.uuid4().hex}"), "w"):
        pass


def _mid_run(counter: str, pid: int, seconds: float) -> bool:
    """Whether worker ``pid`` is in the middle of a run of ``seconds``: its newest run started
    between 20% and 70% of a run ago (not right after a run ended, when that run's checkpoint
    may still be on its way to the scheduler)."""
    starts = [e.stat().st_mtime for e in os.scandir(counter) if e.name.split("-")[1] == str(pid)]
    age = time.time() - max(starts, default=0.0)
    return 0.2 * seconds <= age <= 0.7 * seconds


def executed(counter: str) -> int:
    return len(os.listdir(counter))


def _can_unshare() -> str | None:
    """Why workers cannot get a private view of a directory here (None: they can)."""
    if not shutil.which("unshare"):
        return "no unshare(1) on this machine"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -m with a tmpfs mount is not permitted here (needs root): {probe.stderr.strip()}"
    return None


class Cluster:
    """A scheduler and workers started by a test, each a process it may kill by pid."""

    def __init__(self, log_dir, env: dict) -> None:
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = dict(os.environ, PYTHONPATH=ROOT, **env)
        self.log = open(os.path.join(log_dir, f"cluster-{self.port}.log"), "ab")
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                      "127.0.0.1", "--port", str(self.port), "--no-dashboard"])

    def start_worker(self, nthreads: int = 1, mount: str | None = None, no_nanny: bool = False) -> subprocess.Popen:
        """A worker; ``mount`` is a shell command run first in its own mount namespace."""
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", str(nthreads),
               "--host", "127.0.0.1", "--no-dashboard"]
        if no_nanny:
            cmd.append("--no-nanny")
        if mount is not None:
            quoted = " ".join(f"'{c}'" for c in cmd)
            cmd = ["unshare", "-m", "sh", "-c", f"{mount} && exec {quoted}"]
        proc = self._spawn(cmd)
        self.workers.append(proc)
        return proc

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=self.env)

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        # The workers first, while their scheduler still answers them: a worker stopping
        # beside a scheduler that is stopping too waits out its connection attempts (10 s).
        close_shared_client(self.address)
        self._stop(self.workers)
        self._stop([self.scheduler])
        self.log.close()

    @staticmethod
    def _stop(procs: list[subprocess.Popen | None]) -> None:
        for p in procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in procs:
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------------------
# Stores across hosts


@pytest.fixture(scope="module")
def other_hosts(tmp_path_factory):
    """Two workers that do not see the client's DASKFLOW_HOME: one finds an empty tmpfs at that
    path (another host), one finds the client's directory read-only."""
    why = _can_unshare()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("hosts")
    home = base / "home"
    home.mkdir(mode=0o700)
    cluster = Cluster(str(base), {"DASKFLOW_HOME": str(home)})
    cluster.start_scheduler()
    cluster.start_worker(mount=f"mount -t tmpfs tmpfs '{home}'")
    cluster.start_worker(mount=f"mount --bind '{home}' '{home}' && mount -o remount,bind,ro '{home}'")
    try:
        cluster.wait_for_workers(2)
        yield cluster, home, base
    finally:
        cluster.close()


@task(cache_policy=INPUTS - "counter")
def square(x, counter):
    _mark(counter, x)
    return x * x


@task
def home_seen_by_worker(path):
    return sorted(os.listdir(path)), os.access(path, os.W_OK)


@pytest.fixture
def counter(tmp_path):
    """A directory where runs leave one file per execution (``_mark``)."""
    path = tmp_path / "count"
    path.mkdir()
    return path


def test_cache_on_workers_of_other_hosts_reruns_cached(other_hosts, monkeypatch, counter):
    cluster, home, _ = other_hosts
    monkeypatch.setenv("DASKFLOW_HOME", str(home))

    @flow(task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline():
        futures = square.map(range(200), unmapped(str(counter)), chunksize=10)
        values = futures.result()
        workers = {c.result.worker for c in futures.chunks if c.result.worker}
        return values, [f.state.name for f in futures], workers

    values, names, workers = pipeline()
    assert values == [x * x for x in range(200)]
    assert executed(str(counter)) == 200
    assert len(workers) == 2  # both kinds of worker ran some of the runs
    assert set(names) == {"Completed"}

    values, names, _ = pipeline()
    assert values == [x * x for x in range(200)]
    assert names.count("Cached") == 200
    assert executed(str(counter)) == 200  # no body ran again


def test_workers_of_other_hosts_never_write_the_clients_path(other_hosts, monkeypatch, counter):
    cluster, home, _ = other_hosts
    monkeypatch.setenv("DASKFLOW_HOME", str(home))

    @flow(task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline():
        square.map(range(50, 90), unmapped(str(counter)), chunksize=5).result()
        return home_seen_by_worker.map([str(home)] * 8, chunksize=1).result()

    seen = pipeline()
    # the tmpfs worker's view of the client's home stays empty; the read-only one is not writable
    assert ([], True) in seen
    assert all(listing == [] or not writable for listing, writable in seen)


def test_transaction_on_workers_of_other_hosts_commits(other_hosts, monkeypatch, tmp_path, counter):
    cluster, home, _ = other_hosts
    monkeypatch.setenv("DASKFLOW_HOME", str(home))

    @flow(task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline():
        with transaction(key="remote-block") as txn:
            futures = square.map(range(1000, 1030), unmapped(str(counter)), chunksize=5)
        return futures.result(), [f.state.name for f in futures], txn.is_committed()

    values, names, committed = pipeline()
    assert committed and set(names) == {"Completed"} and executed(str(counter)) == 30
    values2, names2, _ = pipeline()
    assert values2 == values and set(names2) == {"Cached"} and executed(str(counter)) == 30


# ---------------------------------------------------------------------------------------
# Completed means done


@pytest.fixture
def killable(tmp_path):
    """A scheduler whose workers (no nanny: the pid is the worker) the test kills and replaces."""
    # a chunk may be running on each killed worker: let Dask try it more than 3 times
    cluster = Cluster(str(tmp_path), {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "10"})
    cluster.start_scheduler()
    yield cluster
    cluster.close()


def _start_workers(cluster: Cluster, n: int, nthreads: int = 1) -> list[subprocess.Popen]:
    procs = [cluster.start_worker(nthreads=nthreads, no_nanny=True) for _ in range(n)]
    cluster.wait_for_workers(sum(1 for p in cluster.workers if p.poll() is None))
    return procs


def _wait_until(condition, timeout: float = 60.0, poll: float = 0.02) -> None:
    """Wait for an outside condition (files written by worker processes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(poll)


@task
def slow(x, counter, seconds):
    _mark(counter, x)
    time.sleep(seconds)
    return x


@task
def plus_one(x):
    return x + 1


@task
def gate(name):
    from distributed import Event

    Event(name).wait()
    return True


def test_killed_worker_reruns_only_runs_in_flight(killable, counter):
    workers = _start_workers(killable, 2)
    kills = 4

    @flow(task_runner=DaskTaskRunner(address=killable.address))
    def pipeline():
        futures = slow.map(range(400), unmapped(str(counter)), unmapped(0.05))
        for k in range(kills):
            _wait_until(lambda k=k: executed(str(counter)) >= 70 * (k + 1))
            victim = next(p for p in workers if p.poll() is None)
            # Kill in the middle of a run, not within the ~2 ms after a run ended in which
            # its checkpoint is still on its way to the scheduler (that run would run again).
            _wait_until(lambda: _mid_run(str(counter), victim.pid, 0.05), timeout=10, poll=0.002)
            killed.append((victim.pid, time.time()))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            workers.remove(victim)
            workers.append(killable.start_worker(no_nanny=True))
        return futures.result(), [f.state.name for f in futures]

    killed: list[tuple[int, float]] = []
    values, names = pipeline()
    assert values == list(range(400)) and set(names) == {"Completed"}
    print(f"400 runs, {kills} kills: {executed(str(counter))} executions")
    # Only runs in flight at a kill ran again: each repeated run first started on a killed
    # worker at most one run (50 ms) before the kill, plus the documented window of a few
    # ms in which a finished run's checkpoint is still on its way to the scheduler.
    first: dict[int, tuple[float, int]] = {}
    repeated = set()
    for entry in os.scandir(counter):
        x, pid = map(int, entry.name.split("-")[:2])
        if x in first:
            repeated.add(x)
        first[x] = min(first.get(x, (entry.stat().st_mtime, pid)), (entry.stat().st_mtime, pid))
    for x in repeated:
        started, pid = first[x]
        assert any(pid == victim and when - 0.05 - 0.02 <= started <= when for victim, when in killed), (x, started)
    assert executed(str(counter)) <= 400 + kills * (1 + 1)  # threads per worker: 1; + the checkpoint window


@pytest.mark.parametrize("persist", [False, True])
def test_upstream_results_lost_with_their_worker_are_not_run_again(killable, tmp_path, persist, counter):
    from distributed import Client, Event

    (first_worker,) = _start_workers(killable, 1, nthreads=2)
    name = f"gate-{uuid.uuid4().hex}"
    up = slow.with_options(persist_result=persist)
    runner = DaskTaskRunner(address=killable.address)

    @flow(task_runner=runner)
    def pipeline():
        first = up.map(range(100), unmapped(str(counter)), unmapped(0.01))
        opened = gate.submit(name)
        try:
            second = plus_one.map(first, wait_for=[opened])  # queued on the upstream's Dask results
            runner.wait([c.handle for c in first.chunks if c.handle is not None], 60)
            assert executed(str(counter)) == 100
            killable.start_worker(no_nanny=True)
            first_worker.send_signal(signal.SIGKILL)  # holds every finished upstream result
            first_worker.wait()
        finally:
            with Client(killable.address, set_as_default=False) as client:
                Event(name, client=client).set()
        return second.result(), [f.state.name for f in first]

    values, names = pipeline()
    assert values == list(range(1, 101)) and set(names) == {"Completed"}
    print(f"upstream killed (persist_result={persist}): {executed(str(counter)) - 100} of 100 executed again")
    assert executed(str(counter)) == 100  # no completed upstream run executed again


# ---------------------------------------------------------------------------------------
# Connection blips


class Proxy:
    """A TCP proxy (threads) between the client and the scheduler that the test cuts and restores."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.open.is_set():
                conn.close()  # the network is down: refused
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.pairs.append((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
def behind_proxy(tmp_path):
    cluster = Cluster(str(tmp_path), {})
    cluster.start_scheduler()
    cluster.start_worker()
    cluster.start_worker()
    cluster.wait_for_workers(2)
    proxy = Proxy(cluster.port)
    address = f"tcp://127.0.0.1:{proxy.port}"
    yield cluster, proxy, address
    close_shared_client(address)
    proxy.close()
    cluster.close()


@task
def marked(x, counter):
    time.sleep(0.02)
    _mark(counter, x)
    return x * 2


def _per_run(counter: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir(counter):
        x = int(name.split("-")[0])
        out[x] = out.get(x, 0) + 1
    return out


def test_connection_blip_resubmits_unfinished_runs_only(behind_proxy, counter):
    _, proxy, address = behind_proxy

    @flow(task_runner=DaskTaskRunner(address=address))
    def pipeline():
        futures = marked.map(range(300), unmapped(str(counter)))
        _wait_until(lambda: executed(str(counter)) >= 100)
        proxy.cut()
        recorded = {c.start + i for c in futures.chunks if c.result is not None for i in range(c.n)}
        time.sleep(3)  # the connection stays down for 3 s (the scenario, not a synchronisation)
        proxy.restore()
        return futures.result(), recorded

    values, recorded = pipeline()
    runs = _per_run(str(counter))
    assert values == [x * 2 for x in range(300)]
    assert recorded  # some runs were recorded before the cut (how many depends on chunk sizes)
    assert all(runs[x] == 1 for x in recorded)  # recorded before the cut: never run again
    print(f"blip: {len(recorded)} runs recorded before the cut, {sum(runs.values()) - 300} executed again")


def test_submit_calls_held_for_one_graph_survive_a_connection_cut(behind_proxy, counter):
    # .submit() calls are held ~2 ms and sent as one graph (runners.batching): calls held when
    # the connection goes, and calls made while it is down, all run once it is back
    _, proxy, address = behind_proxy

    @flow(task_runner=DaskTaskRunner(address=address))
    def pipeline():
        first = [marked.submit(x, str(counter)) for x in range(40)]
        proxy.cut()  # some of them are still held, or in flight
        during = [marked.submit(x, str(counter)) for x in range(40, 60)]
        time.sleep(3)  # the connection stays down for 3 s (the scenario, not a synchronisation)
        proxy.restore()
        return [f.result(timeout=60) for f in first + during]

    assert pipeline() == [x * 2 for x in range(60)]
    assert set(_per_run(str(counter))) == set(range(60))  # every run executed (at least once)


def test_scheduler_away_past_grace_period_fails_the_flow_clearly(behind_proxy, counter):
    import dask.config

    _, proxy, address = behind_proxy

    @flow(task_runner=DaskTaskRunner(address=address))
    def pipeline():
        futures = marked.map(range(300), unmapped(str(counter)))
        _wait_until(lambda: executed(str(counter)) >= 20)
        proxy.cut()
        return futures.result()

    started = time.monotonic()
    with dask.config.set({"daskflow.reconnect-grace": 2}):
        with pytest.raises(Exception, match="reconnect-grace"):
            pipeline()
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------------------
# Large values stay on the workers


@task
def big(x, counter):
    import numpy as np

    _mark(counter, x)
    return np.full(2**18, float(x))  # 2 MiB: over daskflow.results.inline-bytes


def _runs_show(home, run_id: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-m", "daskflow", "runs", "show", run_id, "-o", "json"],
                         env=dict(os.environ, DASKFLOW_HOME=str(home), PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("persist", [False, True])
def test_large_values_lost_with_their_worker_are_computed_again_as_a_new_attempt(killable, counter, daskflow_home,
                                                                                 persist):
    from daskflow.engine.tracking import tracker

    (holder,) = _start_workers(killable, 1, nthreads=2)
    task_ = big.with_options(persist_result=persist)

    @flow(task_runner=DaskTaskRunner(address=killable.address))
    def pipeline():
        futs = task_.map(range(6), unmapped(str(counter)))
        futs.wait()
        held = [c.result.values for c in futs.chunks]  # states only: the values stayed on the worker
        killable.start_worker(no_nanny=True)
        killable.wait_for_workers(2)
        holder.send_signal(signal.SIGKILL)  # it holds every value
        holder.wait()
        values = futs.result()
        return held, [float(v[0]) for v in values], [(f.task_run_id, f.run_count, f.history()) for f in futs]

    held, values, runs = pipeline()
    assert held == [None] * len(held)
    assert values == [float(x) for x in range(6)]
    tracker.flush()
    again = "read back from the result cache" if persist else "computed again"
    for run_id, run_count, history in runs:
        assert run_count == (1 if persist else 2)
        assert any("lost with its worker" in s.message and again in s.message for s in history), history
        shown = _runs_show(daskflow_home, run_id)
        assert shown["run_count"] == run_count and shown["state"] == "Completed"
        assert any("lost with its worker" in h["message"] for h in shown["history"]), shown["history"]
    assert executed(str(counter)) == (6 if persist else 12)  # persisted: read back, not run again


def test_large_results_on_other_hosts_are_not_cached_and_their_runs_say_why(other_hosts, monkeypatch, counter):
    from daskflow.engine.tracking import tracker

    cluster, home, _ = other_hosts
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    cached_big = big.with_options(cache_policy=INPUTS - "counter")

    @flow(task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline():
        futs = cached_big.map(range(4), unmapped(str(counter)), chunksize=1)
        return [float(v[0]) for v in futs.result()], [f.task_run_id for f in futs]

    values, ids = pipeline()
    assert values == [0.0, 1.0, 2.0, 3.0]
    tracker.flush()
    logs = subprocess.run([sys.executable, "-m", "daskflow", "runs", "logs", ids[0], "-o", "json"],
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert any("not cached" in r["message"] and "inline-bytes" in r["message"] for r in json.loads(logs.stdout))
    values, _ = pipeline()
    assert values == [0.0, 1.0, 2.0, 3.0]
    assert executed(str(counter)) == 8  # not cached: the second run executed every body again


def test_workers_of_other_hosts_write_results_to_a_shared_storage_themselves(other_hosts, monkeypatch, counter,
                                                                             tmp_path):
    import dask.config

    cluster, home, base = other_hosts
    monkeypatch.setenv("DASKFLOW_HOME", str(home))
    key = base / f"results-{uuid.uuid4().hex}.key"
    key.write_bytes(os.urandom(32))
    storage = base / f"storage-{uuid.uuid4().hex}"  # a directory every host sees (no common home)
    cached_big = big.with_options(cache_policy=INPUTS - "counter")

    @flow(task_runner=DaskTaskRunner(address=cluster.address))
    def pipeline():
        futs = cached_big.map(range(6), unmapped(str(counter)), chunksize=1)
        return [float(v[0]) for v in futs.result()], [s.name for s in futs.states]

    with dask.config.set({"daskflow.results.storage": f"file://{storage}", "daskflow.results.secret-file": str(key)}):
        values, names = pipeline()
        assert values == [float(x) for x in range(6)] and set(names) == {"Completed"}
        # written by the workers themselves (v1/: the cache's records; kept/ holds values kept for a retry)
        assert len([p for p in (storage / "v1").rglob("*") if p.is_file()]) == 6
        monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "colleague"))  # another home, cold
        values, names = pipeline()
    assert values == [float(x) for x in range(6)]
    assert names.count("Cached") == 6
    assert executed(str(counter)) == 6  # the second home ran no body
