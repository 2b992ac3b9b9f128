"""``Task``: a decorated function whose every call is a task run.

A task holds the user's function and a frozen ``TaskOptions``; ``with_options``
returns a copy with some options changed. Calling forms:

- ``t(x)`` runs inline in the caller and returns the value (or the final ``State``
  with ``return_state=True``); an ``async def`` task called inside a running event
  loop returns an awaitable instead.
- ``t.submit(x)`` returns a ``TaskRunFuture``; ``t.map(xs)`` a ``MapFutures``.
- ``t.delay(x)`` enqueues a background run for a task worker (``daskflow.background``).
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import logging
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Literal, ParamSpec, TypeVar, overload

import cloudpickle
import xxhash

from daskflow.engine.core.hooks import call_hooks, validate_hooks
from daskflow.engine.core.input_reprs import redacted_names
from daskflow.engine.core.retries import normalize_delays
from daskflow.engine.core.tracebacks import portable, script_module
from daskflow.engine.worker.lifecycle import jittered
from daskflow.exceptions import ReservedArgumentError

if TYPE_CHECKING:
    from daskflow.background.futures import BackgroundFuture
    from daskflow.engine.client.futures import MapFutures, TaskRunFuture
    from daskflow.engine.core.context import TaskRunContext
    from daskflow.engine.core.states import State

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("daskflow")

RESERVED = frozenset({"return_state", "wait_for"})
HOOKS = ("on_completion", "on_failure", "on_running", "on_commit", "on_rollback")
MAX_DELAYS = 50  # as in Prefect


_submit: Any = None  # engine.client.submit, loaded on first use: a worker that unpickles a task never imports it


def _load_submit() -> Any:
    global _submit
    from daskflow.engine.client import submit

    _submit = submit
    return submit


@dataclass(frozen=True)
class TaskOptions:
    """Every option of a task, validated once, at decoration time."""

    name: str
    description: str | None = None
    tags: frozenset[str] = frozenset()
    version: str | None = None
    retries: int = 0
    retry_delay_seconds: Any = 0
    retry_jitter_factor: float | None = None
    retry_condition_fn: Callable | None = None
    timeout_seconds: float | None = None
    cache_policy: Any = None
    cache_key_fn: Callable | None = None
    cache_expiration: datetime.timedelta | None = None
    refresh_cache: bool = False
    persist_result: bool | None = None
    result_serializer: Any = None
    result_storage: str | None = None  # an fsspec URL for cached results (cache.storage); None: the flow's, or config
    task_run_name: str | Callable | None = None
    log_prints: bool = False
    redact_inputs: bool | tuple[str, ...] = False  # what a failed run's recorded inputs leave out (True: all)
    on_completion: tuple[Callable, ...] = ()
    on_failure: tuple[Callable, ...] = ()
    on_running: tuple[Callable, ...] = ()
    on_commit: tuple[Callable, ...] = ()
    on_rollback: tuple[Callable, ...] = ()
    delays: tuple[float, ...] = field(default=(0.0,), repr=False)

    def __post_init__(self) -> None:
        name = self.name
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"task {name!r}: retries must be an int >= 0, got {self.retries!r}")
        if self.retry_jitter_factor is not None and self.retry_jitter_factor < 0:
            raise ValueError(f"task {name!r}: `retry_jitter_factor` must be >= 0. (got {self.retry_jitter_factor!r})")
        if self.timeout_seconds is not None and not self.timeout_seconds > 0:
            raise ValueError(f"task {name!r}: timeout_seconds must be > 0, got {self.timeout_seconds!r}")
        if self.retry_condition_fn is not None and not callable(self.retry_condition_fn):
            raise TypeError(f"task {name!r}: Expected `retry_condition_fn` to be callable, got "
                            f"{type(self.retry_condition_fn).__name__} instead.")
        if self.cache_key_fn is not None and not callable(self.cache_key_fn):
            raise TypeError(f"task {name!r}: cache_key_fn must be callable")
        run_name = self.task_run_name
        if run_name is not None and not isinstance(run_name, str) and not callable(run_name):
            raise TypeError(f"task {name!r}: Expected string or callable for 'task_run_name'; got "
                            f"{type(run_name).__name__} instead.")
        if isinstance(self.retry_delay_seconds, (list, tuple)) and len(self.retry_delay_seconds) > MAX_DELAYS:
            raise ValueError(f"task {name!r}: Can not configure more than {MAX_DELAYS} retry delays per task. "
                             f"(got {len(self.retry_delay_seconds)})")
        for hook in HOOKS:
            object.__setattr__(self, hook, validate_hooks(f"task {name!r}", hook, getattr(self, hook)))
        object.__setattr__(self, "tags", frozenset(self.tags or ()))
        redact = self.redact_inputs
        if not isinstance(redact, bool):
            if isinstance(redact, str):
                redact = (redact,)
            if not all(isinstance(r, str) for r in redact):
                raise TypeError(f"task {name!r}: redact_inputs must be True, False or argument names, got {redact!r}")
            object.__setattr__(self, "redact_inputs", tuple(redact))
        object.__setattr__(self, "delays", normalize_delays(self.retry_delay_seconds, self.retries, name))
        from daskflow.cache.policies import validate

        validate(name, self.cache_policy, self.cache_expiration, self.result_serializer)


@dataclass(slots=True)
class TaskRun:
    """The record of one task run that hooks and ``retry_condition_fn`` receive."""

    id: str
    name: str
    task_key: str
    flow_run_id: str | None
    run_count: int
    parameters: dict[str, Any]


def compute_task_key(name: str, fn: Callable) -> str:
    """``"{name}-{8 hex}"``: stable across processes and machines for the same function."""
    qualname = f"{script_module(fn)}.{getattr(fn, '__qualname__', repr(fn))}"
    return f"{name}-{xxhash.xxh3_64_hexdigest(f'{name}|{qualname}'.encode())[:8]}"


class Task(Generic[P, R]):
    """A function whose every call is a task run with a state, retries and a cache.

    Example:
        >>> @task(retries=2)
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> add(1, 2)
        3
    """

    def __init__(self, fn: Callable[P, R], options: TaskOptions | None = None, **kwargs: Any) -> None:
        self._binds_class = isinstance(fn, classmethod)
        self._static = isinstance(fn, staticmethod)
        if isinstance(fn, (classmethod, staticmethod)):  # @task over @classmethod / @staticmethod
            fn = fn.__func__  # type: ignore[assignment]
        if not callable(fn):
            raise TypeError(f"@task needs a callable, got {type(fn).__name__}: {fn!r}")
        if options is None:
            kwargs.setdefault("name", getattr(fn, "__name__", type(fn).__name__))
            options = TaskOptions(**kwargs)
        self.fn = fn
        self.options = options
        self.name = options.name
        #: the task's own set of tags, as Prefect's (adding to it is kept; ``with_options`` copies it)
        self.tags: set[str] = set(options.tags)
        self.task_key = compute_task_key(self.name, fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        sig = inspect.signature(fn)
        clash = RESERVED.intersection(sig.parameters)
        if clash:
            raise ReservedArgumentError(f"task {self.name!r}: {reserved_message(clash)}")
        self._signature = sig
        self.param_names = tuple(sig.parameters)
        #: what a failed run's recorded inputs leave out (``engine.core.input_reprs``)
        self.redact = redacted_names(options.redact_inputs, self.name, self.param_names)
        kinds = [p.kind for p in sig.parameters.values()]
        self._positional = all(
            k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds
        )
        self._kinds = kinds
        #: the name of the ``**kwargs`` parameter, if the function has one
        self.var_keyword = next((p.name for p in sig.parameters.values()
                                 if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        empty = inspect.Parameter.empty
        self._defaults = tuple(p.default for p in sig.parameters.values())
        self._min_args = sum(1 for d in self._defaults if d is empty) if self._positional else -1
        if self._positional and empty in self._defaults[self._min_args:]:
            self._min_args = -1  # a default before a required parameter: use the slow bind
        from daskflow.cache.policies import serializable

        #: runs of one cache key execute one at a time (``cache_policy.configure(isolation_level=SERIALIZABLE)``)
        self.serializable = self.caches and serializable(options.cache_policy)
        # cache or commit/rollback hooks: runs go through daskflow.engine.worker.managed
        self.managed = bool(self.caches or options.on_commit or options.on_rollback)
        # nothing in a run's lifecycle but calling the function (and maybe the cache)
        self.plain = not (
            options.retries or options.timeout_seconds or self.is_async or options.log_prints
            or options.on_completion or options.on_failure or options.on_running
            or options.task_run_name or options.on_commit or options.on_rollback or not self._positional
            or self.serializable  # one lock per run: runs go through the per-run loop
        )
        self.fast_path = self.plain and not self.managed
        self._pickled: bytes | None = None
        self._by_value = False

    def pickled(self) -> bytes:
        """This task, pickled (cloudpickle): how chunk specs carry it to the workers.

        Kept after the first call when pickling took nothing by value (the function and
        every option are importable by name: ``pickle`` and ``cloudpickle`` agree); a task
        defined in ``__main__`` or as a closure is pickled afresh each time, so values it
        captures are those of the submission, as with ``client.submit``.
        """
        blob = self._pickled
        if blob is None:
            blob = cloudpickle.dumps(self, protocol=5)
            if not self._by_value:
                try:
                    same = pickle.dumps(self, protocol=5) == blob
                except Exception:  # something only cloudpickle can pickle (by value)
                    same = False
                if same:
                    self._pickled = blob
                else:
                    self._by_value = True
        return blob

    def __getstate__(self) -> dict:
        fn = classmethod(self.fn) if self._binds_class else staticmethod(self.fn) if self._static else portable(self.fn)
        return {"fn": fn, "options": self.current_options()}

    def current_options(self) -> TaskOptions:
        """The options with the tags as they are now (``task.tags`` is a set users add to)."""
        options = self.options
        if self.tags != options.tags:
            options = dataclasses.replace(options, tags=frozenset(self.tags))
        return options

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["fn"], state["options"])  # type: ignore[misc]

    def __get__(self, instance: Any, owner: type | None = None) -> Task[P, R]:
        """A task in a class binds as the function would: to the instance, or to the class."""
        if self._binds_class:
            return Task(self.fn.__get__(owner if owner is not None else type(instance), None), self.current_options())
        if instance is None or self._static:
            return self
        return Task(self.fn.__get__(instance, owner), self.current_options())  # type: ignore[attr-defined]

    # -- options read as Prefect reports them ---------------------------------------------
    @property
    def task_run_name(self) -> str | Callable | None:
        return self.options.task_run_name

    @task_run_name.setter
    def task_run_name(self, value: str | Callable | None) -> None:
        """Set after decoration, as Prefect allows: later runs take the new name."""
        self.__init__(self.fn, dataclasses.replace(self.current_options(), task_run_name=value))  # type: ignore[misc]

    @property
    def cache_policy(self) -> Any:
        """The policy as Prefect reports it: ``DEFAULT`` when none was given (caching itself
        stays opt-in), ``NO_CACHE`` with ``persist_result=False``."""
        from daskflow.cache.policies import DEFAULT, NO_CACHE

        o = self.options
        if o.persist_result is False:
            return NO_CACHE
        return DEFAULT if o.cache_policy is None else o.cache_policy

    @property
    def persist_result(self) -> bool | None:
        """``None`` unless set, True when a cache policy or key function implies it (as in Prefect)."""
        o = self.options
        if o.persist_result is None and (o.cache_key_fn is not None or (
                o.cache_policy is not None and not getattr(o.cache_policy, "is_no_cache", False))):
            return True
        return o.persist_result

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, key={self.task_key!r})"

    def __getattr__(self, name: str) -> Any:
        # options read as attributes: task.retries, task.cache_policy, ...
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        try:
            return getattr(self.options, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    @property
    def caches(self) -> bool:
        o = self.options
        from daskflow.cache.policies import is_caching

        return is_caching(o.cache_policy, o.cache_key_fn, o.persist_result)

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with some options changed.

        Example:
            >>> slow_add = add.with_options(name="slow-add", retries=5)  # doctest: +SKIP
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(TaskOptions)}
        if unknown:
            raise TypeError(f"task {self.name!r}: unknown option(s) {sorted(unknown)}")
        changes.setdefault("tags", frozenset(self.tags))  # as Prefect: a copy of the task's own tags
        if "retries" in changes and "retry_delay_seconds" not in changes:
            changes["retry_delay_seconds"] = self.options.retry_delay_seconds
        return Task(self.fn, dataclasses.replace(self.options, **changes))

    # -- hook decorators ------------------------------------------------------------
    def _add_hook(self, kind: str, fn: Callable) -> Callable:
        options = dataclasses.replace(self.current_options(), **{kind: (*getattr(self.options, kind), fn)})
        self.__init__(self.fn, options)  # type: ignore[misc]
        return fn

    def on_completion(self, fn: Callable) -> Callable:
        return self._add_hook("on_completion", fn)

    def on_failure(self, fn: Callable) -> Callable:
        return self._add_hook("on_failure", fn)

    def on_running(self, fn: Callable) -> Callable:
        return self._add_hook("on_running", fn)

    def on_commit(self, fn: Callable) -> Callable:
        return self._add_hook("on_commit", fn)

    def on_rollback(self, fn: Callable) -> Callable:
        return self._add_hook("on_rollback", fn)

    # -- calling ----------------------------------------------------------------------
    # Typing: the first overload of each calling form is pure ``P``, so a type checker checks
    # the arguments; forms with daskflow's own keywords follow (checked loosely, as Prefect's).
    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, *args: P.args, return_state: Literal[True],  # type: ignore[valid-type]
                 **kwargs: P.kwargs) -> State[R]: ...

    @overload
    def __call__(self, *args: P.args, wait_for: Iterable[Any],  # type: ignore[valid-type]
                 **kwargs: P.kwargs) -> R: ...

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Iterable[Any] | None = None,
                 **kwargs: Any) -> Any:
        submit = _submit or _load_submit()
        if self.is_async and loop_running():
            return submit.call_inline_async(self, args, kwargs, wait_for, return_state)
        return submit.call_inline(self, args, kwargs, wait_for, return_state)

    @overload
    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskRunFuture[R]: ...

    @overload
    def submit(self, *args: P.args, return_state: Literal[True],  # type: ignore[valid-type]
               **kwargs: P.kwargs) -> State[R]: ...

    @overload
    def submit(self, *args: P.args, wait_for: Iterable[Any] | None,  # type: ignore[valid-type]
               **kwargs: P.kwargs) -> TaskRunFuture[R]: ...

    def submit(self, *args: Any, wait_for: Iterable[Any] | None = None, return_state: bool = False,
               **kwargs: Any) -> Any:
        """Start a run on the current task runner and return its future at once.

        With ``return_state=True`` wait for the run and return its final ``State``.

        Example:
            >>> future = add.submit(1, 2)  # doctest: +SKIP
            >>> future.result()            # doctest: +SKIP
            3
        """
        from daskflow.engine.client.submit import submit_run

        from daskflow.engine.api.self_waits import watch_wait_list

        future = submit_run(self, args, kwargs, wait_for)
        watch_wait_list(future, wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    @overload
    def map(self, *args: Any, return_state: Literal[True], **kwargs: Any) -> list[State[R]]: ...

    @overload
    def map(self, *args: Any, **kwargs: Any) -> MapFutures[R]: ...

    def map(self, *args: Any, wait_for: Iterable[Any] | None = None, chunksize: int | None = None,
            deferred: bool = False, return_state: bool = False, **kwargs: Any) -> Any:
        """Start one run per element of the iterable arguments; broadcast the rest.

        ``unmapped(x)``, strings, bytes and non-iterables are passed whole to every run.
        ``chunksize`` fixes how many runs one Dask task executes (default: adaptive).
        ``deferred=True`` delays one background run per element (see ``delay``) and
        returns a list of ``BackgroundFuture``.

        Example:
            >>> futures = add.map([1, 2, 3], unmapped(10))  # doctest: +SKIP
            >>> futures.result()                           # doctest: +SKIP
            [11, 12, 13]
        """
        if deferred:
            if wait_for is not None or chunksize is not None:
                raise TypeError(f"task {self.name!r}: .map(deferred=True) takes neither wait_for nor chunksize "
                                "(each element is its own background run, enqueued at once)")
            from daskflow.background.client import delay_map

            return delay_map(self, args, kwargs)  # type: ignore[return-value]
        from daskflow.engine.client.submit import submit_map

        futures = submit_map(self, args, kwargs, wait_for, chunksize)
        if return_state:  # every run's final State, in order
            return futures.states
        return futures

    def delay(self, *args: Any, **kwargs: Any) -> BackgroundFuture[R]:
        """Enqueue a background run for a task worker; return its future at once.

        Needs a daskflow server (``daskflow server start``, ``DASKFLOW_SCHEDULER_ADDRESS``)
        and a task worker serving this task (``daskflow worker module:task``).

        Example:
            >>> future = add.delay(1, 2)      # doctest: +SKIP
            >>> future.result(timeout=30)     # doctest: +SKIP
            3
        """
        from daskflow.background.client import delay

        return delay(self, args, kwargs)

    # -- used by the engine -------------------------------------------------------------
    def row_of(self, args: tuple, kwargs: dict) -> tuple:
        """Parameter values in signature order (defaults applied)."""
        if not kwargs and 0 <= self._min_args <= len(args) <= len(self.param_names):
            return args + self._defaults[len(args):]
        return tuple(self.bind_params(args, kwargs).values())

    def bind_params(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r}: {exc}") from None
        bound.apply_defaults()
        return bound.arguments

    def given_params(self, args: tuple, kwargs: dict) -> set[str]:
        """The parameters a call gave a value for (the others take their defaults)."""
        return set(self._signature.bind(*args, **kwargs).arguments)

    def split_row(self, row: tuple) -> tuple[tuple, dict]:
        """Positional args and kwargs for a row of parameter values in signature order."""
        if self._positional:
            return row, {}
        args: list = []
        kwargs: dict = {}
        for kind, name, value in zip(self._kinds, self.param_names, row):
            if kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[name] = value
            else:
                args.append(value)
        return tuple(args), kwargs

    def parameters_of(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The run's parameters by name; a method's ``self`` (or ``cls``) first, as Prefect shows them."""
        from daskflow.cache.keys import bound_to

        params = dict(self._signature.bind(*args, **kwargs).arguments)
        owner = bound_to(self.fn)
        return {owner.name: owner.value, **params} if owner is not None else params

    def run_name_for(self, args: tuple, kwargs: dict) -> str:
        template = self.options.task_run_name
        if template is None:
            return ""
        if callable(template):
            name = template(parameters=self.parameters_of(args, kwargs)) if takes_parameters(template) else template()
            if not isinstance(name, str):
                raise TypeError(f"task {self.name!r}: Callable {template} for 'task_run_name' returned type "
                                f"{type(name).__name__} but a string is required.")
            return name
        return template.format(**self.parameters_of(args, kwargs))

    def _task_run(self, ctx: TaskRunContext, args: tuple, kwargs: dict) -> TaskRun:
        return TaskRun(ctx.task_run_id, ctx.run_name, self.task_key,
                       ctx.flow_run_id, ctx.run_count, self.parameters_of(args, kwargs))

    def fire_hook(self, kind: str, ctx: TaskRunContext, args: tuple, kwargs: dict, state: State) -> None:
        """Call the ``kind`` hooks with ``(task, task_run, state)``; async hooks are awaited."""
        hooks = getattr(self.options, kind)
        if hooks:
            call_hooks(hooks, (self, self._task_run(ctx, args, kwargs), state), kind, f"task {self.name!r}")

    def should_retry(self, ctx: TaskRunContext, args: tuple, kwargs: dict, state: State) -> bool:
        condition = self.options.retry_condition_fn
        if condition is None:
            return True
        try:
            return bool(condition(self, self._task_run(ctx, args, kwargs), state))
        except Exception:
            logger.exception("retry_condition_fn of task %r raised; not retrying", self.name)
            return False

    def retry_delay_for(self, run_count: int) -> float:
        delays = self.options.delays
        delay = delays[min(run_count - 1, len(delays) - 1)]
        return jittered(delay, self.options.retry_jitter_factor)


def reserved_message(clash: Iterable[str]) -> str:
    """Prefect's words for a function that uses a reserved parameter name."""
    names = sorted(clash)
    return " ".join(f"{n!r} is a reserved argument name and cannot be used." for n in names) + " Rename it."


def takes_parameters(fn: Callable) -> bool:
    """Whether a run-name callable takes the run's ``parameters`` (Prefect passes them then)."""
    try:
        return "parameters" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def loop_running() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(**options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Callable | None = None, **options: Any) -> Any:
    """Turn a function into a ``Task``; usable bare (``@task``) or with options.

    Example:
        >>> @task(name="double", retries=3, retry_delay_seconds=[1, 2, 4])
        ... def double(x):
        ...     return 2 * x
        >>> double(21)
        42
    """
    if __fn is not None:
        return Task(__fn, **options)
    if options.get("name") is not None and not isinstance(options["name"], str):
        raise TypeError(f"@task(name=...) must be a string, got {options['name']!r}")
    return lambda fn: Task(fn, **options)
