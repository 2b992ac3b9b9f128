"""``daskflow ui``'s HTTP server: the UI of ``daskflow.ui.app`` on one address, until Ctrl-C.

Binds 127.0.0.1 by default. On any other interface the run records (errors, logs,
parameters) would be open to the network, so a token is then required: made here (or
given), printed with the URL, and checked on every request (``app.Base.prepare``).
The store is opened read-only, on the first request that needs it, and never created.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import signal
from typing import Callable

from daskflow.ui.app import UiOptions, make_app

__all__ = ["is_loopback", "serve", "ui_options"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ui_options(host: str, token: str | None = None, home: str | None = None) -> UiOptions:
    """Options for a UI bound to ``host``: reads on loopback need no token, any other host gets one;
    actions (cancel) always need one (the same)."""
    if is_loopback(host):
        return UiOptions(token=token, local_only=token is None, home=home,
                         action_token=token or secrets.token_urlsafe(24))
    token = token or secrets.token_urlsafe(24)
    return UiOptions(token=token, local_only=False, home=home, action_token=token)


def url_of(host: str, port: int, options: UiOptions) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    token = options.token or options.action_token
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(host: str, port: int, options: UiOptions, started: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM; ``started(url)`` is called once the port listens."""
    asyncio.run(_serve(host, port, options, started))


async def _serve(host: str, port: int, options: UiOptions, started: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(port, address=host)
    server = HTTPServer(make_app(options))
    server.add_sockets(sockets)
    started(url_of(host, sockets[0].getsockname()[1], options))
    await stop.wait()
    server.stop()
