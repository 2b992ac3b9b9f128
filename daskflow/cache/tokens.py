"""Who may open the LMDB result store at a path: tokens under ``{home}/tokens``.

``store_token`` / ``reaches_store``: a process that
ships work elsewhere writes a random token file under ``{home}/tokens`` and sends the
home *and* the token. A process that finds that token at that path, and may write
there, sees the very same directory (the same host, or a shared filesystem) and may
use the LMDB store directly. Any other process (a worker on another host, or one whose
view of the path is a different or read-only directory) must not open it: it would
create a second, private cache under the client's path. It hands its records back to
the sender instead.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import threading

from daskflow import config
from daskflow.exceptions import StoreError

_lock = threading.Lock()
_tokens: dict[tuple[str, int], str] = {}  # (home, pid) -> this process's token
_reach: dict[tuple[str, str], bool] = {}  # (home, token) -> whether this process sees that store


def store_token(home: str | os.PathLike) -> str | None:
    """This process's token for ``home``: a file ``{home}/tokens/{token}`` it wrote (once).

    Ship it with work that may use the store: see ``reaches_store``. None for a home that
    cannot hold a cache (nothing is written there; every process gets a ``NullStore``).
    """
    key = (str(home), os.getpid())
    token = _tokens.get(key)
    if token is None:
        with _lock:
            token = _tokens.get(key)
            if token is None:
                try:
                    config.check_home(home, create=True)
                    token = os.urandom(16).hex()
                    folder = pathlib.Path(home) / "tokens"
                    folder.mkdir(mode=0o700, exist_ok=True)
                    path = folder / token
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except (StoreError, OSError):
                    return None
                atexit.register(_remove_token, path)
                _tokens[key] = token
    return token


def _remove_token(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def reaches_store(home: str | os.PathLike, token: str) -> bool:
    """Whether this process sees the store of the process that made ``token`` (and may write it).

    One ``stat`` and one ``access`` per process and token; never creates anything.
    """
    key = (str(home), token)
    seen = _reach.get(key)
    if seen is None:
        folder = pathlib.Path(home)
        seen = (folder / "tokens" / token).is_file() and os.access(folder, os.W_OK) and (
            not (folder / "cache").exists() or os.access(folder / "cache", os.W_OK))
        _reach[key] = seen
    return seen
