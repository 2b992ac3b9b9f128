"""Preloaded into the worker processes of the LocalClusters daskflow starts: Ctrl-C is the client's.

A terminal delivers Ctrl-C (SIGINT) to its whole foreground process group, and the
LocalCluster's worker processes are in it. Left alone, each worker dies of its
``KeyboardInterrupt`` mid-run, printing tracebacks, and the runs it had finished are lost
with it. The flow's process handles the interrupt (records what finished, cancels the rest,
closes the cluster, which stops its workers): so the workers ignore SIGINT.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if threading.current_thread() is threading.main_thread():  # as early as the worker imports this
    signal.signal(signal.SIGINT, signal.SIG_IGN)
