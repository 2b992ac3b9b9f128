"""Stores that live under ``$DASKFLOW_HOME``: the run store (``runs``)."""

from __future__ import annotations

from daskflow.store.runs import RunStore, open_run_store

__all__ = ["RunStore", "open_run_store"]
