"""Size and age limits: the local store and each result storage keep under ``daskflow.cache.max-bytes``;
the local store keeps no entry unused for longer than ``daskflow.cache.keep``.

The limit (null: unbounded) applies to the local LMDB store and, separately, to every
result storage. When a write leaves a store over it, the entries *least recently used*
(last read, else written) are deleted until the store is under ``LOW_WATER`` (90%) of
the limit: eviction then runs once per tenth of the limit written, not after every write.

Read times are remembered without a write on the read path. A hit appends its key to an
in-memory list (``ReadStamps``); the list is written with the batch's time in one go: in
the next write's own transaction, or in a write of its own once ``READ_BATCH`` keys are
pending (``STORAGE_READ_BATCH`` for a storage, so that a map's lookup is stamped before a
short-lived process exits) or ``READ_SECONDS`` have passed (checked at the next read), and
at exit (a storage that went away by then costs its bounded timeout). Stamps
are therefore coarse: a process killed before its flush loses its last reads, and those
entries look as old as their previous use. That is the price of a read path that never
writes per hit; it can only make an entry go a little early, never corrupt anything.

Age: an entry neither read nor written for ``daskflow.cache.keep`` (default 30 days) is
deleted by the local store's writers, as the run store's writers apply ``runs.keep``: at a
process's first write, then every ``daskflow.cache.prune-every`` (1 h). The pass is
store-wide, not per process: a stamp file (``{home}/.cache-keep.stamp``) records when any
process last made it, so a LocalCluster's workers starting together scan the store once,
and one process at a time (the eviction lock). Its cost is one listing of the store (headers
only). Why a default at all: a cache keyed by ``TASK_SOURCE`` or inputs leaves every entry of
an edited task unreachable forever, so a store that is only bounded by expiry grows with
each edit; an entry still in use is read, and a read makes it young again. Prefect keeps
results until they expire: ``keep: null`` does that. Result storages are pruned by age only
on demand (``daskflow cache prune --storage --older-than``) or by the bucket's lifecycle rules.

Readers are never hurt by an eviction. LMDB readers see a snapshot: a value being read
stays whole until the read transaction ends. Object stores delete whole objects, and a
file being read stays readable after it is unlinked: a reader gets a complete value or
a miss (and a miss runs the task again).

In a result storage the sizes and write times come from one listing (``fs.find``), and
read times from small read logs the readers write beside the records
(``{url}/_daskflow/reads/...``, one object per flush). An eviction folds the logs it read
into one. Anything in the listing that is not a record (foreign files, temporary names,
the logs) is ignored by ``ls``, ``prune`` and eviction. A process checks the storage's size
when it first writes there and again after each tenth of the limit it wrote; concurrent
writers in other processes are seen at their next check, so a storage can overshoot the
limit by what the writers wrote since their last check.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgpack

from daskflow import config

LOW_WATER = 0.9  # an eviction frees down to this fraction of the limit
READ_BATCH = 4096  # pending read stamps written at once (local store)
STORAGE_READ_BATCH = 256  # ... in a storage: one small object per 256 reads, cheap beside 256 reads
READ_SECONDS = 30.0  # ... or once the oldest pending one is this old (checked at the next read)
ENTRY_OVERHEAD = 64  # bytes an LMDB entry costs beyond its key and record (node, stamp)
LOGS = "_daskflow/reads"  # read logs of a result storage, under its URL
FOLD_LOGS = 32  # the local store folds its read logs into per-key stamps once it holds this many
_STAMP = struct.Struct("<d")
_RECORD = re.compile(r"v\d+/.+/[0-9a-f]{32}")


def max_bytes() -> int | None:
    """``daskflow.cache.max-bytes`` in bytes (``"10GiB"`` and numbers accepted), None: unbounded."""
    value = config.get("cache.max-bytes")
    if value in (None, "", 0, "0"):
        return None
    from daskflow.config import parse_bytes

    try:
        limit = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise ValueError(f"daskflow.cache.max-bytes: {value!r} is not a size (e.g. 10GiB, 500MB, 1000000)") from None
    if limit < 0:
        raise ValueError(f"daskflow.cache.max-bytes: {value!r} must not be negative")
    return limit


def keep_seconds() -> float | None:
    """``daskflow.cache.keep`` in seconds; None when entries are kept until they expire or are evicted."""
    value = config.get("cache.keep")
    if value in (None, "", 0, "0"):
        return None
    try:
        seconds = float(config.parse_timedelta(value))
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"daskflow.cache.keep: {value!r} is not a duration (e.g. 30d, 12h)") from None
    return seconds if seconds > 0 else None


def prune_every_seconds() -> float:
    """``daskflow.cache.prune-every`` in seconds (how often writers apply ``cache.keep``)."""
    return float(config.parse_timedelta(config.get("cache.prune-every", "1h")) or 0)


def keep_due(stamp: pathlib.Path, every: float, now: float) -> bool:
    """Whether no process applied ``cache.keep`` to the store within ``every`` seconds (its stamp file's time)."""
    try:
        return now - stamp.stat().st_mtime >= every
    except OSError:  # never applied (or unreadable: then trying costs a scan, no harm)
        return True


def touch(stamp: pathlib.Path, now: float) -> None:
    """Record that ``cache.keep`` was applied at ``now`` (a hint: a lost stamp costs one more scan)."""
    try:
        stamp.touch(mode=0o600)
        os.utime(stamp, (now, now))
    except OSError:
        pass


def unused_since(entries: list[Entry], cutoff: float) -> list[bytes]:
    """Keys of the entries neither read nor written since ``cutoff`` (epoch seconds)."""
    return [e.key for e in entries if e.used < cutoff]


@dataclass(slots=True)
class Entry:
    """One record as listings and eviction see it (a record's header is not read for this)."""

    key: bytes
    size: int
    written: float | None
    last_read: float | None
    task_key: str | None = None  # from the record's header ("?": damaged), when the listing read it
    expires: float | None = None
    serializer: str | None = None
    pack: str | None = None  # in a result storage: the pack holding it (None: an object of its own)

    @property
    def used(self) -> float:
        """When the entry was last used: read, else written (0: unknown)."""
        return max(self.written or 0.0, self.last_read or 0.0)


def apply_keep(home: pathlib.Path, entries: Callable[[], list[Entry]], delete: Callable[[list[bytes]], int]) -> int:
    """``daskflow.cache.keep`` for the store at ``home`` (its ``entries`` and ``delete``): the
    entries unused for that long go, if no process of the host did it within
    ``cache.prune-every`` (a stamp file) and none is evicting right now; returns how many."""
    every, keep = prune_every_seconds(), keep_seconds()
    now, stamp = time.time(), home / ".cache-keep.stamp"
    if keep is None or not keep_due(stamp, every, now):
        return 0
    with evicting(home / ".cache-evict.lock") as mine:
        if not mine:  # another process prunes or evicts right now
            return 0
        touch(stamp, now)
        return delete(unused_since(entries(), now - keep))


def victims(entries: list[Entry], used: float, target: float) -> list[Entry]:
    """The least recently used entries to delete so that ``used`` bytes shrink to ``target``.

    ``used`` is what the store occupies (for LMDB, pages: more than the records add up to);
    the same fraction of the entries' own bytes goes, oldest first.
    """
    if used <= target or not entries:
        return []
    sizes = [e.size + len(e.key) + ENTRY_OVERHEAD for e in entries]
    excess = sum(sizes) * (used - target) / used
    out: list[Entry] = []
    freed = 0
    for i in sorted(range(len(entries)), key=lambda i: entries[i].used):
        if freed >= excess:
            break
        out.append(entries[i])
        freed += sizes[i]
    return out


class ReadStamps:
    """Keys read since the last flush (one list per store; appending is the whole read-path cost)."""

    def __init__(self, batch: int = READ_BATCH) -> None:
        self.batch = batch
        self.keys: list[bytes] = []
        self.since = time.monotonic()
        self.lock = threading.Lock()

    def note(self, keys: list[bytes]) -> bool:
        """Remember reads; True when the pending stamps are due to be written."""
        if not keys:
            return False
        pending = self.keys
        if not pending:
            self.since = time.monotonic()
        pending.extend(keys)
        return len(pending) >= self.batch or time.monotonic() - self.since >= READ_SECONDS

    def take(self) -> list[bytes]:
        """The pending keys (repeats included: they cost less than making them unique), forgotten here."""
        with self.lock:
            keys, self.keys = self.keys, []
        return keys


@contextlib.contextmanager
def evicting(lock_file: pathlib.Path) -> Iterator[bool]:
    """Whether this process may evict now: one evictor per store at a time, others skip."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def record_name(relative: str) -> bytes | None:
    """The key of a storage path relative to its URL, or None for anything that is not a record."""
    if not _RECORD.fullmatch(relative) or relative.startswith("_daskflow/"):
        return None
    return relative[:-32].encode() + bytes.fromhex(relative[-32:])


def info_time(info: dict) -> float | None:
    """The modification time fsspec reports for a file (its backends name it differently)."""
    for name in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


# -- read stamps in the local LMDB store ---------------------------------------------------
# A flush writes ONE log value: ``(time, [keys])`` packed with msgpack (a C call: ~0.05 µs a
# key), under a key of its own in the ``logs`` database; never a put per key. Logs are folded
# into per-key stamps (``stamps`` database: key -> f64) by each eviction, and once
# ``FOLD_LOGS`` of them pile up: the per-key cost is paid once per many flushes.

_log_ids = iter(range(1 << 62))


def write_log(txn: Any, logs: Any, keys: list[bytes], when: float) -> None:
    """Record that ``keys`` were read at ``when`` (one value)."""
    name = b"%020d-%d-%d" % (time.time_ns(), os.getpid(), next(_log_ids))
    txn.put(name, msgpack.packb((when, keys)), db=logs)


def last_reads(txn: Any, stamps: Any, logs: Any) -> dict[bytes, float]:
    """``{key: last read time}`` from the folded stamps and the logs not folded yet."""
    last = {bytes(k): _STAMP.unpack(v)[0] for k, v in txn.cursor(db=stamps).iternext()}
    for _, blob in txn.cursor(db=logs).iternext():
        when, keys = msgpack.unpackb(blob)
        get = last.get
        for key in keys:
            if get(key, 0.0) < when:
                last[key] = when
    return last


def fold(txn: Any, entries: Any, stamps: Any, logs: Any) -> None:
    """Fold the logs into per-key stamps of entries that still exist, and drop the logs."""
    if txn.stat(logs)["entries"] == 0:
        return
    newest: dict[bytes, float] = {}
    for _, blob in txn.cursor(db=logs).iternext():
        when, keys = msgpack.unpackb(blob)
        for key in keys:
            if newest.get(key, 0.0) < when:
                newest[key] = when
    txn.drop(logs, delete=False)
    for key in sorted(newest):
        if txn.get(key, db=entries) is not None:
            txn.put(key, _STAMP.pack(newest[key]), db=stamps)
