"""Retrying a flow run: ``Flow.retry(flow_run_id)`` and ``daskflow flow-runs retry``.

A retry runs the flow function again, as the same flow run (its id, its record: the record's
``retries`` list and ``attempt`` say so), with the parameters the flow run recorded when it
started (``cache.kept.FlowSource``). Runs that completed in an earlier attempt are not run
again: their kept values (``engine.worker.keep``, which also says how a run of the retry is
matched with a run of the earlier attempt) come back as runs in state ``Cached``, and the
runs that did not complete (Failed, Crashed, Cancelled, NotReady, never started) execute,
with whatever depends on them.

Before anything runs, the flow run is checked: it must be known (in the run store, or its
source record in the result storage for a retry from another host), not running any more
(its owner, ``daskflow.owners``, is dead or it reached a final state; a process that was
SIGKILLed is found dead here and its runs end Crashed first), and its parameters must have
been recorded. Otherwise ``CannotRetry`` says why and nothing runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import uuid
from typing import TYPE_CHECKING, Any

from daskflow import config
from daskflow.engine.client import resume as keeping
from daskflow.exceptions import CannotRetry

if TYPE_CHECKING:
    from daskflow.engine.api.flows import Flow

FINAL_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def retry_flow_run(flow: Flow, flow_run_id: str, return_state: bool = False) -> Any:
    """Run flow run ``flow_run_id`` of ``flow`` again, reusing what completed (see the module)."""
    again, parameters = prepare(flow, flow_run_id)
    if flow.is_async:
        return _retry_async(flow, again, parameters, return_state)
    token = keeping.resuming.set(again)
    try:
        return flow(**parameters, return_state=return_state)
    finally:
        keeping.resuming.reset(token)


async def _retry_async(flow: Flow, again: keeping.Resume, parameters: dict, return_state: bool) -> Any:
    token = keeping.resuming.set(again)
    try:
        return await flow(**parameters, return_state=return_state)
    finally:
        keeping.resuming.reset(token)


def prepare(flow: Flow, flow_run_id: str) -> tuple[keeping.Resume, dict[str, Any]]:
    """What a retry needs (checked), or ``CannotRetry`` saying why not."""
    from daskflow.cache.kept import get_kept_store, load_kept
    from daskflow.cache.storage_spec import StorageSpec

    record = flow_run_record(flow_run_id)
    full_id = record["id"] if record is not None else _full_id(flow_run_id)
    if record is not None and record.get("state_type") not in FINAL_TYPES:
        raise CannotRetry(f"flow run {full_id} is still running (state {record.get('state')}, its process is alive); "
                          "wait for it to end, or stop it, then retry")
    if record is not None and record.get("name") and record.get("name") != flow.name:
        raise CannotRetry(f"flow run {full_id} is a run of flow {record.get('name')!r}, not of {flow.name!r}")
    store = get_kept_store(str(config.home()), StorageSpec.from_config(flow.options.result_storage))
    kept = load_kept(store, full_id)
    kept.storages.add(flow.options.result_storage)  # tasks keeping elsewhere are read when called
    source = kept.source
    if source is None:
        where = "in this home's run store" if record is not None else "here, nor in the result storage"
        raise CannotRetry(f"flow run {full_id}: no record of its parameters {where} (kept for daskflow.results.keep "
                          "after it started; or daskflow.results.keep is 0); nothing was run" if record is not None
                          else f"no flow run {flow_run_id!r} {where}")
    if source.flow_name != flow.name:
        raise CannotRetry(f"flow run {full_id} is a run of flow {source.flow_name!r}, not of {flow.name!r}")
    if source.parameters_blob is None:
        raise CannotRetry(f"flow run {full_id} cannot be retried: {source.reason}")
    attempt = int((record or {}).get("attempt") or 1) + 1
    again = keeping.Resume(full_id, attempt, kept, f"{attempt}.{uuid.uuid4().hex[:12]}",
                           list((record or {}).get("retries") or []), (record or {}).get("state") or "")
    return again, source.parameters


def flow_run_record(prefix: str) -> dict | None:
    """The run store's record of the flow run (id or unique prefix), after ending the runs of
    dead owners; None when this home has no such flow run."""
    from daskflow.store import open_run_store

    try:
        store = open_run_store(create=False)
    except LookupError:
        return None
    store.end_dead_owners()
    try:
        return store.flow_record(prefix)
    except LookupError as exc:
        if "ambiguous" in str(exc):
            raise CannotRetry(str(exc)) from None
        return None


def source_of(flow_run_id: str) -> Any:
    """The recorded source (entrypoint, parameters) of a flow run, from this home or the
    configured result storage; None if neither has it."""
    from daskflow.cache.kept import get_kept_store, load_source
    from daskflow.cache.storage_spec import StorageSpec

    record = flow_run_record(flow_run_id)
    full_id = record["id"] if record is not None else _full_id(flow_run_id)
    return load_source(get_kept_store(str(config.home()), StorageSpec.from_config(None)), full_id)


def _full_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise CannotRetry(f"no flow run {text!r} in this home's run store (to retry one recorded on another "
                          "host from the result storage, give its full id)") from None


def load_entrypoint(entrypoint: str) -> Flow:
    """The flow at ``path/to/file.py:flow_fn`` or ``module:flow_fn``; ``CannotRetry`` if it cannot
    be imported. A file is loaded under a name of its own, not as ``__main__`` (its main guard
    does not run), and its functions travel to Dask workers by value."""
    from daskflow.engine.api.flows import Flow

    target, sep, attr = entrypoint.rpartition(":")
    if not sep or not target or not attr:
        raise CannotRetry(f"{entrypoint!r} is not an entrypoint: write path/to/file.py:flow_fn or module:flow_fn")
    try:
        module = _load_file(target) if target.endswith(".py") or os.sep in target else importlib.import_module(target)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - any import error is the user's to see, in one line
        raise CannotRetry(f"cannot import the flow {entrypoint!r}: {type(exc).__name__}: {exc}; nothing was run "
                          "(if the code moved, pass --entrypoint path/to/file.py:flow_fn)") from exc
    if not isinstance(obj, Flow):
        raise CannotRetry(f"{entrypoint!r} is a {type(obj).__name__}, not a flow; nothing was run")
    return obj


def _load_file(path: str) -> Any:
    import cloudpickle
    import xxhash

    path = os.path.abspath(path)
    name = f"daskflow_entry_{xxhash.xxh64_hexdigest(path.encode())}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}")
    folder = os.path.dirname(path)
    if folder not in sys.path:  # as `python file.py` does: its siblings are importable
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[name]
        raise
    cloudpickle.register_pickle_by_value(module)  # workers cannot import it by this name
    keeping.ENTRY_FILES[name] = path
    return module
