"""Where concurrency limits are defined: ``$DASKFLOW_HOME/limits.json``.

``daskflow limits set db 5`` writes here (atomically, under a lock, 0600); the engine
reads it when a run needs a limit (a ``stat`` per read, parsed again only when the file
changed), so a limit raised while runs wait applies to them at their next try. The
*slots* are not here: they are leases on the Dask scheduler (``runners.slots``). A worker
reads its own home (the client's, for an embedded LocalCluster); one whose home has no
limits file (another host) gets the definitions from the scheduler, which remembers the
last one any holder or ``daskflow limits set`` (with ``DASKFLOW_SCHEDULER_ADDRESS``) gave it.

Store layer: no engine, no distributed.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
from typing import NamedTuple

__all__ = ["FILENAME", "Limit", "check_name", "definitions", "remove_limit", "set_limit"]

FILENAME = "limits.json"
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_cache: dict[str, tuple[tuple[int, int, int], dict[str, Limit]]] = {}


class Limit(NamedTuple):
    """A limit: at most ``limit`` slots in use; with ``per_second``, a rate limit whose slots decay."""

    name: str
    limit: int
    per_second: float | None = None


def check_name(name: object, owner: str = "limit") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{owner}: a limit name is 1-200 letters, digits or _.:- ; got {name!r}")
    return name


def definitions(home: str | os.PathLike) -> dict[str, Limit]:
    """The limits defined under ``home`` ({} when none; re-read only when the file changed)."""
    path = pathlib.Path(home) / FILENAME
    try:
        info = path.stat()
    except OSError:
        return {}
    stamp = (info.st_ino, info.st_mtime_ns, info.st_size)  # each write is a new file: a new inode
    hit = _cache.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        raw = json.loads(path.read_text() or "{}")
        limits = {name: Limit(name, int(v["limit"]), v.get("per_second")) for name, v in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        limits = {}  # a damaged file defines nothing; `daskflow limits set` rewrites it
    _cache[str(path)] = (stamp, limits)
    return limits


def set_limit(home: str | os.PathLike, name: str, limit: int, per_second: float | None = None) -> Limit:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit {name!r}: the number of slots must be an int >= 0, got {limit!r}")
    if per_second is not None and not per_second > 0:
        raise ValueError(f"limit {name!r}: per_second must be > 0, got {per_second!r}")
    entry = Limit(check_name(name), limit, per_second)
    _update(home, lambda table: table.__setitem__(name, {"limit": limit, "per_second": per_second}))
    return entry


def remove_limit(home: str | os.PathLike, name: str) -> None:
    """Remove ``name``; ``KeyError`` if it is not defined."""
    def drop(table: dict) -> None:
        if name not in table:
            raise KeyError(name)
        del table[name]

    _update(home, drop)


def _update(home: str | os.PathLike, change) -> None:  # noqa: ANN001 - a callable that edits the table
    folder = pathlib.Path(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / FILENAME
    lock_fd = os.open(folder / (FILENAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            table = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            table = {}
        change(table)
        tmp = folder / f".{FILENAME}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        os.close(lock_fd)
