"""Artifacts: markdown, tables and links a run publishes, as Prefect's ``create_*_artifact``.

An artifact is one record of the run's log stream (``logging.publish``, logger
``daskflow.artifacts``, level 5 so no console shows it): it reaches the run store with the
run's log batches, from a worker too, without a round trip of its own; the store files it
apart, by run and by key (``daskflow.store.artifacts``). ``daskflow artifacts ls/show``
and the run and flow-run pages of ``daskflow ui`` show them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from daskflow.engine.core.context import current_flow_run_id, task_run_ctx
from daskflow.engine.worker.logging import publish
from daskflow.store.artifacts import ARTIFACTS_LOGGER  # the run store files its records as artifacts

__all__ = ["create_link_artifact", "create_markdown_artifact", "create_table_artifact"]

LEVEL = 5
_KEY = re.compile(r"^[a-z0-9-]+$")


def _check_key(key: str | None, what: str) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"{what}(key={key!r}): Artifact key must only contain lowercase letters, numbers, and "
                         "dashes (as in Prefect)")


def _create(kind: str, data: Any, key: str | None, description: str | None, what: str) -> str:
    _check_key(key, what)
    if description is not None and not isinstance(description, str):
        raise TypeError(f"{what}(description=...) must be a str, got {type(description).__name__}")
    ctx = task_run_ctx.get()
    artifact_id = str(uuid.uuid4())
    record = {"id": artifact_id, "key": key, "type": kind, "description": description, "data": data,
              "created": time.time(), "task_run_id": ctx.task_run_id if ctx is not None else None,
              "flow_run_id": current_flow_run_id()}
    publish(json.dumps(record, default=str), ARTIFACTS_LOGGER, LEVEL)
    return artifact_id


def create_markdown_artifact(markdown: str, key: str | None = None, description: str | None = None) -> str:
    """Publish a markdown artifact for the current run; returns its id.

    Example:
        >>> create_markdown_artifact("# Report\\n42 rows", key="daily-report")  # doctest: +SKIP
    """
    if not isinstance(markdown, str):
        raise TypeError(f"create_markdown_artifact(markdown=...) must be a str, got {type(markdown).__name__}")
    return _create("markdown", markdown, key, description, "create_markdown_artifact")


def create_table_artifact(table: Any, key: str | None = None, description: str | None = None) -> str:
    """Publish a table (a list of dicts, a dict of columns, or a list of rows) for the current run.

    Values that JSON cannot hold are written as their ``str``; ``NaN`` as null, as in Prefect.

    Example:
        >>> create_table_artifact([{"name": "a", "rows": 3}], key="counts")  # doctest: +SKIP
    """
    if not isinstance(table, (list, tuple, dict)):
        raise TypeError("create_table_artifact(table=...) must be a list of dicts, a dict of lists or a list of "
                        f"lists, got {type(table).__name__}")
    return _create("table", json.loads(json.dumps(_no_nan(table), default=str)), key, description,
                   "create_table_artifact")


def create_link_artifact(link: str, link_text: str | None = None, key: str | None = None,
                         description: str | None = None) -> str:
    """Publish a link for the current run (shown as ``[link_text](link)``).

    Example:
        >>> create_link_artifact("https://example.com/report.html", "the report", key="report")  # doctest: +SKIP
    """
    if not isinstance(link, str):
        raise TypeError(f"create_link_artifact(link=...) must be a str, got {type(link).__name__}")
    return _create("link", {"link": link, "link_text": link_text}, key, description, "create_link_artifact")


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value
