"""Cache keys: a scheme daskflow owns, stable across processes, machines and versions of Dask.

A key is ``b"v1/" + task_key + b"/" + 16-byte digest``. The digest is one pinned fast
hash (xxh3_128) over:

- the *static* parts of the policy, computed once per submission on the client and
  shipped to the workers (task source, flow parameters, flow run id), and
- per run, for every hashed parameter, its name and the *fingerprint* of its value.

A fingerprint is xxh3_128 of a canonical byte encoding of the value: type-tagged and
length-prefixed, so ``1``, ``1.0``, ``"1"`` and ``True`` differ, dicts and sets do not
depend on insertion order, and a class is named by module and qualified name (stable
for ``__main__`` classes, unlike ``dask.base.tokenize``). Supported: builtins and
containers, dataclasses, enums, paths, datetimes, UUIDs, decimals, numpy arrays (dtype,
shape and bytes) and scalars, pandas objects (if pandas is imported), objects with a
``__daskflow_cache_key__()`` method, and plain Python objects through their
``__dict__``. Anything else (a lock, a socket, an open file) raises ``Unhashable``:
the run then executes uncached, with a warning naming the parameter.

Changing the encoding changes every key: bump ``VERSION`` and the golden keys in
``tests/cache/test_keys.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import inspect
import pathlib
import sys
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import xxhash

from daskflow.cache.policies import FlowParameters, Inputs, RunId, TaskSource, effective_policy

VERSION = b"v1"
_digest = xxhash.xxh3_128_digest
_MAX_DEPTH = 100
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python code


class Unhashable(Exception):
    """A value has no canonical encoding; ``what`` describes it."""

    def __init__(self, what: str, param: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.param = param


class KeyFnFailed(Unhashable):
    """The task's ``cache_key_fn`` raised: the run executes uncached (as in Prefect), with a warning."""


class NotConcrete(Exception):
    """A value still holds futures: its key can only be computed where they are resolved."""


def _qualname(t: type) -> bytes:
    return f"{t.__module__}.{t.__qualname__}".encode()


def _str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return b"%d:" % len(b) + b


def _seq(tag: bytes, items: Any, out: list, depth: int) -> None:
    out.append(tag + b"%d[" % len(items))
    for v in items:
        _enc(v, out, depth)
    out.append(b"]")


def _sorted_parts(items: Any, depth: int) -> list[bytes]:
    parts = []
    for v in items:
        sub: list = []
        _enc(v, sub, depth)
        parts.append(b"".join(sub))
    parts.sort()
    return parts


def _enc(v: Any, out: list, depth: int = 0) -> None:
    """Append the canonical encoding of ``v`` to ``out``.

    One function, not one per type: it is the inner loop of every cache key, and a
    dispatch table (``_EXACT``) for the common exact types followed by the ordered
    isinstance rules below costs one dict lookup for plain values; splitting the rules
    into helpers would add a call per nested value.
    """
    t = type(v)
    rule = _EXACT.get(t)
    if rule is not None:
        out.append(rule(v))
        return
    depth += 1
    if depth > _MAX_DEPTH:
        raise Unhashable("a value nested too deeply (or containing itself)")
    if t is tuple or t is list:
        _seq(b"t" if t is tuple else b"l", v, out, depth)
        return
    if t is dict:
        out.append(b"d%d{" % len(v))
        pairs = []
        for k, x in v.items():
            ks: list = []
            _enc(k, ks, depth)
            xs: list = []
            _enc(x, xs, depth)
            pairs.append((b"".join(ks), b"".join(xs)))
        pairs.sort()
        for k, x in pairs:
            out.append(k)
            out.append(x)
        out.append(b"}")
        return
    if t is set or t is frozenset:
        parts = _sorted_parts(v, depth)
        out.append(b"S%d{" % len(parts))
        out.extend(parts)
        out.append(b"}")
        return
    hook = getattr(t, "__daskflow_cache_key__", None)
    if hook is not None:
        out.append(b"H" + _qualname(t))
        _enc(hook(v), out, depth)
        return
    if t.__module__.startswith("daskflow.engine"):
        raise NotConcrete(t.__name__)
    if isinstance(v, enum.Enum):
        out.append(b"E" + _qualname(t))
        _enc(v.value, out, depth)
        return
    if isinstance(v, (datetime.date, datetime.time, datetime.timedelta)):
        out.append(_when(v))
        return
    if isinstance(v, pathlib.PurePath):
        flavour = b"w" if isinstance(v, pathlib.PureWindowsPath) else b"p"
        out.append(b"P" + flavour + _str(str(v)))
        return
    if isinstance(v, (decimal.Decimal, fractions.Fraction)):
        out.append(b"n" + _qualname(t) + _str(str(v)))
        return
    if isinstance(v, uuid.UUID):
        out.append(b"u" + v.bytes)
        return
    if isinstance(v, type):
        out.append(b"y" + _qualname(v))
        return
    if dataclasses.is_dataclass(v):
        out.append(b"D" + _qualname(t))
        _seq(b"f", [(f.name, getattr(v, f.name)) for f in dataclasses.fields(v)], out, depth)
        return
    numpy = sys.modules.get("numpy")  # as loaded already; another thread may still be importing it
    if numpy is not None and hasattr(numpy, "generic") and isinstance(v, (numpy.ndarray, numpy.generic)):
        _numpy(numpy, v, out, depth)
        return
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(v, (pandas.DataFrame, pandas.Series, pandas.Index)):
        _pandas(pandas, v, out, depth)
        return
    # Subclasses of builtins (a str subclass, a namedtuple, an OrderedDict ...).
    for base in (bool, int, float, str, bytes):
        if isinstance(v, base):
            out.append(b"B" + _qualname(t) + _EXACT[base](v))
            return
    if isinstance(v, (tuple, list)):
        out.append(b"B" + _qualname(t))
        _seq(b"l", v, out, depth)
        return
    if isinstance(v, dict):
        out.append(b"B" + _qualname(t))
        _enc(dict(v), out, depth)
        return
    if isinstance(v, (set, frozenset)):
        out.append(b"B" + _qualname(t))
        _enc(frozenset(v), out, depth)
        return
    # A plain Python object: its class and attributes. C types (locks, sockets, files,
    # generators) have no canonical value and are refused.
    state = getattr(v, "__dict__", None)
    if t.__flags__ & _HEAPTYPE and isinstance(state, dict) and not callable(v):
        out.append(b"O" + _qualname(t))
        _enc(state, out, depth)
        return
    raise Unhashable(f"a {t.__module__}.{t.__qualname__}")


def _when(v: Any) -> bytes:
    if isinstance(v, datetime.timedelta):
        return b"td%d,%d,%d" % (v.days, v.seconds, v.microseconds)
    tag = b"dt" if isinstance(v, datetime.datetime) else b"da" if isinstance(v, datetime.date) else b"ti"
    return tag + v.isoformat().encode()


def _numpy(np: Any, v: Any, out: list, depth: int) -> None:
    dtype = v.dtype
    dt = repr(dtype.descr).encode() if dtype.fields else dtype.str.encode()
    if isinstance(v, np.generic):
        if dtype.hasobject:
            _enc(v.item(), out, depth)
        else:
            out.append(b"g" + dt + b":" + v.tobytes())
        return
    out.append(b"A" + dt + b"%r" % (v.shape,))
    if dtype.hasobject:
        _enc(v.tolist(), out, depth)
    else:
        # hashed in place (no copy for contiguous arrays): a 100 MB array costs ~10 ms
        out.append(_digest(memoryview(np.ascontiguousarray(v)).cast("B")))


def _pandas(pd: Any, v: Any, out: list, depth: int) -> None:
    out.append(b"pd" + _qualname(type(v)))
    if isinstance(v, pd.DataFrame):
        _enc([str(c) for c in v.columns], out, depth)
        _enc([str(d) for d in v.dtypes], out, depth)
    elif isinstance(v, pd.Series):
        _enc([str(v.name), str(v.dtype)], out, depth)
    else:
        _enc(str(v.dtype), out, depth)
    hashed = pd.util.hash_pandas_object(v, index=not isinstance(v, pd.Index))
    out.append(_digest(memoryview(hashed.to_numpy()).cast("B")))


_EXACT: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda v: b"N",
    bool: lambda v: b"T" if v else b"F",
    int: lambda v: b"i%d;" % v,
    float: lambda v: b"f" + v.hex().encode(),
    complex: lambda v: b"c" + v.real.hex().encode() + b"," + v.imag.hex().encode(),
    str: lambda v: b"s" + _str(v),
    bytes: lambda v: b"b%d:" % len(v) + v,
    bytearray: lambda v: b"b%d:" % len(v) + bytes(v),
    range: lambda v: b"r%d,%d,%d" % (v.start, v.stop, v.step),
}


def encode(value: Any) -> bytes:
    """The canonical encoding of ``value`` (raises ``Unhashable`` / ``NotConcrete``)."""
    out: list = []
    _enc(value, out)
    return b"".join(out)


def fingerprint(value: Any) -> bytes:
    """xxh3_128 of the canonical encoding: 16 bytes, the same in every process.

    Example:
        >>> fingerprint(1).hex() == fingerprint(1).hex() != fingerprint(1.0).hex()
        True
    """
    rule = _EXACT.get(type(value))
    if rule is not None:
        return _digest(rule(value))
    out: list = []
    _enc(value, out)
    return _digest(b"".join(out))


# ---------------------------------------------------------------------------------------
# Key plans: the static part of a submission's keys, computed once


class KeyTaskRun(NamedTuple):
    """The task run a key is computed for, as ``context.task_run`` shows it (Prefect's names)."""

    id: str
    flow_run_id: str | None
    task_key: str
    name: str


@dataclass(slots=True)
class KeyContext:
    """What a ``cache_key_fn(context, parameters)`` receives about the run."""

    task: Any
    task_key: str
    task_run_id: str
    flow_run_id: str | None
    flow_parameters: dict
    parameters: dict | None = None

    @property
    def task_run(self) -> KeyTaskRun:
        return KeyTaskRun(self.task_run_id, self.flow_run_id, self.task_key, getattr(self.task, "name", ""))


class KeyColumn(NamedTuple):
    """One parameter of many runs, for ``KeyPlan.keys_for``: a list of values, or one value."""

    mapped: bool
    value: Any


@dataclass(slots=True)
class KeyPlan:
    """How to compute the keys of one submission's runs (picklable, shipped to workers)."""

    task_key: str
    prefix: bytes  # b"v1/{task_key}/"
    head: bytes  # digest input shared by every run: version + static parts
    positions: tuple[int, ...] = ()  # row positions of the hashed parameters
    names: tuple[bytes, ...] = ()
    per_run: bool = False  # RUN_ID outside a flow: the task run id joins the key
    key_fn: bool = False  # the task's cache_key_fn decides
    flow_run_id: str | None = None
    flow_parameters: dict | None = None
    problem: str | None = None  # why no run of this submission can be cached

    def key_fn_parameters(self, task: Any, row: tuple) -> dict:
        """The parameters a ``cache_key_fn`` receives: ``self`` (or ``cls``) first for a method, as in Prefect."""
        params = dict(zip(task.param_names, row))
        bound = bound_to(task.fn)
        return {bound.name: bound.value, **params} if bound is not None else params

    def key(self, task: Any, row: tuple, run_id: Callable[[], str]) -> bytes | None:
        """The key of one run from its parameter values in signature order.

        Raises ``Unhashable`` (its ``what`` then names the parameter) or ``NotConcrete``.
        """
        if self.problem is not None:
            return None
        if self.key_fn:
            params = self.key_fn_parameters(task, row)
            ctx = KeyContext(task, self.task_key, run_id(), self.flow_run_id, self.flow_parameters or {}, params)
            try:
                user = task.options.cache_key_fn(ctx, params)
            except Exception as exc:
                raise KeyFnFailed(f"cache_key_fn {getattr(task.options.cache_key_fn, '__name__', '?')!r} "
                                  f"raised {type(exc).__name__}: {exc}") from None
            if user is None:
                return None
            if not isinstance(user, str):
                raise TypeError(f"task {task.name!r}: cache_key_fn must return a str or None, got {user!r}")
            return self.prefix + _digest(self.head + b"fn\x00" + user.encode("utf-8", "surrogatepass"))
        parts = [self.head]
        for name, pos in zip(self.names, self.positions):
            parts.append(name)
            try:
                parts.append(fingerprint(row[pos]))
            except Unhashable as exc:
                raise Unhashable(exc.what, name.decode()) from None
        if self.per_run:
            parts.append(run_id().encode())
        return self.prefix + _digest(b"\x00".join(parts))

    def keys_for(self, task: Any, columns: list[KeyColumn], n: int,
                 run_id_at: Callable[[int], str]) -> tuple[list[bytes | None], Unhashable | None]:
        """Keys of ``n`` runs given column-wise (a ``KeyColumn`` per parameter, in signature
        order): equal to ``key`` row by row, but a broadcast value is fingerprinted once. Returns the keys (None where unhashable) and the first
        ``Unhashable`` met. Raises ``NotConcrete``.
        """
        if self.problem is not None:
            return [None] * n, None
        if self.key_fn:
            cols = [c.value if c.mapped else [c.value] * n for c in columns]
            rows = list(zip(*cols)) if cols else [()] * n
            by_fn: list[bytes | None] = []
            failed: KeyFnFailed | None = None
            for i in range(n):
                try:
                    by_fn.append(self.key(task, rows[i], lambda i=i: run_id_at(i)))
                except KeyFnFailed as exc:  # that run executes uncached; one warning for the submission
                    by_fn.append(None)
                    failed = failed or exc
            return by_fn, failed
        first: Unhashable | None = None
        fixed: list[Any] = []
        for name, pos in zip(self.names, self.positions):
            mapped, value = columns[pos]
            if not mapped:
                try:
                    fixed.append(fingerprint(value))
                except Unhashable as exc:
                    return [None] * n, Unhashable(exc.what, name.decode())
            else:
                fixed.append(value)
        head, prefix, names, per_run = self.head, self.prefix, self.names, self.per_run
        if not per_run:
            fast = _fast_keys(head, prefix, names, fixed, n)
            if fast is not None:
                return fast, None
        keys: list[bytes | None] = []
        append = keys.append
        for i in range(n):
            parts = [head]
            try:
                for name, f in zip(names, fixed):
                    parts.append(name)
                    parts.append(f if type(f) is bytes else fingerprint(f[i]))
            except Unhashable as exc:
                append(None)
                first = first or Unhashable(exc.what, name.decode())
                continue
            if per_run:
                parts.append(run_id_at(i).encode())
            append(prefix + _digest(b"\x00".join(parts)))
        return keys, first


def _atom_fingerprints(column: Any) -> list[bytes] | None:
    """Fingerprints of a mapped column of atoms (ints, strs, floats ...), None if any is not one.

    The per-element cost of a cached rerun is dominated by key computation: this
    dispatches on the exact type inline (no ``fingerprint`` call, no encoder list).
    """
    digest, exact = _digest, _EXACT
    if type(column) is range:
        return [digest(b"i%d;" % v) for v in column]
    try:
        return [digest(exact[type(v)](v)) for v in column]
    except KeyError:
        return None


def _fast_keys(head: bytes, prefix: bytes, names: tuple[bytes, ...], fixed: list, n: int) -> list | None:
    """``keys_for`` when every mapped hashed column holds atoms only (same bytes as ``key``)."""
    digest = _digest
    cols: list = []
    for f in fixed:
        if type(f) is bytes:
            cols.append(f)
            continue
        if len(f) != n:
            return None
        fps = _atom_fingerprints(f)
        if fps is None:
            return None
        cols.append(fps)
    if not cols:
        key = prefix + digest(head)
        return [key] * n
    # the parts joined with NUL: head, name1, fp1, name2, fp2 ...
    if len(cols) == 1 and type(cols[0]) is list:
        pre = head + b"\x00" + names[0] + b"\x00"
        return [prefix + digest(pre + fp) for fp in cols[0]]
    lists = [c if type(c) is list else [c] * n for c in cols]
    join = b"\x00".join
    out = []
    append = out.append
    for fps in zip(*lists):
        parts = [head]
        for name, fp in zip(names, fps):
            parts.append(name)
            parts.append(fp)
        append(prefix + digest(join(parts)))
    return out


_source_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def source_digest(fn: Callable) -> bytes:
    """Fingerprint of a function's source, computed once per function object.

    Reading the source costs ~0.2 ms and every submission of a TASK_SOURCE task asks.
    """
    try:
        return _source_digests[fn]
    except (KeyError, TypeError):
        pass
    digest = _read_source_digest(fn)
    try:
        _source_digests[fn] = digest
    except TypeError:  # not weak-referenceable: computed each time
        pass
    return digest


def _read_source_digest(fn: Callable) -> bytes:
    """The source's fingerprint (its code object's when the source is not found)."""
    fn = inspect.unwrap(fn)
    try:
        return fingerprint(inspect.getsource(fn))
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return fingerprint(repr(fn))
        return _digest(code.co_code + repr((code.co_consts, code.co_names)).encode())


class Bound(NamedTuple):
    """What a method's function is bound to: ``self`` (the instance) or ``cls`` (a classmethod's class)."""

    name: str
    value: Any


def bound_to(fn: Callable) -> Bound | None:
    """The instance (or class) a task's function is bound to, named by its first parameter."""
    owner = getattr(fn, "__self__", None)
    if owner is None or not inspect.ismethod(fn):
        return None
    try:
        first = next(iter(inspect.signature(fn.__func__).parameters))
    except (StopIteration, TypeError, ValueError):
        first = "cls" if isinstance(owner, type) else "self"
    return Bound(first, owner)


def _bound_part(task: Any, exclude: Any, plan: KeyPlan) -> bytes | None:
    """The key part of a method's instance (or class): its fingerprint, like any parameter's.

    Two instances share an entry only when their fingerprints are equal: the same class
    and equal attributes (``__dict__``), or equal ``__daskflow_cache_key__()``. An
    instance that cannot be fingerprinted makes the submission run uncached.
    """
    bound = bound_to(task.fn)
    if bound is None or bound.name in exclude:
        return None
    try:
        return bound.name.encode() + b"=" + fingerprint(bound.value)
    except (Unhashable, NotConcrete) as exc:
        plan.problem = (f"parameter {bound.name!r} (the {type(bound.value).__qualname__} the method is bound to, "
                        f"holding {exc}) cannot be hashed into a cache key; leave it out with "
                        f"cache_policy=INPUTS - {bound.name!r}, or give its class a __daskflow_cache_key__ method")
        return None


def make_plan(task: Any, flow_run_id: str | None, flow_parameters: dict | None) -> KeyPlan:
    """The key plan of a submission of ``task`` made in the given flow run.

    A method's ``self`` (or a classmethod's ``cls``) is one of its inputs: it joins the
    key as a static part (fingerprinted once per submission), so plain functions keep
    their keys.
    """
    opts = task.options
    prefix = VERSION + b"/" + task.task_key.encode() + b"/"
    if opts.cache_key_fn is not None:
        return KeyPlan(task.task_key, prefix, VERSION, key_fn=True, flow_run_id=flow_run_id,
                       flow_parameters=dict(flow_parameters or {}))
    policy = effective_policy(opts.cache_policy, opts.persist_result)
    head = [VERSION]
    plan = KeyPlan(task.task_key, prefix, b"", flow_run_id=flow_run_id)
    for part in policy.parts():
        if isinstance(part, Inputs):
            keep = [(i, n) for i, n in enumerate(task.param_names) if n not in part.exclude]
            plan.positions = tuple(i for i, _ in keep)
            plan.names = tuple(n.encode() for _, n in keep)
            head.append(b"inputs")
            bound = _bound_part(task, part.exclude, plan)
            if bound is not None:
                head.append(b"bound" + bound)
        elif isinstance(part, TaskSource):
            head.append(b"source" + source_digest(task.fn))
        elif isinstance(part, FlowParameters):
            try:
                head.append(b"flowparams" + fingerprint(dict(flow_parameters or {})))
            except (Unhashable, NotConcrete) as exc:
                plan.problem = f"a flow parameter is not hashable ({exc}); exclude FLOW_PARAMETERS"
        elif isinstance(part, RunId):
            if flow_run_id is None:
                plan.per_run = True
                head.append(b"runid")
            else:
                head.append(b"runid" + flow_run_id.encode())
    plan.head = b"\x00".join(head)
    return plan


def display(key: bytes) -> str:
    """A key as text: ``v1/{task_key}/{hex digest}``."""
    return key[:-16].decode() + key[-16:].hex()
