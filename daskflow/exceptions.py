"""Errors daskflow raises, each also an instance of the builtin users already catch.

::

    DaskflowError
    ├── MappingLengthMismatch (ValueError)     .map() iterables of different lengths
    ├── MappingMissingIterable (TypeError)     .map() with nothing to iterate over
    ├── ReservedArgumentError (TypeError)      a task function uses return_state / wait_for
    ├── ParameterSerializationError (TypeError) an argument cannot be pickled for a Dask run
    ├── FailedRun (RuntimeError)               .result() of a failed state that holds no exception
    ├── UnfinishedRun (RuntimeError)           .result() of a run with no final value (NotReady)
    ├── UpstreamFailed (UnfinishedRun)         ... because an upstream run did not complete
    ├── TaskRunTimeoutError (TimeoutError)     a run passed its timeout_seconds
    ├── FlowRunTimeoutError (TimeoutError)     a flow run passed its timeout_seconds
    ├── CrashedRun (RuntimeError)              the process running a run died (KilledWorker)
    ├── CancelledRun (RuntimeError)            the run was cancelled
    ├── RunnerShutdown (RuntimeError)          a future of a task runner that was shut down
    ├── NoBackgroundServer (RuntimeError)      .delay() / serve() with no reachable daskflow server
    ├── ResultNotPersisted (UnfinishedRun)     .result() of a background run whose value was not kept
    ├── UnknownRun (KeyError)                  a background run id the server does not know
    ├── MissingTransactionValue (ValueError, KeyError)  txn.get(name) of a value never set
    ├── LockTimeout (TimeoutError)             a transaction's lock was not acquired in time
    ├── LimitNotDefined (LookupError)          concurrency(..., strict=True) of a limit nobody defined
    ├── MissingContextError (RuntimeError)     get_run_logger() outside of a run
    ├── MissingMainGuard (RuntimeError)        a LocalCluster started by a script without its main guard
    ├── CannotRetry (RuntimeError)             flow-runs retry of a run unknown, still running, or not importable
    ├── StorageUnreachable (OSError)           a result storage could not be written or read
    ├── StoreError (RuntimeError)              a store under $DASKFLOW_HOME cannot be used
    │   ├── DamagedStore                       an LMDB file is truncated or not LMDB (say how to repair)
    │   ├── UnsafeHome (PermissionError)       the home is writable by others or owned by another user
    │   └── UnusableHome (OSError)             the home is not a directory, or not writable
    ├── SchedulerUnreachable (ConnectionError) no Dask scheduler answered at the configured address
    └── BadSchedulerAddress (ValueError)       the configured scheduler address cannot be parsed

    FlowRunCancelRequested (BaseException)     raised inside a flow's body when another process
                                               cancels the flow run; the flow call raises CancelledRun
"""

from __future__ import annotations


class DaskflowError(Exception):
    """Base class of every error daskflow raises on its own account."""


class MappingLengthMismatch(DaskflowError, ValueError):
    """The iterables given to ``.map()`` have different lengths."""


class MappingMissingIterable(DaskflowError, TypeError):
    """``.map()`` was called without any iterable argument."""


class ReservedArgumentError(DaskflowError, TypeError):
    """A task function declares a parameter whose name daskflow reserves."""


class ParameterSerializationError(DaskflowError, TypeError):
    """An argument of a run cannot be serialized to travel to a Dask worker."""


class FailedRun(DaskflowError, RuntimeError):
    """The exception of a failed state made without one (``Failed(message=...)``)."""


class UnfinishedRun(DaskflowError, RuntimeError):
    """The result of a run that never reached a final value was requested."""


class MissingResult(DaskflowError, RuntimeError):
    """The value of a finished run is no longer held: a stream (``MapFutures.iter_chunks``,
    ``MapFutures.reduce``) consumed it and let it go."""


class UpstreamFailed(UnfinishedRun):
    """A run did not start because an upstream run it depends on did not complete."""


class TaskRunTimeoutError(DaskflowError, TimeoutError):
    """A task run passed its ``timeout_seconds``."""


class FlowRunTimeoutError(DaskflowError, TimeoutError):
    """A flow run passed its ``timeout_seconds``."""


class CrashedRun(DaskflowError, RuntimeError):
    """The process running a task run died, or the engine failed (not user code)."""


class CancelledRun(DaskflowError, RuntimeError):
    """A task run was cancelled before it finished."""


class FlowRunCancelRequested(BaseException):
    """Raised in a flow body's thread when its flow run is cancelled from another process.

    A ``BaseException``, as ``KeyboardInterrupt``, so that ``except Exception`` in user code
    does not swallow it; the engine ends the flow run ``Cancelled`` and the call raises
    ``CancelledRun``.
    """


class RunnerShutdown(DaskflowError, RuntimeError):
    """A future was used after its task runner was shut down."""


class MissingContextError(DaskflowError, RuntimeError):
    """A run-only API (such as ``get_run_logger``) was called outside of a run."""


class NoBackgroundServer(DaskflowError, RuntimeError):
    """``.delay()`` or ``serve()`` found no daskflow server (``daskflow server start``)."""


class ResultNotPersisted(UnfinishedRun):
    """A background run completed, but its task does not persist results (``persist_result``)."""


class MissingTransactionValue(DaskflowError, ValueError, KeyError):
    """``Transaction.get(name)`` without a default, and no transaction up the chain has ``name``.

    A ``ValueError`` as in Prefect; also a ``KeyError``, as daskflow raised before.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LockTimeout(DaskflowError, TimeoutError):
    """A transaction's lock (``isolation_level=SERIALIZABLE``) was not acquired in time."""


class LimitNotDefined(DaskflowError, LookupError):
    """``concurrency(name, strict=True)`` (or ``rate_limit``) of a limit that is not defined."""


class UnknownRun(DaskflowError, KeyError):
    """A background run id that the server (or the local store) does not know."""


class StoreError(DaskflowError, RuntimeError):
    """A store under the daskflow home cannot be used; the message names the path and the fix."""


class DamagedStore(StoreError):
    """An LMDB environment whose data file is truncated, not LMDB, or of another LMDB version."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsafeHome(StoreError, PermissionError):
    """The daskflow home is writable by other users or owned by another user (as ssh refuses ~/.ssh)."""


class UnusableHome(StoreError, OSError):
    """The daskflow home is not a directory, or cannot be created or written."""


class SchedulerUnreachable(DaskflowError, ConnectionError):
    """No Dask scheduler answered at the configured address within the connect timeout."""


class BadSchedulerAddress(DaskflowError, ValueError):
    """The scheduler address (``DASKFLOW_SCHEDULER_ADDRESS``, ``address=``) is not one Dask can connect to."""


class MissingMainGuard(DaskflowError, RuntimeError):
    """A script started a LocalCluster from top-level code not under ``if __name__ == "__main__":``."""


class CannotRetry(DaskflowError, RuntimeError):
    """A flow run cannot be retried: unknown, still running, its code cannot be imported, or its
    parameters were not recorded. Nothing ran."""


class StorageUnreachable(DaskflowError, OSError):
    """The result storage could not be written or read (missing bucket, refused credentials...)."""
