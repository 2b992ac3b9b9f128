"""The host the running code is on, as its runner handed it (``runners.base.Host``).

``run_chunk`` receives the host in its spec (the runner put it there) and makes it the
current host while the chunk runs, so everything the chunk does (reports, logs, retry
waits, checkpoints, runs it calls inline) asks the host, never the runner's module. Code
outside any chunk (a flow's direct calls) gets the runners' default for where it runs.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daskflow.runners.base import Host

host_var: ContextVar[Host | None] = ContextVar("daskflow_host", default=None)


def current_host() -> Host:
    """The host of the running chunk, else the runners' default for this thread."""
    host = host_var.get()
    if host is not None:
        return host
    from daskflow.runners import current_host as default_host

    return default_host()
