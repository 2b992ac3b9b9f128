"""`daskflow cache ls | stats | clear | prune`: inspect and maintain the result cache.

These commands read the LMDB store directly (headers only, parsed from views of the
map: no value is copied or unpickled) and never import distributed. ``-o json`` prints machine-readable output;
its timestamps are epoch seconds (UTC floats), as in ``daskflow runs``. ``ls`` and ``stats`` never
create a cache (none yet: an empty listing, and a note on stderr) and never repair one (a damaged
file is a one-line error, exit 1; the next run moves it aside). ``clear`` asks first on a terminal
and needs ``--yes`` elsewhere.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

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
    """The cache to read, or None (with a note on stderr) when there is none yet."""
    from daskflow import config
    from daskflow.cache.store import open_existing

    home = config.home_path()
    store = open_existing(home)
    if store is None:
        click.echo(f"no cache under {home}", err=True)
    return store


def _entries(task: str | None = None, store: Any = None) -> list[dict]:
    from daskflow.cache.keys import display

    store = store or _existing()
    if store is None:
        return []
    now = time.time()
    out = []
    for key, header, size in store.headers():
        header = header or {"t": "?", "c": None, "e": None, "s": "damaged"}
        task_key = header.get("t") or "?"
        if task is not None and task not in (task_key, task_key.rsplit("-", 1)[0]):
            continue
        expires = header.get("e")
        out.append({"key": display(key), "task_key": task_key, "created": header.get("c"),
                    "expires": expires, "expired": expires is not None and expires <= now,
                    "serializer": header.get("s"), "bytes": size, "_raw": key})
    return out


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


def _public(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _table(rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else _iso(r[c]) if c in ("created", "expires") else str(r.get(c))
                        for c in columns))
    Console().print(table)


@click.group()
def cache() -> None:
    """Inspect and maintain the result cache ($DASKFLOW_HOME/cache)."""


@cache.command("ls")
@click.option("--task", "task_name", default=None, help="Only entries of this task (name or task key).")
@output_option
def ls(task_name: str | None, output: str) -> None:
    """List cache entries: key, task, created, expires, size."""
    rows = _public(_entries(task_name))
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        _table(rows, ["key", "task_key", "created", "expires", "bytes"])


@cache.command()
@output_option
def stats(output: str) -> None:
    """Entries, expired entries, bytes per task and on disk."""
    store = _existing()
    rows = _entries(store=store) if store is not None else []
    from daskflow import config

    path = store.path if store is not None else config.home_path() / "cache"
    data = path / "data.mdb"
    tasks: dict[str, dict[str, int]] = {}
    for r in rows:
        t = tasks.setdefault(r["task_key"], {"entries": 0, "bytes": 0})
        t["entries"] += 1
        t["bytes"] += r["bytes"]
    info = {"path": str(path), "entries": len(rows), "expired": sum(r["expired"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows), "file_bytes": data.stat().st_size if data.exists() else 0,
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
@output_option
def clear(task_name: str | None, yes: bool, output: str) -> None:
    """Delete cache entries (all, or one task's); asks first unless --yes.

    Example: daskflow cache clear --task load --yes
    """
    import sys

    what = f"the cache entries of task {task_name!r}" if task_name else "every cache entry"
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"this deletes {what}: pass --yes to confirm (stdin is not a terminal)")
        click.confirm(f"Delete {what}?", abort=True)
    store = _store()
    if task_name is None:
        removed = store.clear()
    else:
        removed = store.delete([r["_raw"] for r in _entries(task_name, store)])
    _report({"removed": removed}, output, f"removed {removed} entries")


@cache.command()
@output_option
def prune(output: str) -> None:
    """Delete expired entries and reclaim their space (run it while no pipeline runs)."""
    store = _store()
    removed = store.delete([r["_raw"] for r in _entries(store=store) if r["expired"]])
    before, after = store.compact()
    _report({"removed": removed, "bytes_before": before, "bytes_after": after}, output,
            f"removed {removed} expired entries; {before} -> {after} bytes on disk")


def _report(info: dict, output: str, text: str) -> None:
    click.echo(json.dumps(info) if output == "json" else text)


COMMANDS: list[click.Command] = [cache]
