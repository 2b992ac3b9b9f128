"""The engine: tasks, flows, states, futures, contexts and the task-run function, in five rooms.

From top to bottom (a room imports only rooms below it; ``pyproject.toml`` states it as the
"engine rooms" contract, checked by ``tests/test_layers.py``):

- ``api``: ``Task`` and ``Flow``, the calling forms, a flow run's life;
- ``client``: planning and submitting chunks, ``Chunk``, fetching envelopes, futures;
- ``worker``: the task-run function and its one run loop, the lifecycle, the cache around runs;
- ``tracking``: the tracker, its records and writer, the console, progress;
- ``core``: states, contexts, inputs, the envelope, hooks.
"""

from daskflow import config as _config

_config.register_defaults()  # the engine runs on dask: `dask.config.get("daskflow....")` sees the defaults
