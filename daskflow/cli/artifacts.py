"""`daskflow artifacts ls` and `daskflow artifacts show KEY|ID`: read the run store; never import distributed.

``ls`` lists the current (newest) version of every artifact key, with how many versions
it has; ``show`` prints every version of a key (or the artifact with that id), newest
first. ``-o json`` gives the records: ``{id, key, type, description, data, created,
task_run_id, flow_run_id, version}`` (``versions`` too in ``ls``).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from daskflow.cli.cache import output_option

__all__ = ["COMMANDS"]


def open_store() -> Any:
    """The run store, never created here (None, and a note on stderr, when there is none)."""
    from daskflow.store.runs import open_run_store

    try:
        return open_run_store(create=False)
    except LookupError as exc:
        click.echo(str(exc.args[0]), err=True)
        return None


def when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def as_text(artifact: dict) -> str:
    """An artifact's data as a terminal shows it: markdown as is, a link, a table as rows."""
    data, kind = artifact.get("data"), artifact.get("type")
    if kind == "link" and isinstance(data, dict):
        return f"[{data.get('link_text') or data.get('link')}]({data.get('link')})"
    if kind == "table":
        return table_text(data)
    return str(data)


def table_text(data: Any) -> str:
    if isinstance(data, dict):  # columns
        names = list(data)
        rows = [list(r) for r in zip(*(data[n] for n in names))]
    elif data and all(isinstance(r, dict) for r in data):
        names = list(dict.fromkeys(k for r in data for k in r))
        rows = [[r.get(n) for n in names] for r in data]
    else:
        names, rows = [], [list(r) if isinstance(r, (list, tuple)) else [r] for r in data or []]
    lines = [" | ".join(map(str, names))] if names else []
    lines += [" | ".join("" if v is None else str(v) for v in row) for row in rows]
    return "\n".join(lines)


@click.group("artifacts")
def artifacts() -> None:
    """Artifacts runs published (create_markdown_artifact, create_table_artifact, create_link_artifact)."""


@artifacts.command("ls")
@click.option("--limit", default=100, show_default=True, help="At most this many keys.")
@output_option
def ls(limit: int, output: str) -> None:
    """The newest version of every artifact key, newest first."""
    from daskflow.store.artifacts import latest_artifacts

    store = open_store()
    rows = latest_artifacts(store, limit) if store is not None else []
    if output == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "type", "versions", "created", "task run", "flow run", "description")
    for r in rows:
        table.add_row(r["key"], r["type"], str(r["versions"]), when(r["created"]), (r["task_run_id"] or "-")[:8],
                      (r["flow_run_id"] or "-")[:8], r["description"] or "")
    Console().print(table)


@artifacts.command("show")
@click.argument("ref")
@output_option
def show(ref: str, output: str) -> None:
    """Every version of the artifact key REF (or the artifact whose id starts with REF), newest first."""
    from daskflow.store.artifacts import find_artifact

    store = open_store()
    if store is None:
        raise click.ClickException(f"no artifact with key or id {ref!r}")
    try:
        found = find_artifact(store, ref)
    except LookupError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    if output == "json":
        click.echo(json.dumps(found, indent=2, default=str))
        return
    for a in found:
        head = f"{a['key'] or '(no key)'} v{a.get('version', '-')}  {a['type']}  {when(a['created'])}"
        click.echo(head + f"  task run {a['task_run_id'] or '-'}  flow run {a['flow_run_id'] or '-'}")
        if a.get("description"):
            click.echo(a["description"])
        click.echo(as_text(a))
        click.echo("")


COMMANDS: list[click.Command] = [artifacts]
