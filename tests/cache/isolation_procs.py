"""Processes for test_isolation.py: one serializable task call, or one transaction block, each.

``python isolation_procs.py task|block OUT_DIR`` with the environment saying which lock
manager (``LOCKS=file`` + ``LOCK_DIR``, or ``LOCKS=dask`` + ``LOCK_ADDRESS``; ``LEASE``
seconds) and how the body behaves (``HOLD=waiter``: until another process waits for the
lock; ``HOLD=forever``: until killed; else it returns at once). Every execution of the
body leaves a file ``body-PID`` in OUT_DIR: the tests count executions there.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
import time

from daskflow import task, transaction
from daskflow.cache import INPUTS, FileLockManager


def make_manager():
    lease = float(os.environ.get("LEASE", "30"))
    if os.environ["LOCKS"] == "file":
        return FileLockManager(os.environ["LOCK_DIR"], lease_seconds=lease)
    from daskflow.runners import DaskLockManager

    return DaskLockManager(os.environ["LOCK_ADDRESS"], lease_seconds=lease)


MANAGER = make_manager()


def body(out_dir: str) -> int:
    pathlib.Path(out_dir, f"body-{os.getpid()}").write_text("ran")
    print("body started", flush=True)
    hold = os.environ.get("HOLD", "")
    if hold == "forever":
        threading.Event().wait()
    if hold == "waiter":
        deadline = time.monotonic() + 60
        while MANAGER.waiters() < 1:  # a condition polled with a deadline
            if time.monotonic() > deadline:
                raise TimeoutError("no other process came to wait for the lock")
            time.sleep(0.02)
    return 42


@task(cache_policy=INPUTS.configure(isolation_level="SERIALIZABLE", lock_manager=MANAGER))
def once(out_dir: str) -> int:
    return body(out_dir)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "task":
        state = once(out, return_state=True)
        print("result", state.name, state.result(), flush=True)
    else:
        with transaction(key=f"block-{pathlib.Path(out).name}", isolation_level="SERIALIZABLE",
                         lock_manager=MANAGER) as txn:
            if txn.is_committed():
                print(f"result skipped {txn.read()}", flush=True)
            else:
                txn.stage(body(out))
                print("result ran", flush=True)
