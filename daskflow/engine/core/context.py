"""Run contexts: which flow run and which task run the current code belongs to.

Held in ``contextvars`` so threads and asyncio tasks each see their own. A chunk of a
``.map()`` sets one ``TaskRunContext`` and moves its ``index`` from run to run instead
of building a context per element.
"""

from __future__ import annotations

import os

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daskflow import config
from daskflow.ids import run_id

if TYPE_CHECKING:
    from daskflow.engine.api.flows import Flow
    from daskflow.engine.api.tasks import Task
    from daskflow.runners.base import TaskRunner



#: flow parameters pickled larger than this do not travel with chunks (``FlowRunInfo``)
MAX_SHIPPED_PARAMETERS = 64 * 1024


@dataclass(slots=True)
class FlowRunInfo:
    """What ``daskflow.runtime.flow_run`` tells code running anywhere: it travels in chunk specs.

    Made once per flow run; its parameters are pickled once, kept only when small
    (``MAX_SHIPPED_PARAMETERS``), and unpickled where they are asked for.
    """

    id: str
    name: str
    flow_name: str
    parameters_blob: bytes | None  # None: too large to ship (or not picklable)
    parent_flow_run_id: str | None = None
    run_count: int = 1

    @property
    def parameters(self) -> dict[str, Any] | None:
        if self.parameters_blob is None:
            return None
        import cloudpickle

        return cloudpickle.loads(self.parameters_blob)

    @classmethod
    def of(cls, ctx: FlowRunContext) -> FlowRunInfo:
        blob = pickled_up_to(ctx.parameters, MAX_SHIPPED_PARAMETERS)
        run = ctx.flow_run
        return cls(ctx.flow_run_id, run.name if run is not None else "", getattr(ctx.flow, "name", ""), blob,
                   ctx.parent.flow_run_id if ctx.parent is not None else None,
                   run.run_count if run is not None else 1)


class _Full(Exception):
    pass


class _CappedFile:
    """A file that refuses to grow past ``cap`` bytes: pickling stops there, not after copying it all."""

    def __init__(self, cap: int) -> None:
        self.parts: list[bytes] = []
        self.size, self.cap = 0, cap

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        self.size += n
        if self.size > self.cap:
            raise _Full
        self.parts.append(bytes(data))
        return n


def pickled_up_to(value: Any, cap: int) -> bytes | None:
    """``value`` cloudpickled, or None when it is larger than ``cap`` bytes (or not picklable)."""
    import cloudpickle

    out = _CappedFile(cap)
    try:
        cloudpickle.CloudPickler(out, protocol=5).dump(value)
    except Exception:  # _Full, or a value that cannot be pickled
        return None
    return b"".join(out.parts)


@dataclass(eq=False)
class FlowRunContext:
    flow: Flow
    flow_run_id: str
    runner: TaskRunner
    parameters: dict[str, Any]
    submitted: list[Any] = field(default_factory=list)  # futures and future lists
    streams: list[Any] = field(default_factory=list)  # maps over iterators, read through at the end
    parent: FlowRunContext | None = None
    flow_run: Any = None  # the engine.api.flows.FlowRun record its hooks receive
    wait_lists: dict[int, list[Any]] = field(default_factory=dict)  # id(list given as wait_for) -> its runs
    shipped: FlowRunInfo | None = None  # made at the first chunk that needs it (``info``)
    keep: Any = None  # an engine.client.resume.KeepScope: how its calls keep their values (None: not kept)
    retry: Any = None  # an engine.client.resume.Resume: this flow run is a retry of an earlier attempt
    cancel_reason: str | None = None  # set when another process cancelled it (engine.client.cancels)
    watched: Any = None  # its entry in the cancel watcher
    home_env: str = field(default_factory=lambda: os.environ.get("DASKFLOW_HOME", ""))  # as its runs record it
    writes_behind: bool = False  # chunks may leave storage writes under way: its end waits (``write_behind``)

    def info(self) -> FlowRunInfo:
        """What chunks ship of this flow run (made again when its name or run count changed).
        Read by every direct call: the fields compared one by one, no tuples built."""
        run, shipped = self.flow_run, self.shipped
        if shipped is None or (run is not None and (shipped.name != run.name or shipped.run_count != run.run_count)):
            shipped = self.shipped = FlowRunInfo.of(self)
        return shipped


@dataclass(eq=False, slots=True)
class TaskRunContext:
    task: Task
    base: int
    start: int
    index: int = 0
    flow_run_id: str | None = None
    run_count: int = 1
    name: str = ""  # set by the task's task_run_name
    final_state: Any = None  # the State the run's hooks received, kept for return_state
    spec: Any = None  # the chunk's ChunkSpec and upstream envelopes: daskflow.runtime reads a run's
    deps: Any = None  # parameters from them when asked (nothing is kept per run)
    default_name: str = ""  # a background run's ``{task}-{short id}``; else ``{task}-{index}``

    @property
    def run_name(self) -> str:
        """The run's name: ``task_run_name``'s, or ``{task}-{short id}`` (background), or ``{task}-{index}``."""
        return self.name or self.default_name or f"{self.task.name}-{self.start + self.index}"

    @property
    def task_run_id(self) -> str:
        return run_id(self.base, self.start + self.index)


flow_run_ctx: ContextVar[FlowRunContext | None] = ContextVar("daskflow_flow_run", default=None)
task_run_ctx: ContextVar[TaskRunContext | None] = ContextVar("daskflow_task_run", default=None)


def current_flow_run_info() -> FlowRunInfo | None:
    """The flow run the caller belongs to, as chunks ship it: this process's flow, or the chunk's."""
    flow = flow_run_ctx.get()
    if flow is not None:
        return flow.info()
    task = task_run_ctx.get()
    if task is not None and task.spec is not None:
        return task.spec.flow_run
    return None


def current_flow_run_id() -> str | None:
    """The id of the flow run the caller belongs to, if any (also inside its tasks)."""
    task = task_run_ctx.get()
    if task is not None:
        return task.flow_run_id
    flow = flow_run_ctx.get()
    return flow.flow_run_id if flow is not None else None


#: The daskflow home whose cache the current code uses: set by a chunk to its submitter's.
cache_home_var: ContextVar[str | None] = ContextVar("daskflow_cache_home", default=None)
#: The store token a remote chunk ships on to the runs it submits (None: not in one).
cache_token_var: ContextVar[str | None] = ContextVar("daskflow_cache_token", default=None)


def cache_home() -> str:
    """The cache home of the current code: the submitter's (shipped in a chunk's spec), else ours."""
    return cache_home_var.get() or str(config.home_path())  # checked where the store opens (get_store)
