"""Tasks served by the task-worker subprocesses of test_background.py (imported by module name)."""

from __future__ import annotations

import os
import pathlib
import time

from daskflow import task


@task(persist_result=True)
def add(x, y=0):
    return x + y


@task(persist_result=True)
def whoami(x):
    time.sleep(0.05)  # long enough that both task workers take some runs
    from distributed import get_worker

    return get_worker().address


@task
def not_persisted(x):
    return x


@task(persist_result=True)
def boom(x):
    raise ValueError(f"boom {x}")


@task(persist_result=True, retries=2)
def flaky(path):
    p = pathlib.Path(path)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < 1:
        raise ValueError("the first attempt fails")
    return n + 1


@task(persist_result=True, retries=1, retry_delay_seconds=0.2)
def flaky_later(path):
    """Fails its first attempt; retried after a delay (in its task worker's thread, which
    holds the task's resource)."""
    from distributed import get_worker

    p = pathlib.Path(path)
    first = not p.exists()
    p.write_text("failed once")
    if first:
        raise ValueError("the first attempt fails")
    return get_worker().name


@task(persist_result=True)
def lonely(x):
    """No worker of the shared fixture serves this task."""
    return x * 10


@task(persist_result=True)
def stall_once(marker):
    """Announce the start; the first execution stalls (its worker gets killed), later ones return."""
    p = pathlib.Path(marker)
    first = not p.exists()
    p.write_text(str(os.getpid()))
    if first:
        time.sleep(120)
    return os.getpid()


@task(persist_result=True)
def inc(x):
    return x + 1


NOT_A_TASK = 42


from daskflow.cache import INPUTS  # noqa: E402


@task(cache_policy=INPUTS, persist_result=True)
def cached_square(x, log):
    with open(log, "a") as f:
        f.write("ran\n")
    return x * x


@task(persist_result=True)
def chatty(x):
    from daskflow import get_run_logger

    get_run_logger().info("hello %s", x)
    return x


@task(persist_result=True)
def chatty_long(x):
    import time

    from daskflow import get_run_logger

    log = get_run_logger()
    log.info("first %s", x)
    time.sleep(0.3)  # longer than the log flush interval: these records ship while the run executes
    log.info("second %s", x)
    return x


@task(persist_result=True)
def hog(mib):
    """Hold ``mib`` MiB (every page written) while burning 0.15 s of this thread's CPU."""
    import numpy as np

    block = np.ones(mib * 2**20 // 8)
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.15:
        pass
    return float(block[0])


@task(persist_result=True)
def total(xs):
    return sum(xs)


@task(persist_result=True)
async def aio_double(x):
    import asyncio

    await asyncio.sleep(0)
    return 2 * x


@task(persist_result=True)
def nap(x, seconds):
    """A run that takes a while (a server can die while some are in flight)."""
    time.sleep(seconds)
    return x


@task(persist_result=True)
def chunk_mate(i, folder):
    """Note each execution (run index, Dask key of its chunk); the third run of the first chunk
    that gets one stalls, once (its worker gets killed mid-chunk)."""
    from distributed import get_worker

    key = get_worker().get_current_task()
    d = pathlib.Path(folder)
    with open(d / "ran", "a") as f:
        f.write(f"{i} {key}\n")
    stalled = d / "stalled"
    if not stalled.exists():
        mates = [line for line in (d / "ran").read_text().splitlines() if line.split(" ", 1)[1] == str(key)]
        if len(mates) == 3:
            stalled.write_text(str(i))
            time.sleep(120)
    return i * 2


@task(persist_result=True)
def poison(i, bad):
    """Run ``bad`` kills the task worker running it, every time."""
    if i == bad:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return i


@task(persist_result=True)
def counted(log):
    """Note each execution in ``log``. No worker of the shared fixture serves this task."""
    with open(log, "a") as f:
        f.write("ran\n")
    return "ran"


@task(persist_result=True)
def gated(started, go):
    """Say it started, then run until the test says go."""
    pathlib.Path(started).write_text("started")
    deadline = time.monotonic() + 60
    while not pathlib.Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


@task(persist_result=True)
def runtime_info(x):
    """What daskflow.runtime tells a background run."""
    from daskflow.runtime import flow_run, task_run

    return {"id": task_run.id, "name": task_run.name, "parameters": task_run.parameters,
            "run_count": task_run.run_count, "flow_run_id": flow_run.id}
