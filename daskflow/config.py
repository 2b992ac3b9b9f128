"""Settings: the ``daskflow`` namespace of ``dask.config``.

Defaults ship in ``daskflow.yaml``; ``DASK_DASKFLOW__*`` environment variables and
``dask.config.set`` override them; the short aliases ``DASKFLOW_HOME`` and
``DASKFLOW_SCHEDULER_ADDRESS`` win over both.
"""

from __future__ import annotations

import os
import pathlib
import stat
from typing import Any

import dask.config
import yaml

from daskflow.exceptions import UnsafeHome, UnusableHome

_DEFAULTS = pathlib.Path(__file__).with_name("daskflow.yaml")
with open(_DEFAULTS) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))

_ALIASES = {"home": "DASKFLOW_HOME", "scheduler-address": "DASKFLOW_SCHEDULER_ADDRESS"}


def get(key: str, default: Any = None) -> Any:
    """A setting by its key below ``daskflow.`` (``get("map.chunk-seconds")``)."""
    alias = _ALIASES.get(key)
    if alias and os.environ.get(alias):
        return os.environ[alias]
    return dask.config.get(f"daskflow.{key}", default=default)


def home_path() -> pathlib.Path:
    """The configured daskflow home, as a path: not checked, not created."""
    return pathlib.Path(get("home") or pathlib.Path.home() / ".daskflow").expanduser()


def home(create: bool = True) -> pathlib.Path:
    """The daskflow home directory, created private to the user (0700) and checked.

    Raises ``UnsafeHome`` when others could plant files in it (it is writable by the
    group or by everyone, or owned by another user: cache entries and queue records
    are unpickled, so a planted file would run code), and ``UnusableHome`` when it is
    not a directory or cannot be created. With ``create=False`` a missing home is
    returned as it is (read-only commands never create stores).
    """
    return check_home(home_path(), create)


def check_home(path: str | os.PathLike, create: bool = False) -> pathlib.Path:
    """``path`` as a checked daskflow home (see ``home``); created 0700 if ``create``."""
    path = pathlib.Path(path).expanduser()
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass  # not a directory: said below
        except OSError as exc:
            raise UnusableHome(f"daskflow home {path} cannot be created ({exc.strerror or exc}); "
                               "set DASKFLOW_HOME to a directory you own") from None
    try:
        info = path.stat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise UnusableHome(f"daskflow home {path} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnusableHome(f"daskflow home {path} is not a directory; "
                           "set DASKFLOW_HOME to a directory you own")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise UnsafeHome(f"daskflow home {path} is owned by another user (uid {info.st_uid}); "
                         "set DASKFLOW_HOME to a directory you own")
    if info.st_mode & 0o022:
        raise UnsafeHome(f"daskflow home {path} is writable by other users "
                         f"(mode {stat.S_IMODE(info.st_mode):o}); fix it with: chmod 700 {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnusableHome(f"daskflow home {path} is not writable; "
                           f"fix it with: chmod 700 {path}, or set DASKFLOW_HOME elsewhere")
    return path
