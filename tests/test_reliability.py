"""Chaos on one host: processes that die, Ctrl-C, clusters that go away, scripts without a main guard.

Every test runs real processes (a flow script in ``tmp_path``, the ``daskflow`` CLI, a
``dask scheduler``), signals them by pid (or types Ctrl-C on a pseudo-terminal), and reads
the run store through the CLI, as a user would. Waiting is on files the scripts write,
polled with a deadline, or on what the terminal shows.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(home: pathlib.Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASKFLOW_HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    return env


def _script(tmp_path: pathlib.Path, body: str) -> pathlib.Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


def _start(script: pathlib.Path, home: pathlib.Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], env=_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _cli(home: pathlib.Path, *args: str):
    """``daskflow ARGS -o json`` as a real CLI subprocess; the parsed output."""
    out = subprocess.run([sys.executable, "-m", "daskflow", *args, "-o", "json"], env=_env(home),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def _reap(children: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for processes to exit; the ones still alive after ``timeout`` (killed then)."""
    _, alive = psutil.wait_procs(children, timeout=timeout)
    orphans = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:  # a zombie has exited; init reaps it
                orphans.append(p)
                p.kill()
        except psutil.NoSuchProcess:
            pass
    return orphans


SLOW_FLOW = """
    import pathlib, sys, time
    from daskflow import flow, task
    from daskflow.engine.tracking import tracker

    MARKS = pathlib.Path(sys.argv[1])

    @task
    def slow(i):
        (MARKS / f"started-{i}").touch()
        time.sleep(float(sys.argv[3]))
        (MARKS / f"done-{i}").touch()
        return i

    @flow
    def pipeline(n):
        futures = slow.map(range(n))
        tracker.flush()
        (MARKS / "submitted").touch()
        return futures.result()

    if __name__ == "__main__":
        pipeline(int(sys.argv[2]))
"""


def test_runs_of_a_killed_flow_process_end_crashed(tmp_path):
    home, marks = tmp_path / "home", tmp_path / "marks"
    marks.mkdir()
    proc = _start(_script(tmp_path, SLOW_FLOW), home, str(marks), "70", "0.3")
    _wait_for(lambda: (marks / "submitted").exists() and len(list(marks.glob("started-*"))) >= 4, 60,
              "the flow submitted its runs and some started")
    children = _tree(proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    proc.stdout.close(), proc.stderr.close()

    runs = _cli(home, "runs", "ls", "--limit", "1000")
    flows = _cli(home, "flow-runs", "ls")
    died = f"the process that ran it died: host {os.uname().nodename} pid {proc.pid}"
    assert len(runs) == 70 and len(flows) == 1
    assert flows[0]["state"] == "Crashed" and flows[0]["message"] == died
    states = {r["state"] for r in runs}
    assert states <= {"Completed", "Crashed"} and "Crashed" in states
    assert all(r["message"] == died for r in runs if r["state"] == "Crashed")
    assert not _reap(children, 30), "the flow's LocalCluster processes outlived it"


def test_ctrl_c_records_finished_runs_cancels_the_rest_and_exits_with_one_line(tmp_path):
    # SIGINT to the flow's process alone (a `kill -INT`); Ctrl-C typed in a terminal, which
    # reaches the whole foreground process group, is the next test
    home, marks = tmp_path / "home", tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, SLOW_FLOW)), str(marks), "300", "0.05"],
                            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's job
    _wait_for(lambda: len(list(marks.glob("done-*"))) >= 60, 60, "60 run bodies finished")
    children = _tree(proc)
    os.kill(proc.pid, signal.SIGINT)
    # bodies that finished well before the signal (a checkpoint travels a few ms after its body)
    finished_before = {f"slow-{p.name.split('-')[1]}" for p in marks.glob("done-*")
                       if p.stat().st_mtime < time.time() - 0.5}
    interrupted = time.monotonic()
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - interrupted
    assert proc.returncode == -signal.SIGINT
    assert took < 10, f"exit took {took:.1f}s"
    lines = err.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"daskflow: flow 'pipeline' interrupted; (\d+) runs completed, "
                                            r"(\d+) cancelled", lines[0]), err
    completed, cancelled = map(int, re.findall(r"\d+", lines[0]))

    runs = _cli(home, "runs", "ls", "--limit", "1000")
    states = collections.Counter(r["state"] for r in runs)
    assert states == {"Completed": completed, "Cancelled": cancelled} and completed + cancelled == 300
    finished = {f"slow-{p.name.split('-')[1]}" for p in marks.glob("done-*")}
    recorded_completed = {r["name"] for r in runs if r["state"] == "Completed"}
    assert completed > 0 and recorded_completed <= finished
    # every body that had finished before the interrupt is recorded Completed, also inside a
    # chunk that was cut short (its finished runs come from the scheduler's checkpoints)
    assert finished_before <= recorded_completed, sorted(finished_before - recorded_completed)[:10]
    assert _cli(home, "flow-runs", "ls")[0]["state"] == "Cancelled"
    assert not _reap(children, 5), "orphan processes"


TERMINAL_FLOW = """
    import pathlib, sys, time
    from daskflow import flow, task

    MARKS = pathlib.Path(sys.argv[1])

    @task
    def slow(i):
        time.sleep(0.05)
        (MARKS / f"done-{i}").touch()
        return i

    @flow
    def pipeline(n):
        return slow.map(range(n)).result()

    if __name__ == "__main__":
        pipeline(300)
"""
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _screen_lines(out: bytes) -> list[str]:
    """The terminal's output as lines of text: escape sequences out, ``\r`` redraws split."""
    text = _ANSI.sub(b"", bytes(out)).decode(errors="replace")
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def _completed_shown(out: bytes) -> int:
    """The highest "completed N" the progress bar showed."""
    return max((int(n) for n in re.findall(rb"completed (\d+)", _ANSI.sub(b"", bytes(out)))), default=0)


def _read_until(master: int, out: bytearray, done, timeout: float) -> None:
    """Read the terminal's output into ``out`` until ``done(out)``, or the process closed it."""
    import select

    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): a long test session may hold descriptors past 1024
    poller.register(master, select.POLLIN)
    while not done(out):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not seen within {timeout}s; the terminal showed:\n{out.decode(errors='replace')}")
        ready = poller.poll(left * 1000)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not chunk:
                return
            out += chunk


def test_ctrl_c_typed_in_a_terminal_prints_one_line_and_records_finished_runs(tmp_path):
    # A real pseudo-terminal is the script's controlling terminal; the test types Ctrl-C on it,
    # and the terminal driver sends SIGINT to the whole foreground process group (the flow's
    # process and its LocalCluster's workers), as a shell's job gets it.
    import fcntl
    import termios

    home, marks = tmp_path / "home", tmp_path / "marks"
    marks.mkdir()
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, TERMINAL_FLOW)), str(marks)], env=_env(home),
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    out = bytearray()
    try:
        _read_until(master, out, lambda o: _completed_shown(o) >= 60, 90)  # the progress bar says so
        children = _tree(proc)
        os.write(master, b"\x03")  # Ctrl-C, typed
        typed = time.time()
        _read_until(master, out, lambda o: False, 30)  # everything, until the last process lets go
        assert proc.wait(30) == -signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode(errors="replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    lines = [line.replace("^C", "").strip() for line in _screen_lines(out)]  # the terminal echoes ^C
    lines = [line for line in lines if line and not re.match(r"slow\b.*/300", line)]  # progress bar redraws
    assert len(lines) == 1, "\n".join(lines[:40])
    found = re.fullmatch(r"daskflow: flow 'pipeline' interrupted; (\d+) runs completed, (\d+) cancelled", lines[0])
    assert found, lines[0]
    completed, cancelled = map(int, found.groups())

    runs = _cli(home, "runs", "ls", "--limit", "1000")
    states = collections.Counter(r["state"] for r in runs)
    assert states == {"Completed": completed, "Cancelled": cancelled} and completed + cancelled == 300
    finished = {f"slow-{p.name.split('-')[1]}" for p in marks.glob("done-*")}
    finished_before = {f"slow-{p.name.split('-')[1]}" for p in marks.glob("done-*") if p.stat().st_mtime < typed - 0.5}
    recorded_completed = {r["name"] for r in runs if r["state"] == "Completed"}
    assert completed >= 60 and recorded_completed <= finished
    assert finished_before <= recorded_completed, sorted(finished_before - recorded_completed)[:10]
    assert _cli(home, "flow-runs", "ls")[0]["state"] == "Cancelled"
    assert not _reap(children, 5), "orphan processes"


def test_restarted_background_server_brings_the_run_store_up_to_date(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "runners"))
    from background_procs import start_server, start_worker

    from daskflow.background import store
    from daskflow.background.client import disconnect
    from daskflow.runners.clients import close_shared_client

    home = tmp_path / "srv"
    server, address = start_server(home)
    monkeypatch.setenv("DASKFLOW_SCHEDULER_ADDRESS", address)
    worker = None
    try:
        import bg_tasks

        worker, _ = start_worker(home, address, "bg_tasks:nap", nthreads=2)
        futures = [bg_tasks.nap.delay(i, 0.2) for i in range(12)]
        ids = [f.task_run_id for f in futures]
        queue = store.open_store(home / "background")

        def some_final() -> bool:
            return any(store.is_final(rec) for rec, _ in store.read_records(ids, queue).values())

        _wait_for(some_final, 30, "a background run completed")
        server.stop(signal.SIGKILL)  # before its run store has heard of the latest completions
        server, again = start_server(home, int(address.rsplit(":", 1)[1]))
        assert again == address
        assert [f.result(timeout=60) for f in futures] == list(range(12))
    finally:
        if worker is not None:
            worker.stop()
        disconnect(address)
        close_shared_client(address)
        assert server.stop() == 0

    truth = {rec["id"]: rec["state"] for rec in store.list_records(store.open_store(home / "background"))}
    runs = {r["id"]: r["state"] for r in _cli(home, "runs", "ls", "--limit", "100")}
    assert truth == runs and truth.keys() == set(ids)
    assert set(truth.values()) <= {"Completed", "Cached"}  # Cached: re-executed after the kill, answered by the cache


REMOTE_FLOW = """
    import pathlib, sys, time
    from daskflow import flow, task
    from daskflow.runners import DaskTaskRunner

    @task
    def inc(x):
        return x + 1

    @flow(task_runner=DaskTaskRunner(address=sys.argv[1]))
    def pipeline():
        return sum(inc.map(range(10)).result())

    if __name__ == "__main__":
        print(pipeline(), flush=True)
        pathlib.Path(sys.argv[2], "flow-done").touch()  # the user now shuts the cluster down
        while not pathlib.Path(sys.argv[2], "cluster-gone").exists():
            time.sleep(0.05)
"""


def test_flow_on_a_cluster_the_user_then_closes_exits_quietly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    log = open(tmp_path / "cluster.log", "wb")
    cluster = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", address.rsplit(":", 1)[1], "--no-dashboard"], stdout=log, stderr=log),
               subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--no-dashboard"], stdout=log, stderr=log)]
    try:
        proc = _start(_script(tmp_path, REMOTE_FLOW), tmp_path / "home", address, str(tmp_path))
        _wait_for(lambda: (tmp_path / "flow-done").exists() or proc.poll() is not None, 60, "the flow ran")
    finally:
        for p in cluster[::-1]:
            p.terminate()
            p.wait(20)
        log.close()
    (tmp_path / "cluster-gone").touch()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == "55", err
    assert "Traceback" not in err and "Failed to reconnect" not in err, err


def test_script_without_main_guard_gets_one_clear_error(tmp_path):
    home = tmp_path / "home"
    script = _script(tmp_path, """
        from daskflow import flow, task

        @task
        def inc(x):
            return x + 1

        @flow
        def pipeline():
            return sum(inc.map(range(10)).result())

        print(pipeline())
    """)
    proc = _start(script, home)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.count("Traceback") == 1 and len(err.splitlines()) < 60, err
    assert "MissingMainGuard" in err and 'if __name__ == "__main__":' in err
    assert f"{script}, line 12" in err
    flows = _cli(home, "flow-runs", "ls")
    assert len(flows) == 1, "worker processes re-importing the script recorded flow runs"


def test_main_guard_check_accepts_guarded_scripts(tmp_path):
    script = _script(tmp_path, """
        from daskflow.runners.main_guard import unguarded_main_call

        def main():
            return unguarded_main_call()

        unguarded = main()
        if __name__ == "__main__":
            print(unguarded is not None, main())
    """)
    out = subprocess.run([sys.executable, str(script)], env=_env(tmp_path), capture_output=True, text=True)
    assert out.stdout.split() == ["True", "None"], out.stderr

