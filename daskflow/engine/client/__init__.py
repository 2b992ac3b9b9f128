"""The client side: from a call to submitted chunks, and the futures that wait for them.

It owns planning (binding arguments, futures to ``Ref``s, cutting a ``.map()`` into
chunks sized by the measured run time), the cache lookups made before anything is
submitted, handing chunks to the runner in one batch, ``Chunk`` (the client's record
of a submitted call, whose envelope is set in one place: ``Chunk.settle``), fetching
envelopes (eagerly as workers report chunks ended, or when someone waits), resubmitting
after a lost connection, and the futures (``TaskRunFuture``, ``MapFutures``, ``wait``,
``as_completed``).
"""
