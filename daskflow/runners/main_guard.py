"""A LocalCluster started from a script's unguarded top level: one clear error, before any worker.

LocalCluster workers are processes started with ``spawn``: each imports the main script
again, so a cluster started by the script's top-level code would start again in every
worker. ``check_main_guard`` finds that case from the calling frames and the script's
``if __name__ == "__main__":`` blocks.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def check_main_guard() -> None:
    """Refuse to start a LocalCluster from a script's unguarded top-level code.

    LocalCluster workers are processes started with ``spawn``: each imports the main
    script again. Code at its top level that starts a cluster would then run again in
    every worker (each failing to start processes of its own, hundreds of lines of
    tracebacks, a failed flow run each). One clear error here instead, before any
    worker exists.
    """
    where = unguarded_main_call()
    if where is not None:
        from daskflow.exceptions import MissingMainGuard

        path, line = where
        raise MissingMainGuard(
            f"{path}, line {line}: this starts a Dask LocalCluster from the script's top level, outside "
            "`if __name__ == \"__main__\":`. Its worker processes import the script again and would run "
            "this line again. Move the code that runs flows and tasks under `if __name__ == \"__main__\":` "
            "(or use a running cluster: DaskTaskRunner(address=...))."
        )


def unguarded_main_call() -> tuple[str, int] | None:
    """``(script, line)`` when this thread runs the main script's top level outside its main guard."""
    import inspect

    import dask.config

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or dask.config.get("distributed.worker.multiprocessing-method", "spawn") == "fork":
        return None  # an interactive session, or workers that do not import the script again
    frame, line = inspect.currentframe(), None
    script = os.path.abspath(path)
    while frame is not None:  # the outermost frame of the script's own top-level code
        code = frame.f_code
        if code.co_name == "<module>" and os.path.abspath(code.co_filename) == script:
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        import ast

        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    guards = [node for node in tree.body if isinstance(node, ast.If) and _is_main_test(node.test)]
    if any(node.lineno <= line <= (node.end_lineno or node.lineno) for node in guards):
        return None
    return path, line


def _is_main_test(test: Any) -> bool:
    """Whether an ``if`` test is ``__name__ == "__main__"`` (either way round)."""
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]
