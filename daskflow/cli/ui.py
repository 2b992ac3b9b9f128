"""``daskflow ui``: the web UI over the run store (``daskflow.ui``), read-only but for Cancel; never imports distributed."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Any other than loopback requires a token (printed at start).")
@click.option("--port", default=4200, show_default=True, type=click.IntRange(min=0, max=65535),
              help="Port (0: any free port).")
@click.option("--open", "open_browser", is_flag=True, help="Open the UI in a web browser.")
@click.option("--token", envvar="DASKFLOW_UI_TOKEN", default=None,
              help="Token every request must carry (default: a random one when --host is not loopback).")
def ui(host: str, port: int, open_browser: bool, token: str | None) -> None:
    """Serve the run store of $DASKFLOW_HOME as web pages and a JSON API, until Ctrl-C.

    Example: daskflow ui --open
    """
    from daskflow import config
    from daskflow.ui.server import serve, ui_options

    home = config.check_home(config.home_path(), create=False)  # an unsafe home is an error here too
    options = ui_options(host, token, str(home))

    def started(url: str) -> None:
        click.echo(f"daskflow UI at {url}  (run store {home / 'runs'}, read-only but for Cancel, which needs "
                   f"this URL's token; Ctrl-C stops it)")
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    try:
        serve(host, port, options, started)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


COMMANDS: list[click.Command] = [ui]
