"""Tracebacks that point at the user's code: its file and line, without daskflow's frames.

Two things used to hide them. A task's function travels to the workers with cloudpickle,
which pickles a function *by value* when ``module.qualname`` does not find it, and that
is always the case for a decorated function (the module's name finds the ``Task``); a
by-value function's code is renamed ``<dynamic-code>``. And a failure came to the user
under ~25 frames of the engine that called the function.

- ``portable(fn)`` wraps a function for pickling: on load (``restore_function``) the
  worker takes the module's own function when it can import it and its bytecode is the
  one sent (pickled by reference, in effect: its globals are the module's), else the
  function sent by value, its code given back its source file name. A function of
  ``__main__`` is always the latter: its file name is the script's.
- ``hide_internal(exc)`` drops daskflow's frames from an exception's traceback (and from
  its causes'), unless ``daskflow.tracebacks: full``; the user's frames stay in order.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys
import types
from typing import Any, Callable

import cloudpickle

from daskflow import config

__all__ = ["portable", "restore_function", "hide_internal", "strip_internal", "script_module"]

_PACKAGE = str(pathlib.Path(__file__).resolve().parents[2]) + "/"
_unimportable: set[str] = set()


class PortableFunction:
    """A function as it travels: by reference where the worker can import it, else by value."""

    __slots__ = ("fn",)

    def __init__(self, fn: types.FunctionType) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple:
        fn = self.fn
        module = fn.__module__
        if module in cloudpickle.list_registry_pickle_by_value():  # the user asked for by value
            module = "__main__"
        return restore_function, (module, fn.__qualname__, fn.__code__.co_filename, fn)


def portable(fn: Callable) -> Any:
    """``fn``, made to keep its file name when pickled (see the module docstring)."""
    if type(fn) is not types.FunctionType or fn.__code__.co_filename.startswith("<"):
        return fn
    return PortableFunction(fn)


def restore_function(module: str, qualname: str, filename: str, fn: types.FunctionType) -> Callable:
    """The module's own function if importable here and the same code; else ``fn`` named after ``filename``."""
    own = _importable(module, qualname)
    if own is not None and own.__code__.co_code == fn.__code__.co_code:
        return own
    fn.__code__ = _renamed(fn.__code__, filename)
    return fn


def _importable(module: str, qualname: str) -> types.FunctionType | None:
    if module == "__main__" or "<" in qualname or module in _unimportable:
        return None
    target: Any = sys.modules.get(module)
    if target is None:
        try:
            target = importlib.import_module(module)
        except Exception:  # not on this host: the copy sent by value runs
            _unimportable.add(module)
            return None
    for part in qualname.split("."):
        target = getattr(target, part, None)
    target = getattr(target, "fn", target)  # the Task a decorator left under that name
    return target if type(target) is types.FunctionType else None


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def script_module(fn: Callable) -> str:
    """The module name a function is known by: a script's (``__main__``) is its file stem.

    ``python etl.py`` and ``import etl`` then name the task alike, so its task key and cache
    keys match; code typed at a prompt or in a notebook keeps ``__main__``.
    """
    module = getattr(fn, "__module__", "") or ""
    if module != "__main__":
        return module
    filename = getattr(getattr(inspect.unwrap(fn), "__code__", None), "co_filename", "<") or "<"
    return module if filename.startswith("<") else pathlib.Path(filename).stem


def strip_internal(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the frames of daskflow's own files (a new chain; frames shared)."""
    kept = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def hide_internal(exc: BaseException | None) -> BaseException | None:
    """``exc`` with daskflow's frames dropped from its traceback and its causes' (unless configured full)."""
    if exc is None or config.get("tracebacks", "short") == "full":
        return exc
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if e.__traceback__ is not None:
            stripped = strip_internal(e.__traceback__)
            if stripped is not None:  # all engine frames: an engine error, keep them
                e.__traceback__ = stripped
        e = e.__cause__ or e.__context__
    return exc
