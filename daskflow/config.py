"""Settings: the ``daskflow`` namespace of ``dask.config``.

Defaults ship in ``daskflow.yaml``; ``DASK_DASKFLOW__*`` environment variables and
``dask.config.set`` override them; the short aliases ``DASKFLOW_HOME`` and
``DASKFLOW_SCHEDULER_ADDRESS`` win over both.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import dask.config
import yaml

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


def home() -> pathlib.Path:
    """The daskflow home directory, created private to the user (0700)."""
    path = pathlib.Path(get("home") or pathlib.Path.home() / ".daskflow").expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
