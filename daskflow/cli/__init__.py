"""The ``daskflow`` command. Read-only commands never import distributed."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="daskflow")
def main() -> None:
    """daskflow: inspect runs, logs and the result cache; run a server and task workers."""
