"""`daskflow cache ls | stats | clear | prune`: inspect and maintain the result cache.

These commands read the LMDB store directly (headers only, parsed from views of the
map: no value is copied or unpickled) and never import distributed. ``-o json`` prints machine-readable output;
its timestamps are epoch seconds (UTC floats), as in ``daskflow runs``. ``ls`` and ``stats`` open the
store read-only (LMDB ``readonly``), never create a cache (none yet: an empty listing, and a note on
stderr) and never repair one (a damaged file is a one-line error, exit 1; the next run moves it aside).
``ls --limit N --sort read|written|size|task`` picks N rows without sorting them all, and a long
listing is printed as plain columns (rich needs minutes for 10^5 rows). ``clear`` asks first on a
terminal and needs ``--yes`` elsewhere. ``prune`` deletes expired entries, entries unused for
``--older-than`` (default ``daskflow.cache.keep``), and least recently read ones beyond ``--max-bytes`` (see ``cache/bounds.py``).
``--storage [URL]`` lists or prunes a result storage instead (its foreign files are ignored), and
makes ``clear`` clear that storage as well as the local store."""

from __future__ import annotations

import contextlib
import datetime
import functools
import heapq
import itertools
import json
import time
from typing import Any, Iterator

import click

output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")


def _store() -> Any:
    """The cache to change (created if missing; a damaged one is moved aside, with a warning)."""
    from daskflow import config
    from daskflow.cache.store import LMDBResultStore, get_store

    store = get_store(config.home())
    if not isinstance(store, LMDBResultStore):
        raise click.ClickException(f"the cache under {store.home} cannot be opened (see the warning above)")
    return store


def _existing() -> Any:
    """The cache to read, opened read-only, or None (with a note on stderr) when there is none yet."""
    from daskflow import config
    from daskflow.cache.store import open_existing

    home = config.home_path()
    store = open_existing(home)
    if store is None:
        click.echo(f"no cache under {home}", err=True)
    return store


@contextlib.contextmanager
def _reading() -> Iterator[Any]:
    """The cache to read (or None), closed afterwards when it was opened read-only here."""
    from daskflow.cache.store import close_reader

    store = _existing()
    try:
        yield store
    finally:
        if store is not None:
            close_reader(store)


def _entries(task: str | None = None, store: Any = None) -> list:
    """The local store's entries (``bounds.Entry``), of one task (name or task key) if given."""
    if store is None:
        with _reading() as store:
            return _entries(task, store) if store is not None else []
    entries = store.entries()
    if task is not None:
        entries = [e for e in entries if task in (e.task_key, e.task_key.rsplit("-", 1)[0])]
    return entries


def _storage_entries(storage: Any, task: str | None = None) -> list:
    """A result storage's records (foreign files ignored; expiry is not read there)."""
    from daskflow.cache.keys import display

    entries = storage.entries()[0]
    for e in entries:
        e.task_key = display(e.key).split("/", 1)[1].rsplit("/", 1)[0]
    if task is not None:
        entries = [e for e in entries if task in (e.task_key, e.task_key.rsplit("-", 1)[0])]
    return entries


def _rows(entries: list) -> list[dict]:
    """The printed form of entries (``-o json`` shape)."""
    from daskflow.cache.keys import display

    now = time.time()
    return [{"key": display(e.key), "task_key": e.task_key, "created": e.written, "last_read": e.last_read,
             "expires": e.expires, "expired": e.expires is not None and e.expires <= now,
             "serializer": e.serializer, "bytes": e.size} for e in entries]


def _open_storage(url: str) -> Any:
    """The result storage named on the command line ("" or "-": the configured one)."""
    from daskflow.cache.storage import open_storage
    from daskflow.cache.storage_spec import StorageSpec

    spec = StorageSpec.from_config(url if url not in ("", "-") else None)
    if spec is None:
        raise click.UsageError("--storage: no URL given and daskflow.results.storage is not set")
    return open_storage(spec)


_SORTS = {  # (key, newest or largest first)
    "key": (lambda e: e.key, False),
    "read": (lambda e: e.last_read or 0.0, True),
    "written": (lambda e: e.written or 0.0, True),
    "size": (lambda e: e.size, True),
    "task": (lambda e: (e.task_key, e.key), False),
}


def _sorted(entries: list, sort: str, limit: int | None) -> list:
    """``limit`` entries in ``sort`` order (a partial sort when a limit is given)."""
    key, reverse = _SORTS[sort]
    if limit is None or limit >= len(entries):
        return sorted(entries, key=key, reverse=reverse)
    pick = heapq.nlargest if reverse else heapq.nsmallest
    return pick(limit, entries, key=key)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso_second(int(ts // 1))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    """Entries written by one run share their second: 10^5 rows format a few hundred times."""
    return datetime.datetime.fromtimestamp(second, datetime.timezone.utc).isoformat(timespec="seconds")


_RICH_ROWS = 500  # a longer listing is printed as plain columns: rich takes minutes for 10^5 rows


def _json_list(rows: list[dict]) -> str:
    """A JSON list: indented when short; in one C-encoded call when long (``indent`` takes the
    pure-Python encoder: seconds for 10^5 rows)."""
    return json.dumps(rows, indent=2) if len(rows) <= _RICH_ROWS else json.dumps(rows)


_TIMES = ("created", "expires", "last_read")
_ENTRY_FIELDS = {"task_key": "task_key", "created": "written", "last_read": "last_read", "expires": "expires",
                 "bytes": "size"}  # a listed column -> its Entry attribute


def _cells(values: list, column: str) -> list[str]:
    """One column's printed cells (a column at a time: 80,000 rows in a tenth of a second)."""
    if column in _TIMES:
        return ["" if v is None else _iso(v) for v in values]
    return ["" if v is None else str(v) for v in values]


def _table(rows: list[dict], columns: list[str]) -> None:
    _print_columns(columns, [_cells([r.get(c) for r in rows], c) for c in columns])


def _entries_table(entries: list, columns: list[str]) -> None:
    """``_table`` of ``_rows(entries)``, read from the entries column by column (no row dicts)."""
    from daskflow.cache.keys import display

    cells = [_cells([display(e.key) for e in entries] if c == "key" else
                    [getattr(e, _ENTRY_FIELDS[c]) for e in entries], c) for c in columns]
    _print_columns(columns, cells)


def _print_columns(columns: list[str], cells: list[list[str]]) -> None:
    """A rich table; plain columns beyond ``_RICH_ROWS`` rows (the same cells, left-aligned)."""
    rows = len(cells[0]) if cells else 0
    if rows > _RICH_ROWS:
        padded = [list(map(str.ljust, [c, *column], itertools.repeat(max(len(c), max(map(len, column), default=0)))))
                  for c, column in zip(columns[:-1], cells[:-1])]  # the last column is not padded ...
        lines = map("  ".join, zip(*padded, [columns[-1], *cells[-1]]))
        if any(not v or v[-1].isspace() for v in cells[-1]):  # ... so only a blank end needs stripping
            lines = map(str.rstrip, lines)
        text = "\n".join(lines)
        click.echo(text, color=True if "\x1b" not in text else None)  # nothing to strip: skip click's regex pass
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in zip(*cells):
        table.add_row(*row)
    Console().print(table)


@click.group()
def cache() -> None:
    """Inspect and maintain the result cache ($DASKFLOW_HOME/cache)."""


storage_option = click.option(
    "--storage", "storage_url", default=None, is_flag=False, flag_value="", metavar="[URL]",
    help="The result storage at URL (alone: the configured daskflow.results.storage) instead of the local store.")


@cache.command("ls")
@click.option("--task", "task_name", default=None, help="Only entries of this task (name or task key).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many entries (default: all; 0: all).")
@click.option("--sort", type=click.Choice(list(_SORTS)), default="key", show_default=True,
              help="Order: read and written newest first, size largest first, task and key ascending.")
@storage_option
@output_option
def ls(task_name: str | None, limit: int | None, sort: str, storage_url: str | None, output: str) -> None:
    """List cache entries: key, task, created, last read, expires, size.

    Example: daskflow cache ls --sort read --limit 20
    """
    if storage_url is not None:
        entries = _storage_entries(_open_storage(storage_url), task_name)
        columns = ["key", "task_key", "created", "last_read", "bytes"]
    else:
        entries = _entries(task_name)
        columns = ["key", "task_key", "created", "last_read", "expires", "bytes"]
    total = len(entries)
    picked = _sorted(entries, sort, limit or None)
    if output == "json":
        click.echo(_json_list(_rows(picked)))
        return
    _entries_table(picked, columns)
    if len(picked) < total:
        click.echo(f"{len(picked)} of {total} entries (--limit)", err=True)


@cache.command()
@output_option
def stats(output: str) -> None:
    """Entries, expired entries, bytes per task and on disk."""
    with _reading() as store:
        entries = _entries(store=store) if store is not None else []
    from daskflow import config

    path = store.path if store is not None else config.home_path() / "cache"
    data = path / "data.mdb"
    tasks: dict[str, dict[str, int]] = {}
    now = time.time()
    for e in entries:
        t = tasks.setdefault(e.task_key, {"entries": 0, "bytes": 0})
        t["entries"] += 1
        t["bytes"] += e.size
    info = {"path": str(path), "entries": len(entries),
            "expired": sum(e.expires is not None and e.expires <= now for e in entries),
            "bytes": sum(e.size for e in entries), "file_bytes": data.stat().st_size if data.exists() else 0,
            "tasks": tasks}
    if output == "json":
        click.echo(json.dumps(info, indent=2))
        return
    for k in ("path", "entries", "expired", "bytes", "file_bytes"):
        click.echo(f"{k:>10}: {info[k]}")
    _table([{"task_key": k, **v} for k, v in sorted(tasks.items())], ["task_key", "entries", "bytes"])


@cache.command()
@click.option("--task", "task_name", default=None, help="Only entries of this task (name or task key).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@click.option("--storage", "storage_url", default=None, is_flag=False, flag_value="", metavar="[URL]",
              help="Also clear the result storage at URL (alone: the configured daskflow.results.storage): "
                   "for everyone who shares it.")
@output_option
def clear(task_name: str | None, yes: bool, storage_url: str | None, output: str) -> None:
    """Delete cache entries (all, or one task's); asks first unless --yes. With --storage, the
    result storage's records too (the local store holds copies of them, so both go).

    Example: daskflow cache clear --task load --yes
    """
    import sys

    storage = _open_storage(storage_url) if storage_url is not None else None
    what = f"the cache entries of task {task_name!r}" if task_name else "every cache entry"
    if storage is not None:
        what += f" (also in the result storage {storage.spec.url}, shared by everyone using it)"
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"this deletes {what}: pass --yes to confirm (stdin is not a terminal)")
        click.confirm(f"Delete {what}?", abort=True)
    store = _store()
    if task_name is None:
        removed = store.clear()
    else:
        removed = store.delete([e.key for e in _entries(task_name, store)])
    if storage is None:
        _report({"removed": removed}, output, f"removed {removed} entries")
        _storage_note()
        return
    if task_name is None:
        stored = storage.clear()
    else:
        stored = storage.delete([e.key for e in _storage_entries(storage, task_name)])
    _report({"removed": removed, "removed_from_storage": stored}, output,
            f"removed {removed} entries, and {stored} from {storage.spec.url}")


def _storage_note() -> None:
    """Say so when a configured result storage still holds records (they would come back)."""
    from daskflow import config

    url = config.get("results.storage")
    if url:
        click.echo(f"note: the result storage {url} was not cleared (its records are read again on a miss "
                   "here): add --storage to clear it", err=True)


@cache.command()
@click.option("--max-bytes", "max_bytes", default=None, metavar="SIZE",
              help="Also delete the least recently read entries until the cache holds at most SIZE "
                   "(e.g. 5GiB; default: daskflow.cache.max-bytes, if set).")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Also delete entries neither read nor written for AGE (e.g. 30d, 12h; local store "
                   "default: daskflow.cache.keep, if set).")
@storage_option
@output_option
def prune(max_bytes: str | None, older_than: str | None, storage_url: str | None, output: str) -> None:
    """Delete expired entries (and old ones, and enough least recently read ones to fit a size);
    reclaim their space. Run it while no pipeline runs.

    Example: daskflow cache prune --older-than 30d --max-bytes 5GiB
    """
    from daskflow.cache import bounds

    limit = _size(max_bytes) if max_bytes is not None else bounds.max_bytes()
    age = _age(older_than) if older_than is not None else None
    if storage_url is not None:  # a shared storage is pruned by age only when asked (--older-than)
        cutoff = time.time() - age if age is not None else None
        storage = _open_storage(storage_url)
        old = [e.key for e in _storage_entries(storage) if cutoff is not None and e.used < cutoff]
        removed = storage.delete(old)
        evicted = storage.evict(limit, target=limit) if limit is not None else 0
        _report({"removed": removed, "evicted": evicted}, output,
                f"removed {removed} old entries, evicted {evicted} least recently read from {storage.spec.url}")
        return
    store = _store()
    now = time.time()
    age = age if age is not None else bounds.keep_seconds()
    cutoff = now - age if age is not None else None
    gone = [e.key for e in _entries(store=store)
            if (e.expires is not None and e.expires <= now) or (cutoff is not None and e.used < cutoff)]
    removed = store.delete(gone)
    evicted = store.evict(limit, target=limit) if limit is not None else 0
    before, after = store.compact()
    _report({"removed": removed, "evicted": evicted, "bytes_before": before, "bytes_after": after}, output,
            f"removed {removed} expired or old entries, evicted {evicted} least recently read; "
            f"{before} -> {after} bytes on disk")


def _size(text: str) -> int:
    from daskflow.config import parse_bytes

    try:
        return parse_bytes(text)
    except (ValueError, TypeError):
        raise click.BadParameter(f"{text!r} is not a size (e.g. 5GiB, 500MB)", param_hint="--max-bytes") from None


def _age(text: str) -> float:
    from daskflow.config import parse_timedelta

    try:
        return float(parse_timedelta(text, default="seconds"))
    except (ValueError, TypeError, KeyError):
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 30d, 12h, 90s)", param_hint="--older-than") from None


def _report(info: dict, output: str, text: str) -> None:
    click.echo(json.dumps(info) if output == "json" else text)


COMMANDS: list[click.Command] = [cache]
