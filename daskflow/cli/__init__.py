"""The ``daskflow`` command. Read-only commands never import distributed.

Each command group lives in its own module (``runs``, ``cache``, ``server``) and is
registered here; a module imports only what its commands need, when they run.
"""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="daskflow")
def main() -> None:
    """daskflow: inspect runs, logs and the result cache; run a server and task workers."""


def _register() -> None:
    from daskflow.cli import cache, runs, server

    for module in (cache, runs, server):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
