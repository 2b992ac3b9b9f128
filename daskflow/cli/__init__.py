"""The ``daskflow`` command. Read-only commands never import distributed.

Each command group lives in its own module (``runs``, ``cache``, ``server``, ``ui``, ``artifacts``) and is
registered here; a module imports only what its commands need, when they run.
"""

from __future__ import annotations

import warnings
from typing import Any

import click


class _Main(click.Group):
    """The command group: a store or home problem is one line on stderr and exit 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        import lmdb

        from daskflow.exceptions import StoreError

        warnings.formatwarning = _one_line
        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        except lmdb.Error as exc:  # damage our header check cannot see (a bad page inside the file)
            raise click.ClickException(f"LMDB error: {exc}; the file may be damaged: move it aside") from None


def _one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


@click.group("daskflow", cls=_Main)
@click.version_option(package_name="daskflow")
def main() -> None:
    """daskflow: inspect runs, logs and the result cache; run a server and task workers."""


def _register() -> None:
    from daskflow.cli import artifacts, cache, limits, runs, server, ui

    for module in (cache, runs, server, ui, artifacts, limits):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
