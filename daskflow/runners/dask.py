"""``DaskTaskRunner``: runs the engine's calls (chunks of task runs) as Dask tasks.

How a submission becomes Dask work, and why:

- The client is made lazily, on the first submission: with an address (the argument,
  or the ``daskflow.scheduler-address`` setting / ``DASKFLOW_SCHEDULER_ADDRESS``) it
  connects to a running scheduler through a client shared by every runner of this
  process with that address (``runners.clients``), so flows do not pay a connection each; without one it
  starts a ``LocalCluster`` (one single-threaded worker process per core, bound to
  127.0.0.1, a dashboard only if bokeh is installed) that it owns and closes on
  ``shutdown()``. Code already running inside a Dask task uses that worker's client.
- Calls submitted in a burst (a ``.map()``'s chunks, a loop of ``.submit()`` calls) go
  as one graph message (``runners.batching``): each call's future exists at once, the
  graph goes a moment later, or at once when anything waits on or cancels a call. The
  engine names each call (``"{task name}-{its first run id}"``) so the dashboard groups
  by task name and Dask never merges two calls. Upstream handles are passed as Dask
  futures inside the argument lists, so Dask orders the graph and moves the data.
- ``gather`` returns, per handle, the value or the exception that ended it (a
  KilledWorker, a cancelled key): what that means for task runs is the engine's call.
  Waiting from inside a Dask task secedes from the worker's thread pool, so a task that
  submits and waits for other tasks does not deadlock the cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator

import dask.config

from daskflow import config
from daskflow.runners import dask_internals, memory_kills
from daskflow.runners.base import LOCAL_HOST, Host, LossCause, TaskRunner
from daskflow.runners.main_guard import check_main_guard
from daskflow.runners.batching import GraphBuffer
from daskflow.runners.clients import shared_client

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

WORKER_PRELOAD = "daskflow.runners.worker_preload"
_subscribed: set[tuple[str, str]] = set()  # (client id, topic) pairs already subscribed


def in_dask_task() -> bool:
    """True inside a task running on a Dask worker (cheap when distributed is not loaded)."""
    if "distributed" not in sys.modules:
        return False
    from distributed.worker import thread_state

    return getattr(thread_state, "key", None) is not None


def worker_address() -> str | None:
    """The address of the Dask worker this code runs on, if any."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not on a Dask worker
        return None


class WorkerHost(Host):
    """The host of calls that run on a Dask worker: events as Dask structured events,
    checkpoints in the scheduler's ledger, retry waits off the worker's thread pool."""

    def address(self) -> str | None:
        return worker_address()

    def remote(self) -> bool:
        return in_dask_task()

    def others_queued(self) -> bool:
        from distributed import get_worker

        return bool(dask_internals.worker_others_queued(get_worker())) if in_dask_task() else False

    def sender(self) -> Callable[[str, Any], None]:
        from distributed import get_worker

        return get_worker().log_event  # Dask structured events: subscribers get (timestamp, payload)

    def recall(self) -> tuple[bytes | None, list[bytes]]:
        from daskflow.runners import ledger

        return ledger.recall()

    def note(self, blob: bytes) -> None:
        from daskflow.runners import ledger

        ledger.note(blob)

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Secede from the worker's pool for the block (the worker starts other tasks), then rejoin."""
        if not in_dask_task():
            yield
            return
        from distributed import rejoin, secede

        secede()
        try:
            yield
        finally:
            rejoin()

    def places_calls(self) -> bool:
        """Inside a Dask task that needs no resources. A task that holds resources (a
        background run: its task worker's) keeps them while it waits, so a new call
        needing the same could wait for it forever: its work stays in its thread."""
        if not in_dask_task():
            return False
        from distributed import get_worker
        from distributed.worker import thread_state

        return dask_internals.worker_task_resources(get_worker(), thread_state.key) == {}

    def submit_call(self, fn: Callable[..., Any], args: tuple, key: str) -> Any:
        """A new Dask task of the worker's cluster: the scheduler places it (any worker)."""
        if not in_dask_task():
            return super().submit_call(fn, args, key)
        from distributed import get_client

        return get_client().submit(fn, *args, key=key, pure=False)

    def gather_calls(self, handles: list[Any]) -> list[Any]:
        if not in_dask_task():
            return super().gather_calls(handles)
        from distributed import wait

        wait(handles)
        out: list[Any] = []
        for future in handles:
            try:
                out.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - a lost call (worker died, cancelled) is its error
                out.append(exc)
        return out

    def sleep(self, seconds: float, idle: bool = False) -> None:
        """Longer waits (any wait of an ``idle`` call) give the worker slot away: the thread
        secedes from the worker's pool (the worker starts other tasks at once) and rejoins it
        after, as a new task would."""
        if seconds < (0.01 if idle else 1.0) or not in_dask_task():
            time.sleep(seconds)
            return
        from distributed import rejoin, secede

        secede()
        try:
            time.sleep(seconds)
        finally:
            rejoin()

    def __reduce__(self) -> str:
        return "WORKER_HOST"


WORKER_HOST = WorkerHost()


def current_host() -> Host:
    """The host of code that runs outside any call handed a host: a Dask worker's inside a
    Dask task, else this process's."""
    return WORKER_HOST if in_dask_task() else LOCAL_HOST


class DaskTaskRunner(TaskRunner):
    """Run tasks on Dask: an embedded LocalCluster by default, or a running scheduler.

    Args:
        address: a scheduler address (``"tcp://127.0.0.1:8786"``); default: the
            ``DASKFLOW_SCHEDULER_ADDRESS`` setting, else an embedded LocalCluster.
        cluster_kwargs: passed to ``LocalCluster`` (``n_workers``, ``memory_limit``...).
        client_kwargs: passed to ``distributed.Client``.

    Example:
        >>> @flow(task_runner=DaskTaskRunner(address="tcp://127.0.0.1:8786"))  # doctest: +SKIP
        ... def pipeline(): ...
    """

    def __init__(self, address: str | None = None, cluster_kwargs: dict | None = None,
                 client_kwargs: dict | None = None) -> None:
        self.address = address
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.client_kwargs = dict(client_kwargs or {})
        self._client: Client | None = None
        self.cluster: LocalCluster | None = None  # the LocalCluster this runner started, if any
        self._threads: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._held: GraphBuffer | None = None  # calls held a moment, sent as one graph (runners.batching)

    def __repr__(self) -> str:
        return f"DaskTaskRunner(address={self.scheduler_address()!r})"

    def scheduler_address(self) -> str | None:
        """The scheduler this runner connects to: its own, else the configured one (None: embedded)."""
        return self.address or config.get("scheduler-address")

    def duplicate(self) -> DaskTaskRunner:
        return DaskTaskRunner(self.address, self.cluster_kwargs, self.client_kwargs)

    @property
    def client(self) -> Client:
        """The Dask client, started on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._start()
                    self.closed = False
        return self._client

    def _start(self) -> Client:
        import distributed  # noqa: F401 - its config defaults are loaded before we set one of them

        with dask.config.set(message_log()):
            address = self.scheduler_address()
            if address:
                return shared_client(address, self.client_kwargs)
            if in_dask_task():
                from distributed import get_client

                return get_client()
            check_main_guard()
            from distributed import Client, LocalCluster

            with dask.config.set({"distributed.scheduler.http.routes": scheduler_routes()}):  # the daskflow UI too
                self.cluster = LocalCluster(**self._local_cluster_kwargs())
            _close_at_exit(self)
            return Client(self.cluster, set_as_default=False, **self.client_kwargs)

    @property
    def dashboard_link(self) -> str | None:
        return self._client.dashboard_link if self._client is not None else None

    def _local_cluster_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "n_workers": config.get("local-cluster.n-workers") or os.cpu_count() or 1,
            "threads_per_worker": config.get("local-cluster.threads-per-worker") or 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",  # a free port; pages need bokeh
        }
        kwargs.update(self.cluster_kwargs)
        if kwargs.get("processes", True):  # workers leave Ctrl-C to this process (runners.worker_preload)
            preload = kwargs.get("preload") or []
            preload = [preload] if isinstance(preload, str) else list(preload)
            kwargs["preload"] = [*preload, WORKER_PRELOAD]
        return kwargs

    def total_threads(self) -> int:
        """Threads of the cluster; of the LocalCluster to come if none started yet.

        Asking must not start a cluster: a cached rerun plans its chunks, finds every run
        in the cache, and submits nothing.
        """
        if self._client is None and not self.scheduler_address() and not in_dask_task():
            kwargs = self._local_cluster_kwargs()
            return max(1, int(kwargs["n_workers"]) * int(kwargs["threads_per_worker"]))
        now = time.monotonic()
        if self._threads is None or now - self._threads[0] > 5:
            self._threads = (now, max(1, sum(self.client.nthreads().values())))
        return self._threads[1]

    def submit_many(self, fn: Callable[..., Any], *iterables: list, keys: list[str]) -> list[Any]:
        return self._buffer().submit(fn, iterables, keys)

    def submit_windowed(self, fn: Callable[..., Any], *iterables: list, keys: list[str], window: int,
                        prepare: Callable[[Any], Any] | None = None) -> list[Any]:
        """At most ``window`` of these calls on the scheduler unfinished at a time (``runners.window``);
        a held call's first argument goes through ``prepare`` when it is sent."""
        return self._buffer().submit(fn, iterables, keys, window, prepare)

    def _buffer(self) -> GraphBuffer:
        client = self.client
        held = self._held
        if held is None or held.client is not client:  # the first call, or a client made again
            held = self._held = GraphBuffer(client)
        return held

    def flush(self) -> None:
        """Send the calls held for one graph now (``runners.batching``)."""
        held = self._held
        if held is not None:
            held.flush()

    host = WORKER_HOST

    def attach(self, topic: str, on_event: Callable[[Any], None]) -> list[str]:
        """Workers' events reach ``on_event`` (a topic subscription, once per client); the
        scheduler keeps checkpoints (``runners.ledger``); the dashboard link of a cluster
        this runner started."""
        if in_dask_task():
            return []  # a nested submission: the client that started the outer call listens
        client = self.client
        if (client.id, topic) not in _subscribed:
            _subscribed.add((client.id, topic))
            client.subscribe_topic(topic, on_event)
            memory_kills.watch(client)
        self.install_ledger()
        if self.cluster is None or not has_bokeh():
            return []
        lines = [f"Dask dashboard: {self.cluster.dashboard_link}"]
        page = dashboard_page(self.cluster.dashboard_link)
        if page:
            lines.append(f"daskflow runs on it: {page}")
        return lines

    def reports_ends(self) -> bool:
        return not in_dask_task()

    def run_everywhere(self, fn: Callable[[], Any]) -> dict[str | None, Any]:
        """``fn()`` on every worker of the cluster (``client.run``), in a thread of the worker:
        its event loop keeps serving while ``fn`` waits."""
        return self.client.run(_in_thread, fn, on_error="return")

    def step_aside(self, handle: Any) -> None:
        held = self._held
        if held is not None:
            held.windows.step_aside(handle.key)

    def explain_loss(self, exc: BaseException) -> LossCause | None:
        return memory_kills.explain(exc)

    def install_ledger(self) -> None:
        """Have the scheduler keep checkpoints of calls (``runners.ledger``), once per scheduler."""
        from daskflow.runners import ledger

        self.checkpoints = ledger.install(self.client)

    def keep(self, results: list[tuple[Any, bytes]]) -> None:
        """Have the scheduler keep these finished results ``(handle, bytes)`` while other calls need them."""
        from daskflow.runners import ledger

        ledger.keep(self.client, {h.key: blob for h, blob in results})

    def notes_of(self, handles: list[Any]) -> dict[Any, list[bytes]]:
        if not self.checkpoints or not handles:
            return {}
        from daskflow.runners import ledger

        by_key = ledger.notes_of(self.client, [h.key for h in handles])
        return {h: by_key[h.key] for h in handles if by_key.get(h.key)}

    def cancel(self, handle: Any) -> bool:
        if handle.done():
            return False
        self.flush()
        handle.cancel()
        return True

    def cancel_many(self, handles: list[Any]) -> None:
        live = [h for h in handles if not h.done()]
        if live and self._client is not None:
            self.flush()
            self._client.cancel(live)

    def wait(self, handles: list[Any], timeout: float | None) -> None:
        if all(h.done() for h in handles):
            return
        self.flush()
        seceded = in_dask_task()
        if seceded:
            from distributed import secede

            secede()
        from distributed.client import FuturesCancelledError

        try:
            dask_internals.wait_futures(handles[0].client, handles, timeout)
        except FuturesCancelledError:
            pass  # done too: ``gather`` reports each one's cancellation
        except TimeoutError:
            raise TimeoutError(f"task runs did not finish within {timeout}s") from None
        finally:
            if seceded:
                from distributed import rejoin

                rejoin()

    def gather(self, handles: list[Any]) -> list[Any]:
        ok = [h for h in handles if h.status == "finished"]
        values = dict(zip((h.key for h in ok), self.client.gather(ok, errors="skip"))) if ok else {}
        out: list = []
        for h in handles:
            if h.key in values:
                out.append(values[h.key])
            elif h.status == "cancelled":
                out.append(_cancellation(h))
            else:
                try:
                    out.append(h.exception(timeout=5) or RuntimeError(f"{h.key} was lost"))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
        return out

    def dropped(self, handle: Any) -> bool:
        """Whether the call was cancelled because this client lost its scheduler connection."""
        return handle.status == "cancelled" and getattr(_cancellation(handle), "reason", None) == DISCONNECTED

    def reconnect(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the scheduler connection to be back; True if it is.

        Dask's client reconnects by itself for its connect timeout; past that it closes,
        and a client at an address is made again while the grace period lasts.
        """
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            client = self._client
            if client is not None and client.status == "running":
                return True
            if client is not None and client.status in ("closing", "closed") and self.cluster is None:
                try:  # Dask gave up reconnecting: a new client, while the grace period lasts
                    with self._lock:
                        self._client = self._start()
                    continue
                except Exception:  # not reachable yet (SchedulerUnreachable): keep trying
                    pass
            time.sleep(0.1)  # no event to wait on: the client's reconnect loop polls too
        return False

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            client, cluster, held = self._client, self.cluster, self._held
            self._client = self.cluster = self._held = None
            self.closed = True
        if held is not None:
            held.drop()
        if cluster is not None:
            import logging

            if not wait:  # interrupted: runs still executing are dropped on purpose, silently
                try:
                    client.run(quiet_logs)  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - a worker already gone needs no silencing
                    pass
            # Closing our own cluster drops its results on purpose; don't warn about it. Between
            # the client's close and the scheduler's, a worker's last event can reach the
            # scheduler, which then logs "Closed comm ... while trying to write" at CRITICAL
            # (seen in 1 of 4 successful flows): our own client, closed on purpose.
            quiet = logging.getLogger("distributed.scheduler")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            quiet.addFilter(drop_closed_comm)
            try:
                client.close()  # type: ignore[union-attr]
                cluster.close()
            finally:
                quiet.setLevel(level)
                quiet.removeFilter(drop_closed_comm)


def drop_closed_comm(record: Any) -> bool:
    """A logging filter: False for the scheduler's "Closed comm ... while trying to write" record."""
    return not str(record.msg).startswith("Closed comm")


_with_clusters: weakref.WeakSet[DaskTaskRunner] = weakref.WeakSet()


def message_log() -> dict[str, Any]:
    """Dask's per-connection log of recent messages, sized by ``daskflow.dask-message-log``.

    Dask keeps the last 1,000 messages of each connection for debugging
    (``distributed.admin.low-level-log-length``); each of ours can hold a submission's graph,
    so a long stream of submissions (a ``MapStream``) kept up to 1,000 graphs in the client
    and the scheduler: ~18 bytes per streamed run. Connections opened while starting a runner's
    client and cluster keep ``dask-message-log`` instead (null: Dask's own setting).
    """
    size = config.get("dask-message-log", 16)
    return {} if size is None else {"distributed.admin.low-level-log-length": int(size)}


def _close_at_exit(runner: DaskTaskRunner) -> None:
    """Shut ``runner``'s LocalCluster down at exit, before distributed's own exit hook does.

    A runner shared by sequential flows (``runners.flow_runner``) lives until exit. Hooks
    registered after ``distributed`` was imported run before its ``close_clusters``, which
    would close the cluster with a warning for every result still held.
    """
    if not _with_clusters:
        atexit.register(_shutdown_runners)
    _with_clusters.add(runner)


def _shutdown_runners() -> None:
    for runner in list(_with_clusters):
        try:
            runner.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    _with_clusters.clear()


DISCONNECTED = "scheduler-connection-lost"  # Dask's reason for futures dropped with the connection


def _cancellation(handle: Any) -> BaseException:
    """The exception of a cancelled future, with Dask's reason (``FutureCancelledError.reason``)."""
    try:
        handle.result(timeout=5)  # cancelled: raises at once
    except BaseException as exc:  # noqa: BLE001 - returned, like every outcome of gather
        return exc
    from concurrent.futures import CancelledError

    return CancelledError(f"{handle.key} was cancelled")


async def _in_thread(fn: Callable[[], Any]) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn)


def quiet_logs() -> None:
    """On a worker of a cluster being closed mid-run: no warnings about the runs it drops."""
    import logging

    for name in ("distributed.worker", "distributed.worker.state_machine", "distributed.core", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)


def has_bokeh() -> bool:
    """Whether Dask's dashboard pages can be served (they need bokeh)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def scheduler_routes() -> list[str]:
    """distributed's scheduler HTTP route modules plus daskflow's (``daskflow.dashboard.routes``).

    Modules are named, not imported: the daskflow UI (a face, far above this layer)
    reaches the dashboard of a cluster daskflow starts through configuration alone.
    """
    routes = list(dask.config.get("distributed.scheduler.http.routes", default=[]))
    return routes + [r for r in config.get("dashboard.routes") or () if r not in routes]


def dashboard_page(dashboard_link: str | None) -> str | None:
    """The daskflow page on a Dask dashboard (``daskflow.dashboard.page``), from the dashboard's link."""
    if not dashboard_link or not config.get("dashboard.routes"):
        return None
    import urllib.parse

    parts = urllib.parse.urlsplit(dashboard_link)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, config.get("dashboard.page") or "/", "", ""))
