"""Settings: the ``daskflow`` namespace of ``dask.config``.

Defaults ship in ``daskflow.yaml``; dask's YAML files, ``DASK_DASKFLOW__*`` environment
variables and ``dask.config.set`` override them; the short aliases ``DASKFLOW_HOME`` and
``DASKFLOW_SCHEDULER_ADDRESS`` win over all.

Two readers give one answer. Once dask is imported (any process that runs flows), settings
are read from ``dask.config``, where daskflow's defaults are registered, so that
``dask.config.set`` works as users know it. A process that has not imported dask (the CLI's
read-only commands: ``import dask`` is most of their start-up) reads the same sources the
way ``dask.config`` collects them at import, without importing it:

- the YAML/JSON files of dask's search path, in its order (``DASK_ROOT_CONFIG`` or
  ``/etc/dask``, ``{sys.prefix}/etc/dask``, each ``site.PREFIXES``'s ``etc/dask``,
  ``~/.config/dask``, then ``DASK_CONFIG``), each directory's files sorted by name, a later
  file winning;
- the environment above them: ``DASK_INTERNAL_INHERIT_CONFIG`` (what dask hands to the
  processes it spawns), then each ``DASK_A__B_C=value`` as ``a.b_c``, its value read as a
  Python literal (else ``none``/``null``/``true``/``false``, else the string);
- daskflow's defaults below all of them, filling only what no source set.

``-`` and ``_`` in a key are one spelling, the first one set naming it, as in dask. The
sources are read once per process (dask reads them once, at import, too).
``tests/test_config.py`` checks the two readers agree on files and variables of each kind.
``parse_timedelta`` and ``parse_bytes`` read durations and sizes as ``dask.utils`` does, for
the same reason.
"""

from __future__ import annotations

import os
import pathlib
import stat
import sys
from typing import Any, Iterator, Mapping

from daskflow.exceptions import UnsafeHome, UnusableHome

_DEFAULTS = pathlib.Path(__file__).with_name("daskflow.yaml")
_ALIASES = {"home": "DASKFLOW_HOME", "scheduler-address": "DASKFLOW_SCHEDULER_ADDRESS"}
_MISSING = object()
_defaults: dict | None = None  # daskflow.yaml, parsed once
_registered = False  # daskflow.yaml is among dask.config's defaults
_settings: dict | None = None  # the sources read without dask (see read_settings)


def get(key: str, default: Any = None) -> Any:
    """A setting by its key below ``daskflow.`` (``get("map.chunk-seconds")``)."""
    alias = _ALIASES.get(key)
    if alias and os.environ.get(alias):
        return os.environ[alias]
    dask_config = sys.modules.get("dask.config")
    if dask_config is not None:
        if not _registered:
            register_defaults()
        value = dask_config.get(f"daskflow.{key}", _MISSING)
        if value is _MISSING:  # e.g. defaults registered inside a dask.config.set that added "daskflow": gone after it
            return lookup(defaults(), f"daskflow.{key}", default)
        return value
    global _settings
    if _settings is None:
        _settings = read_settings()
    return lookup(_settings, f"daskflow.{key}", default)


def defaults() -> dict:
    """daskflow's defaults (``daskflow.yaml``, with its ``daskflow:`` top level)."""
    global _defaults
    if _defaults is None:
        import yaml

        with open(_DEFAULTS) as f:
            _defaults = yaml.safe_load(f)
    return _defaults


def register_defaults() -> None:
    """Add daskflow's defaults to ``dask.config`` (imports dask; once per process)."""
    global _registered
    import dask.config

    if not _registered:
        _registered = True
        dask.config.update_defaults(defaults())


def read_settings(environ: Mapping[str, str] | None = None) -> dict:
    """Every setting as ``dask.config`` would hold it after import with daskflow's defaults,
    read without importing dask (the order of sources is in the module docstring)."""
    environ = os.environ if environ is None else environ
    sources = [*_yaml_sources(_search_path(environ)), _env_source(environ)]
    settings: dict = {}
    for source in reversed(sources):  # the highest first: a key is set once, by the first that has it
        fill(settings, source)
    fill(settings, defaults())
    return settings


def fill(target: dict, source: Mapping) -> dict:
    """Set in ``target`` what it lacks from ``source``, nested (dask's ``update(priority="old")``).

    A mapping in ``source`` replaces a value of ``target`` that is not a dict, as dask's does.
    """
    for k, v in source.items():
        k = canonical(k, target)
        if isinstance(v, Mapping):
            if not isinstance(target.get(k), dict):
                target[k] = {}
            fill(target[k], v)
        elif k not in target:
            target[k] = v
    return target


def canonical(key: str, d: Any) -> str:
    """``key`` as ``d`` spells it (``a-b`` or ``a_b``), or as given when ``d`` has neither."""
    try:
        if key in d:
            return key
    except TypeError:
        return key
    other = key.replace("_", "-") if "_" in key else key.replace("-", "_")
    return other if other in d else key


def lookup(settings: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``a.b.c`` (either spelling of each part), or ``default``."""
    value = settings
    for k in dotted.split("."):
        try:
            value = value[canonical(k, value)]
        except (TypeError, IndexError, KeyError):
            return default
    return value


def _search_path(environ: Mapping[str, str]) -> list[str]:
    """dask's config directories (and files), lowest priority first, each once (its last place)."""
    import site

    paths = [environ.get("DASK_ROOT_CONFIG", "/etc/dask"), os.path.join(sys.prefix, "etc", "dask"),
             *[os.path.join(prefix, "etc", "dask") for prefix in getattr(site, "PREFIXES", [])],
             os.path.join(os.path.expanduser("~"), ".config", "dask")]
    if "DASK_CONFIG" in environ:
        paths.append(environ["DASK_CONFIG"])
    return list(reversed(dict.fromkeys(reversed(paths))))


def _config_files(paths: list[str]) -> Iterator[str]:
    for path in paths:
        if os.path.isdir(path):
            try:
                names = os.listdir(path)
            except OSError:  # unreadable: skipped, as dask does
                continue
            yield from sorted(os.path.join(path, n) for n in names
                              if os.path.splitext(n)[1].lower() in (".json", ".yaml", ".yml"))
        elif os.path.exists(path):
            yield path


def _yaml_sources(paths: list[str]) -> Iterator[dict]:
    import yaml

    for path in _config_files(paths):
        try:
            with open(path) as f:
                data = yaml.safe_load(f.read())
        except OSError:
            continue
        except Exception as exc:
            raise ValueError(f"A dask config file at {path!r} is malformed: {exc}") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ValueError(f"A dask config file at {path!r} is malformed: its top level is a "
                             f"{type(data).__name__}, not a mapping")
        yield data


def _env_source(environ: Mapping[str, str]) -> dict:
    """The ``DASK_*`` variables as nested settings (dask's ``collect_env``)."""
    pairs: dict[str, Any] = {}
    if "DASK_INTERNAL_INHERIT_CONFIG" in environ:
        import base64
        import json

        pairs.update(json.loads(base64.urlsafe_b64decode(environ["DASK_INTERNAL_INHERIT_CONFIG"].encode())))
    for name, value in environ.items():
        if name.startswith("DASK_"):
            pairs[name[5:].lower().replace("__", ".")] = _literal(value)
    result: dict = {}
    for dotted, value in pairs.items():
        _assign(result, dotted.split("."), value)
    return result


def _assign(d: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        k = canonical(k, d)
        if k not in d:
            d[k] = {}
        d = d[k]
    d[canonical(keys[-1], d)] = value


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return {"none": None, "null": None, "false": False, "true": True}.get(text.lower(), text)


_SECONDS = {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SECONDS.update({f"{name}{plural}": v for name, v in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400),
                 ("week", 604800), ("millisecond", 1e-3), ("microsecond", 1e-6), ("nanosecond", 1e-9))
                 for plural in ("", "s")})
_SECONDS.update({k.upper(): v for k, v in _SECONDS.items()})
_BYTES = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    _BYTES.update({_p: 1000 ** _i, f"{_p}b": 1000 ** _i, f"{_p}i": 1024 ** _i, f"{_p}ib": 1024 ** _i})


def _split_unit(text: str) -> tuple[str, str]:
    """``"1.5GiB"`` as ``("1.5", "GiB")``: the trailing letters are the unit."""
    end = len(text)
    while end > 1 and text[end - 1].isalpha():
        end -= 1
    return text[:end], text[end:]


def parse_timedelta(value: Any, default: str | bool = "seconds") -> float | int | None:
    """Seconds in ``value`` (``"7d"``, ``"300ms"``, ``"1.5 hours"``, ``90``, a ``timedelta``),
    as ``dask.utils.parse_timedelta`` reads it: a whole number of seconds as an int; no unit
    means ``default`` (``False``: a unit is required)."""
    import datetime
    import numbers

    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
        return int(seconds) if int(seconds) == seconds else seconds
    text = (str(value) if isinstance(value, numbers.Number) else value).replace(" ", "")
    if not text[0].isdigit():
        text = "1" + text
    number, unit = _split_unit(text)
    unit = unit or default
    if unit is False:
        raise ValueError(f"Missing time unit: {text}")
    if not isinstance(unit, str):
        raise TypeError(f"default must be str or False, got {default!r}")
    n = float(number)
    try:
        result = n * _SECONDS[unit.lower()]
    except KeyError:
        raise KeyError(f"Invalid time unit: {unit}. Valid units are: {', '.join(_SECONDS)}") from None
    return int(result) if int(result) == result else result


def parse_bytes(value: Any) -> int:
    """Bytes in ``value`` (``"10GiB"``, ``"5 kB"``, ``"1e6"``, ``123``), as ``dask.utils.parse_bytes``
    reads it: decimal units (kB, MB...) and binary ones (KiB, MiB...), case ignored."""
    if isinstance(value, (int, float)):
        return int(value)
    text = value.replace(" ", "")
    if not any(c.isdigit() for c in text):
        text = "1" + text
    number, unit = _split_unit(text)
    try:
        n = float(number)
    except ValueError as exc:
        raise ValueError(f"Could not interpret '{number}' as a number") from exc
    try:
        return int(n * _BYTES[unit.lower()])
    except KeyError as exc:
        raise ValueError(f"Could not interpret '{unit}' as a byte unit") from exc


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


if "dask.config" in sys.modules:  # `dask config get daskflow` (the dask CLI loads us as a plugin)
    register_defaults()
