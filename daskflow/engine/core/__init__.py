"""The core below every room: the words the others speak.

States (``State``, ``StateType``), run contexts (contextvars: which flow run and task run
the code belongs to, which cache home it uses), argument annotations (``unmapped``,
``quote``, ``allow_failure``) and the ``Ref`` placeholders that stand for upstream values,
the chunk envelope (``ChunkSpec`` in, ``ChunkResult`` out), the rule for bodies that return
a State, hook calling and retry-delay validation. It imports no other room.
"""
