"""The user-facing room: ``Task`` and ``Flow``, what ``@task`` and ``@flow`` make.

It owns the decorators' options and their validation, the calling forms (``t(x)``,
``.submit()``, ``.map()``, ``.delay()``, calling a flow), a flow run's life (its runner,
hooks, retries, timeout, waiting for what it submitted) and the rule that turns a flow's
return value into its final state (``returns``). It decides *what* to run and hands the
*how* to the rooms below: the client side to submit, the worker side to run inline.
"""
