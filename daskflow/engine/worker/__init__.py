"""The worker side: executing runs wherever they land (a Dask worker, a thread, inline).

It owns the task-run function (``run.run_chunk``: inputs, one run loop, the envelope),
a run's lifecycle (``lifecycle``: Running, retries and their delays, timeouts, hooks,
bodies returning States), the cache around managed runs (``managed``, ``cache_spec``,
``write_batch``), transactions, checkpoints of finished runs, the run logger and the
reports a chunk sends to the tracker. It knows no future and no chunk of the client:
only the spec it is given and the envelope it returns.
"""
