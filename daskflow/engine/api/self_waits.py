"""A run whose ``wait_for`` list comes to hold its own future: Prefect's deadlock ``ValueError``.

In Prefect, ``wait_for`` is read when the run starts, so ``queue.append(t.submit(wait_for=queue))``
makes a run wait for itself, and Prefect raises. daskflow reads ``wait_for`` at submission,
so nothing would hang, but the program is wrong the same way: the lists given to runs of a
flow are kept, and the mistake is raised as Prefect raises it when the same list comes back
as a later run's ``wait_for`` (only the run last submitted with it is checked: one scan of
what was appended since) and at the flow's end (every run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from daskflow.engine.core.context import flow_run_ctx

if TYPE_CHECKING:
    from daskflow.engine.core.context import FlowRunContext

__all__ = ["WaitList", "check_wait_lists", "watch_wait_list"]


class WaitList(NamedTuple):
    """A run submitted with a list as ``wait_for``: the list, and its length then."""

    future: Any
    waits: list
    seen: int

    def holds_its_run(self) -> bool:
        """Whether the run's own future was added to the list after its submission."""
        return any(f is self.future for f in self.waits[self.seen:])


def watch_wait_list(future: Any, wait_for: Any) -> None:
    """Keep a ``wait_for`` list given to a run of a flow (see the module docstring)."""
    ctx = flow_run_ctx.get()
    if ctx is None or type(wait_for) is not list:
        return
    pairs = ctx.wait_lists.setdefault(id(wait_for), [])
    if pairs and pairs[-1].holds_its_run():
        raise_self_wait(pairs[-1])
    pairs.append(WaitList(future, wait_for, len(wait_for)))


def check_wait_lists(ctx: FlowRunContext) -> None:
    """Raise Prefect's deadlock ``ValueError`` for a run whose ``wait_for`` list now holds itself."""
    for pairs in ctx.wait_lists.values():
        for pair in pairs:
            if pair.holds_its_run():
                raise_self_wait(pair)


def raise_self_wait(pair: WaitList) -> None:
    raise ValueError(
        "Discovered a task depending on itself. Raising to avoid a deadlock. Please inspect the inputs "
        f"and dependencies of {pair.future.task.name}. (Its run {pair.future.task_run_id} was given, "
        "as wait_for, a list that now holds its own future.)")
