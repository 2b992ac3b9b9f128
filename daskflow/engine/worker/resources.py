"""What runs cost where they ran: CPU time and the worker process's peak RSS increase.

Measured cheaply, at two resolutions:

- *per chunk*, always: CPU time of the thread that ran the chunk (``time.thread_time``)
  and the worker process's RSS (psutil) as a thread of the process reads it every
  ``SAMPLE_SECONDS`` while chunks run: the peak RSS increase is the highest reading while
  the chunk ran minus the reading at its start (so a chunk shorter than a period shows
  the change between the readings around it, often none). A light run (under
  ``HEAVY_SECONDS``) has only its chunk's figures: measuring it alone would cost more
  than the run.
- *per run*, for runs that took ``HEAVY_SECONDS`` (5 ms) or more of wall time: the
  loops already take an end time per run, so a run is known to be heavy when it ends;
  its CPU time and RSS are then sampled, and its figures are the change since the
  previous sample (the chunk's start, or the end of the previous heavy run). In a chunk
  of heavy runs that is exactly the run; a heavy run that follows light runs of the
  same chunk also carries theirs. A heavy run shorter than the sampling period
  (``FRESH_SECONDS``) takes the sampler's latest RSS reading instead of a fresh one: its
  memory figure is then at the sampler's resolution (the readings that fell while it
  ran), its CPU time still its own.

The figures travel in the envelope (``ChunkResult.resources``) and in the chunk's end
event, as one small record of str keys and lists (Dask events carry nothing else)::

    {"cpu": seconds, "mem": peak RSS increase (bytes), "rss": RSS at the end (bytes),
     "runs": [(index, cpu seconds, peak RSS increase), ...]}   # heavy runs only (tuples: see Meter.heavy)

A run whose worker the nanny killed for memory cannot report: the client records the RSS
the nanny measured last and the worker's memory limit (``runners/memory_kills.py``), as
``{"rss": ..., "killed": limit}`` for a chunk lost whole, or in ``killed_runs``
(``[[index, rss, limit], ...]``) for a chunk taken apart run by run.

Direct calls ``t(x)`` (``engine/client/submit.py``) have no meter: an object per call
would cost more than the budget of a trivial call. They measure the same two figures with
the thread's ``CallWatch`` (``call_started`` / ``call_ended``): CPU time from the thread's
CPU clock, and memory from the sampler's readings, which the sampler also folds into the
peak of every thread's watch; a call that took ``HEAVY_SECONDS`` or more takes fresh
readings of both when it ends, as a heavy run of a chunk does. The tracker folds a burst of
direct calls of one task into one chunk record: its ``cpu`` is their sum, ``mem`` the
largest, and heavy calls are listed in ``runs``; so a light direct call is shown at chunk
resolution, like a light mapped run. That is what lets a light call skip the clock: reading
it is a system call (1-2.5 µs here quiet, ~9 µs on a loaded machine, against ~15 µs for the
whole trivial call), so a light call reads it only when it is the first of a burst (the
previous call of this thread was of another task) or the last reading is older than
``CPU_READ_SECONDS``. A reading covers every call since the one before and is counted on
the call that made it. When the caller pauses (its own code, or the thread waits for the GIL)
after calls that ended unread, the next call's fresh reading covers both: the unread calls
get at most their wall time of it (carried to that call), the pause nothing. So a burst's
sum is the CPU its calls took, but for the unread calls after its last reading (under a
millisecond's worth), which count in the thread's next burst.

CPU time is the running thread's: a body that starts threads or processes of its own
is not counted. RSS is the whole worker process's: on a worker with several threads,
chunks running side by side share the increase.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from time import thread_time as _thread_time
from typing import Any

import dask.config
import psutil

__all__ = ["HEAVY_SECONDS", "CallWatch", "Meter", "call_ended", "call_started", "enabled", "put_run",
           "rss"]

HEAVY_SECONDS = 0.005
SAMPLE_SECONDS = 0.05
#: A heavy run this long or longer takes a fresh RSS reading when it ends; a shorter one the sampler's latest.
FRESH_SECONDS = SAMPLE_SECONDS
_process: list[Any] = [None, 0]  # this process's psutil handle, and the pid it belongs to
_statm: list[int] = [-1, 0]  # a kept descriptor of /proc/self/statm (Linux), and the pid it belongs to
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def enabled() -> bool:
    """``daskflow.resources`` as the process running the chunk sees it (read per chunk: a dict lookup)."""
    try:
        return bool(dask.config.config["daskflow"]["resources"])
    except (KeyError, TypeError):
        return True


def rss() -> int:
    """This process's resident set size, in bytes.

    On Linux one ``pread`` of ``/proc/self/statm`` on a kept descriptor (~4 µs; psutil's
    ``memory_info`` took 20-60 µs, and every run of 5 ms or more takes a reading: 32 one-thread
    workers in one process running 10 ms runs spent 13% of the GIL in it); elsewhere one
    psutil call on a kept handle.
    """
    fd, pid = _statm
    if pid != os.getpid():
        fd = _open_statm()
    if fd >= 0:
        try:
            return int(os.pread(fd, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            _statm[0] = -1
    proc, pid = _process
    if proc is None or pid != os.getpid():
        proc = _process[0] = psutil.Process()
        _process[1] = os.getpid()
    return proc.memory_info().rss


def _open_statm() -> int:
    """Open ``/proc/self/statm`` for this process (-1 where there is none); kept in ``_statm``."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        fd = -1
    _statm[0], _statm[1] = fd, os.getpid()
    return fd


class Meter:
    """The resources of one chunk while it runs: started by ``run_chunk``, read into its envelope.

    Starting and finishing a meter makes no system call for memory: both read the
    sampler's latest reading (at most ``SAMPLE_SECONDS`` old), so a chunk of one 2 µs run
    costs about two ``thread_time`` calls. Heavy runs take fresh readings.
    """

    __slots__ = ("cpu0", "rss0", "peak", "mark_cpu", "mark_rss", "mark_peak", "runs", "last")

    def __init__(self) -> None:
        self.cpu0 = self.mark_cpu = time.thread_time()
        self.rss0 = self.mark_rss = self.peak = self.mark_peak = 0
        self.runs: list[tuple] = []
        self.last = time.time()  # when the previous run ended (for runs measured outside the tight loop)
        self.rss0 = self.mark_rss = self.peak = self.mark_peak = _sampler.start(self)

    def saw(self, value: int) -> None:
        """A reading of the process's RSS."""
        if value > self.peak:
            self.peak = value
        if value > self.mark_peak:
            self.mark_peak = value

    def heavy(self, i: int, took: float = FRESH_SECONDS) -> None:
        """Run ``i`` just ended after ``took`` seconds, ``HEAVY_SECONDS`` or more: its own figures.

        A run of ``FRESH_SECONDS`` or more takes a fresh RSS reading; a shorter one takes the
        sampler's latest (at most a period old, as its start was): the reading is a system call
        that gives the GIL away, and 64 one-thread workers in one process running 10 ms runs,
        one fresh reading after each, waited for the GIL again after every reading (runs took
        ~0.5-3 ms longer; the CPU clock's reading keeps the GIL). The run's record is a tuple:
        the GC stops tracking a tuple of numbers once it has seen it, where a list a run stayed
        tracked in envelopes and Dask's event log and fed full collections (the GIL held).
        """
        cpu = time.thread_time()
        if took >= FRESH_SECONDS:
            now = _sampler.latest = rss()
        else:
            now = _sampler.latest
        self.saw(now)
        self.runs.append((i, cpu - self.mark_cpu, max(self.mark_peak - self.mark_rss, 0)))
        self.mark_cpu, self.mark_rss, self.mark_peak = cpu, now, now

    def ended(self, i: int, now: float) -> None:
        """Run ``i`` ended at ``now`` (the lifecycle loop; the tight loop checks inline)."""
        if now - self.last >= HEAVY_SECONDS:
            self.heavy(i, now - self.last)
        self.last = now

    def finish(self) -> dict:
        """The chunk's record (see the module docstring); the meter stops."""
        _sampler.meters.discard(self)
        now = _sampler.latest
        self.saw(now)
        out: dict[str, Any] = {"cpu": time.thread_time() - self.cpu0, "mem": max(self.peak - self.rss0, 0),
                               "rss": now}
        if self.runs:
            out["runs"] = self.runs
        return out


class _Sampler:
    """One thread per process reading its RSS every ``SAMPLE_SECONDS`` while meters run,
    and for a second after (then it waits for the next chunk, which wakes it)."""

    IDLE_TICKS = 20

    def __init__(self) -> None:
        self.meters: set[Meter] = set()  # set.add/discard and list(set) are atomic under the GIL
        self.watches: weakref.WeakSet[CallWatch] = weakref.WeakSet()  # one per thread that made direct calls
        self.busy = False  # a direct call started since the last reading: stay awake
        self.latest = 0
        self.idle = True
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.pid = 0

    def start(self, meter: Meter) -> int:
        """Register ``meter``; the latest reading (a fresh one when the thread was idle)."""
        self.meters.add(meter)
        if self.idle:  # also after a fork (``_forked``): the child has no sampling thread yet
            self.wake_up(meter)
        return self.latest

    def wake_up(self, meter: Meter | None) -> None:
        """Start sampling now (a thread of this process, started on first use): one fresh reading."""
        with self.lock:
            if self.pid != os.getpid():  # first use, or a forked child: no thread here yet
                self.pid = os.getpid()
                self.meters = {meter} if meter is not None else set()  # a forked child runs none of its parent's chunks
                threading.Thread(target=self._run, name="daskflow-rss", daemon=True).start()
            self.latest = rss()
            self.idle = False
            self.wake.set()

    def _run(self) -> None:
        quiet = 0
        while True:
            if self.idle:
                self.wake.wait()
                self.wake.clear()
                quiet = 0
            time.sleep(SAMPLE_SECONDS)  # the sampling period, not a synchronisation
            value = self.latest = rss()
            meters = list(self.meters)
            for meter in meters:
                meter.saw(value)
            for watch in list(self.watches):
                if value > watch.peak:
                    watch.peak = value
            quiet = 0 if meters or self.busy else quiet + 1
            self.busy = False
            if quiet >= self.IDLE_TICKS and not self.meters:
                self.idle = True  # (a chunk starting right now finds idle False and is sampled)


# -- direct calls ---------------------------------------------------------------------------


class CallWatch:
    """A thread's direct-call marks: where the current call started, the running peak of
    the sampler's readings since (the sampler raises ``peak`` of every watch), and what the
    last call that ended took (``cpu``, ``mem``, ``rss``, ``heavy``: read by the tracker).

    One per thread, reused by every call: a trivial call makes no object for its
    measurement. A direct call inside a direct call (a task calling a task) keeps the
    enclosing call's marks in ``outer`` and gives them back, its peak included, when it ends.
    """

    __slots__ = ("peak", "cpu0", "rss0", "depth", "outer", "cpu", "mem", "rss", "heavy", "cpu_at", "read_at",
                 "last", "unread", "carried", "__weakref__")

    def __init__(self) -> None:
        self.peak = self.rss0 = self.depth = self.mem = self.rss = 0
        self.cpu0 = self.cpu = self.cpu_at = self.read_at = 0.0
        self.unread = 0.0  # wall time of the calls that ended since the last reading, unread
        self.carried = 0.0  # their CPU, when a fresh reading at a start found it: counted by the next call
        self.heavy = False
        self.last: object = None  # the task of the thread's last call: another one starts a burst
        self.outer: list[tuple[float, int, int]] = []  # marks of enclosing calls, innermost last


_watch = threading.local()
_config = dask.config.config  # dask.config.set changes this dict in place


#: A light direct call in a burst reads its thread's CPU clock at most this often (see the
#: module's docstring); a call starts from the last reading when that is at most this old.
CPU_READ_SECONDS = 0.001


def call_started(now: float) -> CallWatch | None:
    """Mark the start of a direct call in this thread (None when ``daskflow.resources`` is
    off): a ``thread_time`` reading unless the last call's end made one within
    ``CPU_READ_SECONDS``, no memory reading (the sampler's latest is the start), the sampler
    kept awake while calls are made. ``now``: the caller's ``time.time()`` at the call's start
    (the caller has read the clock already)."""
    try:
        if not _config["daskflow"]["resources"]:
            return None
    except (KeyError, TypeError):
        pass
    try:
        watch = _watch.it
    except AttributeError:
        watch = _watch.it = CallWatch()
        _sampler.watches.add(watch)
    sampler = _sampler
    sampler.busy = True
    if sampler.idle:  # the first call in a second or more: wake the sampler (one fresh reading)
        sampler.wake_up(None)
    if watch.depth:  # inside another call of this thread: keep its marks
        watch.outer.append((watch.cpu0, watch.rss0, watch.peak))
    watch.depth += 1
    watch.peak = watch.rss0 = sampler.latest
    if now - watch.read_at > CPU_READ_SECONDS:  # else: the reading made at most that long ago
        cpu = _thread_time()
        if watch.unread:  # calls ended unread, then the caller paused: their share, not the pause's
            watch.carried += min(cpu - watch.cpu_at, watch.unread)
            watch.unread = 0.0
        watch.cpu_at, watch.read_at = cpu, now
    watch.cpu0 = watch.cpu_at
    return watch


def call_ended(watch: CallWatch, now: float, wall: float, task: object = None) -> None:
    """Set what the call ``call_started`` marked took on ``watch`` (``cpu``, ``mem``, ``rss``,
    ``heavy``); ``now``: the caller's ``time.time()`` at its end; ``wall``: its wall time (a
    heavy call, ``HEAVY_SECONDS`` or more, takes fresh readings, as a heavy run of a chunk
    does); ``task``: what was called (a light call of the task called last, within
    ``CPU_READ_SECONDS`` of the last reading, reads no clock: ``cpu`` 0, counted by the next
    reading)."""
    if wall < HEAVY_SECONDS and task is watch.last and now - watch.read_at <= CPU_READ_SECONDS and watch.depth == 1:
        # a light call in a burst, outside any other (most calls of a loop): what the general
        # path below does for it, in fewer steps
        watch.heavy = False
        watch.cpu = watch.carried
        watch.unread += wall
        watch.carried = 0.0
        grew = watch.peak - watch.rss0
        watch.mem = grew if grew > 0 else 0
        watch.rss = _sampler.latest
        watch.depth = 0
        return
    heavy = watch.heavy = wall >= HEAVY_SECONDS
    if heavy or task is not watch.last or now - watch.read_at > CPU_READ_SECONDS or watch.depth > 1:
        cpu = _thread_time()
        watch.cpu, watch.cpu_at, watch.read_at = cpu - watch.cpu0 + watch.carried, cpu, now
        watch.unread = 0.0
    else:
        watch.cpu = watch.carried
        watch.unread += wall
    watch.carried = 0.0
    watch.last = task
    if heavy:
        now = _sampler.latest = rss()
        if now > watch.peak:
            watch.peak = now
    else:
        now = _sampler.latest
    peak = watch.peak
    grew = peak - watch.rss0
    watch.mem = grew if grew > 0 else 0
    watch.rss = now
    watch.depth -= 1
    if watch.depth:  # back in the enclosing call: its marks, and the highest peak of both
        watch.cpu0, watch.rss0, before = watch.outer.pop()
        watch.peak = before if before > peak else peak


_sampler = _Sampler()


def _forked() -> None:
    _sampler.idle = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def put_run(chunk: dict | None, j: int, one: dict) -> dict:
    """Fold the record of a one-run envelope (run ``j`` of a chunk taken apart run by run,
    ``engine/client/split.py``) into its chunk's record: a run alone is measured alone, and
    a run whose worker was killed for memory keeps the RSS sampled last (``killed_runs``)."""
    out = chunk if chunk is not None else {"cpu": 0.0, "mem": 0, "rss": None}
    if one.get("killed"):
        out.setdefault("killed_runs", []).append([j, one.get("rss"), one["killed"]])
        return out
    cpu, mem = one.get("cpu", 0.0), one.get("mem", 0)
    out["cpu"] += cpu
    out["mem"] = max(out["mem"], mem)
    out["rss"] = one.get("rss")
    out.setdefault("runs", []).append([j, cpu, mem])
    return out
