"""``daskflow limits set/ls/rm``: concurrency and rate limits (``daskflow.store.limits``).

Limits are defined in the daskflow home (``limits.json``): no server is needed, and the
runs of this home read them when they need a slot. When ``DASKFLOW_SCHEDULER_ADDRESS``
names a scheduler, ``set`` and ``rm`` also tell it (for workers on other hosts) and ``ls``
shows the slots in use there; only then is distributed imported.
"""

from __future__ import annotations

import json
from typing import Any

import click

from daskflow.cli.cache import output_option

__all__ = ["COMMANDS"]


class LimitName(click.ParamType):
    name = "name"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from daskflow.store.limits import check_name

        try:
            return check_name(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _home() -> Any:
    from daskflow import config

    return config.home(create=True)


def _scheduler() -> Any:
    """The configured scheduler's slots, or None (no address)."""
    from daskflow import config

    address = config.get("scheduler-address")
    if not address:
        return None
    from daskflow.runners.clients import shared_client
    from daskflow.runners.slots import DaskSlots

    return DaskSlots(shared_client(address))


@click.group("limits")
def limits() -> None:
    """Concurrency limits (tag limits, concurrency(...)) and rate limits (rate_limit(...))."""


@limits.command("set", context_settings={"ignore_unknown_options": True})  # `set db -1`: a range error
@click.argument("name", type=LimitName())
@click.argument("slots", type=click.IntRange(min=0))
@click.option("--per-second", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Make it a rate limit: slots are not given back, they decay at this rate.")
def limits_set(name: str, slots: int, per_second: float | None) -> None:
    """Define limit NAME with SLOTS slots (0 blocks every run that needs it until raised).

    Example: daskflow limits set db 5
    """
    from daskflow.store.limits import set_limit

    set_limit(_home(), name, slots, per_second)
    told = _tell_scheduler(name, slots, per_second)
    rate = f", decaying {per_second:g}/s (a rate limit)" if per_second else ""
    click.echo(f"limit {name}: {slots} slot(s){rate}{told}")


@limits.command("rm")
@click.argument("name", type=LimitName())
def limits_rm(name: str) -> None:
    """Remove limit NAME (runs that needed it run without it)."""
    from daskflow.store.limits import remove_limit

    try:
        remove_limit(_home(), name)
    except KeyError:
        raise click.UsageError(f"no limit named {name!r} (see `daskflow limits ls`)") from None
    told = _tell_scheduler(name, None, None)
    click.echo(f"limit {name} removed{told}")


@limits.command("ls")
@output_option
def limits_ls(output: str) -> None:
    """The limits defined, and the slots in use on the configured scheduler (if any)."""
    from daskflow import config
    from daskflow.store.limits import definitions

    defined = definitions(config.home_path())
    keeper = _scheduler()
    used = keeper.status() if keeper is not None else {}
    rows = [{"name": name, "limit": lim.limit, "per_second": lim.per_second,
             "in_use": used.get(name, {}).get("in_use") if keeper is not None else None}
            for name, lim in sorted(defined.items())]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no limits defined (daskflow limits set NAME N)")
        return
    for r in rows:
        rate = f"  {r['per_second']:g}/s" if r["per_second"] else ""
        use = f"  in use {r['in_use']:g}" if r["in_use"] is not None else ""
        click.echo(f"{r['name']:<24} {r['limit']:>6}{rate}{use}")


def _tell_scheduler(name: str, slots: int | None, per_second: float | None) -> str:
    keeper = _scheduler()
    if keeper is None:
        return ""
    keeper.define(name, slots, per_second)
    return " (and on the scheduler)"


COMMANDS: list[click.Command] = [limits]
