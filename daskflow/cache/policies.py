"""Cache policies: which parts of a run make up its cache key.

A policy is a set of *parts*, each contributing to the key: ``INPUTS`` (the run's
parameters), ``TASK_SOURCE`` (the task function's source code), ``FLOW_PARAMETERS``
(the enclosing flow run's parameters) and ``RUN_ID`` (the enclosing flow run's id, so
a result is reused only inside one flow run). Parts compose with ``+`` and the order
does not matter (``INPUTS + TASK_SOURCE`` and ``TASK_SOURCE + INPUTS`` give the same
keys). ``INPUTS - "name"`` leaves a parameter out of the key (a client, a lock, a
logger...). ``NO_CACHE`` disables caching and absorbs whatever it is added to.

Policies only *describe* keys; ``daskflow.cache.keys`` computes them, so the client
and the workers compute the same key with the same code.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CachePolicy", "Inputs", "TaskSource", "FlowParameters", "RunId", "NoCache", "CompoundPolicy",
           "CompoundCachePolicy",
           "INPUTS", "TASK_SOURCE", "FLOW_PARAMETERS", "RUN_ID", "NO_CACHE", "DEFAULT", "SERIALIZERS"]

#: ``result_serializer`` values a task may name (default: cloudpickle).
SERIALIZERS = ("cloudpickle", "pickle", "json")


class CachePolicy:
    """Base class of cache policies: compose with ``+``, exclude inputs with ``-``.

    Example:
        >>> from daskflow.cache import INPUTS, TASK_SOURCE
        >>> policy = INPUTS - "client" + TASK_SOURCE
    """

    is_no_cache = False
    _order = 0  # position of the part in a key: keys do not depend on how parts were added
    #: set by ``configure``; not part of a policy's equality, and keys never depend on them
    isolation_level: Any = None
    lock_manager: Any = None

    def configure(self, isolation_level: Any = None, lock_manager: Any = None, key_storage: Any = None) -> CachePolicy:
        """A copy of this policy with a transaction isolation level and lock manager, as Prefect's.

        With ``isolation_level=SERIALIZABLE`` the runs of one cache key execute one at a time:
        the first takes the lock (``lock_manager``, default a ``FileLockManager`` at the
        cache's home), runs and commits; the others wait and read the committed value.

        Example:
            >>> from daskflow.cache.locks import IsolationLevel
            >>> p = INPUTS.configure(isolation_level=IsolationLevel.SERIALIZABLE)
            >>> p.isolation_level.name, p == INPUTS
            ('SERIALIZABLE', True)
        """
        from daskflow.cache.locks import LockManager, isolation_of

        if key_storage is not None:
            raise TypeError("configure(key_storage=...): daskflow keeps cache entries in its LMDB result store "
                            "(and result_storage for values); key_storage is not supported")
        level = isolation_of(isolation_level, "configure()")
        if lock_manager is not None and not isinstance(lock_manager, LockManager):
            raise TypeError(f"configure(lock_manager=...) must be a daskflow LockManager (FileLockManager, "
                            f"DaskLockManager), got {lock_manager!r}")
        return self._with_config(level if level is not None else self.isolation_level,
                                 lock_manager if lock_manager is not None else self.lock_manager)

    def _with_config(self, isolation_level: Any, lock_manager: Any) -> CachePolicy:
        copy = dataclasses.replace(self) if dataclasses.is_dataclass(self) else self
        if copy is self and (isolation_level, lock_manager) != (self.isolation_level, self.lock_manager):
            raise TypeError(f"{type(self).__name__} cannot be configured")
        object.__setattr__(copy, "isolation_level", isolation_level)
        object.__setattr__(copy, "lock_manager", lock_manager)
        return copy

    def carry_config(self, new: CachePolicy, other: Any = None) -> CachePolicy:
        """``new`` made from this policy (and ``other``) keeps their isolation and lock manager."""
        level = self.isolation_level or getattr(other, "isolation_level", None)
        manager = self.lock_manager or getattr(other, "lock_manager", None)
        if (level, manager) == (None, None) or new.is_no_cache:
            return new
        return new._with_config(level, manager)

    def parts(self) -> tuple[CachePolicy, ...]:
        return (self,)

    def __add__(self, other: Any) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        compound = isinstance(self, CompoundPolicy) or isinstance(other, CompoundPolicy)
        return self.carry_config(_combine(self.parts() + other.parts(), compound), other)

    def __sub__(self, name: Any) -> CachePolicy:
        """As in Prefect: excluding an input from a policy that does not key on inputs changes nothing."""
        _check_name(name)
        return self

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        """This policy's key for a run, as hex text, or None when the policy gives no key.

        ``task_ctx`` is what a ``cache_key_fn`` receives (``.task``, ``.task_run``); the
        engine computes the stored keys with ``daskflow.cache.keys`` from the same parts.
        """
        raise NotImplementedError


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"exclude parameters from a cache policy by name (a str), got {name!r}")


def _hex(value: Any) -> str:
    from daskflow.cache.keys import fingerprint

    return fingerprint(value).hex()


@dataclass(frozen=True, repr=False)
class Inputs(CachePolicy):
    """Key on the run's parameters, except those in ``exclude`` (a sorted list, as Prefect's)."""

    exclude: list[str] = field(default_factory=list)
    _order = 1

    def __post_init__(self) -> None:
        names = list(self.exclude)
        for name in names:
            _check_name(name)
        object.__setattr__(self, "exclude", sorted(set(names)))

    def __hash__(self) -> int:
        return hash((Inputs, tuple(self.exclude)))

    def __sub__(self, name: Any) -> Inputs:
        _check_name(name)
        return self.carry_config(Inputs([*self.exclude, name]))  # type: ignore[return-value]

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        if not inputs:
            return None
        return _hex({k: v for k, v in inputs.items() if k not in self.exclude})

    def __repr__(self) -> str:
        return "INPUTS" + "".join(f" - {n!r}" for n in sorted(self.exclude))


@dataclass(frozen=True, repr=False)
class TaskSource(CachePolicy):
    """Key on the source code of the task's function: editing it invalidates the cache."""

    _order = 2

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        if task_ctx is None:
            return None
        from daskflow.cache.keys import source_digest

        task = task_ctx.task  # a daskflow Task, or any function (its source), as in Prefect
        return source_digest(getattr(task, "fn", task)).hex()

    def __repr__(self) -> str:
        return "TASK_SOURCE"


@dataclass(frozen=True, repr=False)
class FlowParameters(CachePolicy):
    """Key on the parameters of the enclosing flow run (none outside a flow)."""

    _order = 3

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        return _hex(dict(flow_parameters)) if flow_parameters else None

    def __repr__(self) -> str:
        return "FLOW_PARAMETERS"


@dataclass(frozen=True, repr=False)
class RunId(CachePolicy):
    """Key on the enclosing flow run's id: results are reused within one flow run only.

    Outside a flow the task run's own id is used, so such runs never hit.
    """

    _order = 4

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        if task_ctx is None:
            return None
        run = task_ctx.task_run
        return str(run.flow_run_id if run.flow_run_id is not None else run.id)

    def __repr__(self) -> str:
        return "RUN_ID"


@dataclass(frozen=True, repr=False)
class NoCache(CachePolicy):
    """Never cache (and never read the cache)."""

    is_no_cache = True
    _order = 5

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NO_CACHE"


@dataclass(frozen=True, repr=False)
class CompoundPolicy(CachePolicy):
    """Several parts, as Prefect's ``CompoundCachePolicy(policies=[...])``; usually built by ``+``.

    Nested compounds are flattened and the ``Inputs`` parts merged (their exclusions joined);
    the parts are kept in a fixed order, so keys do not depend on how the sum was written.
    """

    policies: list[CachePolicy] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", _merged([q for p in self.policies for q in p.parts()]))

    def __hash__(self) -> int:
        return hash((CompoundPolicy, tuple(self.policies)))

    def parts(self) -> tuple[CachePolicy, ...]:
        return tuple(self.policies)

    def __sub__(self, name: Any) -> CachePolicy:
        _check_name(name)
        if not any(isinstance(p, Inputs) for p in self.policies):
            return self
        return self.carry_config(_combine(tuple(p - name if isinstance(p, Inputs) else p for p in self.policies), True))

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any] | None, flow_parameters: dict[str, Any] | None,
                    **kwargs: Any) -> str | None:
        """The parts' keys hashed together; parts without a key are left out (None if none has one)."""
        keys = [k for p in self.policies if (k := p.compute_key(task_ctx, inputs, flow_parameters, **kwargs))]
        return _hex(keys) if keys else None

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.policies) or "CompoundPolicy()"


def _merged(parts: list[CachePolicy]) -> list[CachePolicy]:
    """One part of each kind (``Inputs`` exclusions joined), in key order."""
    merged: dict[type, CachePolicy] = {}
    for p in parts:
        old = merged.get(type(p))
        if isinstance(p, Inputs) and isinstance(old, Inputs):
            p = Inputs([*old.exclude, *p.exclude])
        merged[type(p)] = p
    return sorted(merged.values(), key=lambda p: p._order)


def _combine(parts: tuple[CachePolicy, ...], compound: bool = False) -> CachePolicy:
    if any(p.is_no_cache for p in parts):
        return NO_CACHE
    ordered = _merged(list(parts))
    if len(ordered) == 1 and len(parts) == 1 and not compound:
        return ordered[0]
    return CompoundPolicy(ordered)  # a sum stays compound, as in Prefect, even when its parts merge


#: Prefect's name for ``CompoundPolicy``
CompoundCachePolicy = CompoundPolicy

INPUTS = Inputs()
TASK_SOURCE = TaskSource()
FLOW_PARAMETERS = FlowParameters()
RUN_ID = RunId()
NO_CACHE = NoCache()
DEFAULT = INPUTS + TASK_SOURCE + RUN_ID


def serializable(cache_policy: Any) -> bool:
    """Whether runs of this policy take a lock per cache key (``isolation_level=SERIALIZABLE``)."""
    level = getattr(cache_policy, "isolation_level", None)
    return level is not None and level.name == "SERIALIZABLE"


def is_caching(cache_policy: Any, cache_key_fn: Any, persist_result: bool | None) -> bool:
    """As in Prefect: a task caches with a policy or key function, or persist_result=True.

    ``persist_result=False`` turns caching off whatever the policy says.
    """
    if persist_result is False:
        return False
    if cache_key_fn is not None:
        return True
    if cache_policy is not None:
        return getattr(cache_policy, "is_no_cache", False) is False
    return bool(persist_result)


def effective_policy(cache_policy: Any, persist_result: bool | None) -> CachePolicy:
    """The policy a caching task without a ``cache_key_fn`` uses."""
    return cache_policy if cache_policy is not None else DEFAULT


def validate(task_name: str, cache_policy: Any, cache_expiration: Any, result_serializer: Any) -> None:
    """Clear errors at decoration time for cache options of the wrong kind."""
    if cache_policy is not None and not isinstance(cache_policy, CachePolicy):
        raise TypeError(f"task {task_name!r}: cache_policy must be a daskflow.cache policy "
                        f"(INPUTS, TASK_SOURCE, ..., combined with +), got {cache_policy!r}")
    if cache_expiration is not None and not isinstance(cache_expiration, datetime.timedelta):
        raise TypeError(f"task {task_name!r}: cache_expiration must be a datetime.timedelta, "
                        f"got {cache_expiration!r}")
    if result_serializer is not None and result_serializer not in SERIALIZERS:
        raise ValueError(f"task {task_name!r}: result_serializer must be one of {SERIALIZERS}, "
                         f"got {result_serializer!r}")
