"""Real subprocesses for background-run tests: a daskflow server and task workers on 127.0.0.1."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading

TESTS = pathlib.Path(__file__).parent
ROOT = TESTS.parent


class Proc:
    """A `python -m daskflow ...` subprocess whose stdout lines can be awaited."""

    def __init__(self, args: list[str], env: dict[str, str], log: pathlib.Path) -> None:
        self.log = open(log, "ab")
        argv = args if args[0] == "-c" else ["-m", "daskflow", *args]
        self.popen = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=self.log, text=True)
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.out: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stdout:  # type: ignore[union-attr]
            self.out.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float = 30) -> str:
        """The next stdout line starting with ``prefix`` (fails on exit or timeout)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line {prefix!r} within {timeout}s; stdout: {self.out}") from None
            if line is None:
                raise AssertionError(f"process exited ({self.popen.wait()}) before {prefix!r}; "
                                     f"stdout: {self.out}; log: {self.log.name}")
            if line.startswith(prefix):
                return line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"process did not stop on signal {sig} within {timeout}s") from None
        finally:
            self.log.close()


def env_for(home: pathlib.Path, address: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS / "runners"), str(ROOT / "benchmarks")]),
               DASKFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("DASKFLOW_SCHEDULER_ADDRESS", None)
    if address:
        env["DASKFLOW_SCHEDULER_ADDRESS"] = address
    return env


def start_server(home: pathlib.Path, port: int = 0, **env: str) -> tuple[Proc, str]:
    proc = Proc(["server", "start", "--port", str(port)], {**env_for(home), **env}, home.parent / "server.log")
    line = proc.expect("daskflow server at ")
    return proc, line.split()[3]


def start_worker(home: pathlib.Path, address: str, *targets: str, nthreads: int = 1,
                 python: str | None = None) -> tuple[Proc, str]:
    """`daskflow worker TARGETS` (or, with ``python``, that code, e.g. a ``serve(...)`` call)."""
    args = ["-c", python] if python else ["worker", *targets, "--nthreads", str(nthreads)]
    proc = Proc(args, env_for(home, address), home.parent / "worker.log")
    line = proc.expect("daskflow task worker ")
    return proc, line.split()[3]
