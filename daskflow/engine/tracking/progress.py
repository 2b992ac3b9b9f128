"""A progress display (rich.progress) while the caller waits for many runs, on a terminal.

``watching(chunks)`` wraps a wait (``.result()``/``.wait()`` of a ``.map()``, the end of
a flow run): a daemon thread sleeps ~1 s, and only if the wait is still going draws a
transient bar from the tracker's per-chunk counts (completed, cached, failed,
retrying), refreshed every 100 ms. Short waits never print anything; the display
is off when ``daskflow.progress`` or ``daskflow.tracking`` is false, when stderr is
not a terminal, and inside Dask tasks.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import TYPE_CHECKING, Any, Iterator

from daskflow import config
from daskflow.engine.tracking import tracker

if TYPE_CHECKING:
    from daskflow.engine.client.chunks import Chunk

__all__ = ["watching"]

DELAY_SECONDS = 1.0


def _wanted(console: Any) -> bool:
    if console is not None:
        return True
    if not config.get("progress", True) or not tracker.enabled():
        return False
    try:
        if not sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    from daskflow.runners import current_host

    return not current_host().remote()


@contextlib.contextmanager
def watching(chunks: list[Chunk], delay: float = DELAY_SECONDS, console: Any = None) -> Iterator[None]:
    """Show progress of ``chunks`` while the body waits, if it waits longer than ``delay``.

    Example:
        >>> with watching(futures.chunks):  # doctest: +SKIP
        ...     futures.wait()
    """
    chunks = [c for c in chunks if c.result is None]
    if sum(c.n for c in chunks) < 2 or not _wanted(console):
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_show, args=(chunks, stop, delay, console), name="daskflow-progress",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2)


def _show(chunks: list[Chunk], stop: threading.Event, delay: float, console: Any) -> None:
    if stop.wait(delay):
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    keys = [(c.base, c.start) for c in chunks]
    names = {c.task.name for c in chunks}
    label = names.pop() if len(names) == 1 else f"{len(names)} tasks"
    # rich's default bar colour is a red-pink: green (blue while going), red only once a run failed
    bar_column = BarColumn(style="bar.back", complete_style="blue", finished_style="green")
    columns = (TextColumn("[bold]{task.description}"), bar_column, MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, refresh_per_second=10) as bar:
        job = bar.add_task(label, total=sum(c.n for c in chunks), detail="")
        while True:
            done, cached, failed, retrying = tracker.progress_counts(keys)
            detail = f"completed {done}  cached {cached}  failed {failed}  retrying {retrying}"
            if failed:
                bar_column.complete_style = bar_column.finished_style = "red"
            bar.update(job, completed=done + cached + failed, detail=detail)
            if stop.wait(0.1):
                break
