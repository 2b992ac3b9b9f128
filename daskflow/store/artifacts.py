"""Artifacts in the run store: markdown, tables and links that runs publish (Prefect's artifacts).

An artifact travels from the run that creates it as one more record of the run's log
stream (logger ``daskflow.artifacts``, the artifact as JSON text), so it rides the
batches that carry logs (in the chunk's envelope, or shipped while a long chunk runs):
no round trip per artifact. The store's writer files it apart from the logs:

- ``artifacts``  owner (24) + index (4) + µs (8) + seq (4), as a log record's key → artifact (msgpack)
- ``artkeys``    artifact key (utf-8) + NUL + µs (8) + seq (4) → the artifact's key in ``artifacts``

An artifact with a key is versioned by it: every artifact created with the same key is
a new version, the newest one is the key's current artifact (``daskflow artifacts ls``).
Readers here serve the CLI and the UI alike (``-o json`` shapes).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from daskflow.store.runs import RunStore

__all__ = ["ARTIFACTS_LOGGER", "put_artifact", "latest_artifacts", "artifact_versions", "artifacts_of_run",
           "artifacts_of_flow_run", "find_artifact"]

ARTIFACTS_LOGGER = "daskflow.artifacts"
FIELDS = ("id", "key", "type", "description", "data", "created", "task_run_id", "flow_run_id")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(raw: bytes) -> dict:
    return msgpack.unpackb(raw, raw=False)


def put_artifact(txn: Any, db: dict, key: bytes, message: str) -> None:
    """File one artifact (``message``: its JSON) under the key its log record would have had."""
    if "artifacts" not in db:
        return
    try:
        rec = json.loads(message)
    except ValueError:
        return
    rec = {name: rec.get(name) for name in FIELDS}
    txn.put(key, _pack(rec), db=db["artifacts"])
    if rec["key"]:
        txn.put(rec["key"].encode() + b"\x00" + key[-12:], key, db=db["artkeys"])


def _read(store: RunStore, fn: Any, default: Any) -> Any:
    if "artifacts" not in store.dbs:  # a store an older version wrote: none yet
        return default
    return store.env.read(fn)


def latest_artifacts(store: RunStore, limit: int | None = 100) -> list[dict]:
    """The current version of every key, newest first (with ``versions``: how many it has)."""
    db = store.dbs

    def read(txn: Any) -> list[dict]:
        newest: dict[bytes, tuple[bytes, bytes, int]] = {}
        for index_key, ref in txn.cursor(db=db["artkeys"]):
            index_key = bytes(index_key)
            name, when = index_key[:-13], index_key[-12:]  # key, NUL, µs (8) + seq (4)
            seen = newest.get(name)
            newest[name] = (bytes(when), bytes(ref), (seen[2] if seen else 0) + 1)
        out = []
        for when, ref, count in sorted(newest.values(), reverse=True):
            raw = txn.get(ref, db=db["artifacts"])
            if raw is not None:
                out.append(dict(_unpack(raw), version=count, versions=count))
        return out[:limit] if limit else out

    return _read(store, read, [])


def artifact_versions(store: RunStore, key: str) -> list[dict]:
    """Every version of the artifact ``key``, newest first (``version``: 1 is the first)."""
    db = store.dbs
    prefix = key.encode() + b"\x00"

    def read(txn: Any) -> list[dict]:
        cur = txn.cursor(db=db["artkeys"])
        refs = []
        if cur.set_range(prefix):
            for index_key, ref in cur:
                if not bytes(index_key).startswith(prefix):
                    break
                refs.append(bytes(ref))
        out = []
        for version, ref in enumerate(refs, 1):
            raw = txn.get(ref, db=db["artifacts"])
            if raw is not None:
                out.append(dict(_unpack(raw), version=version))
        return out[::-1]

    found = _read(store, read, [])
    if not found:
        raise LookupError(f"no artifact with key {key!r}")
    return found


def _all(store: RunStore, keep: Any) -> list[dict]:
    db = store.dbs

    def read(txn: Any) -> list[dict]:
        return [rec for _, raw in txn.cursor(db=db["artifacts"]) if keep(rec := _unpack(raw))]

    return sorted(_read(store, read, []), key=lambda r: r.get("created") or 0)


def artifacts_of_run(store: RunStore, task_run_id: str) -> list[dict]:
    """The artifacts a task run created, oldest first."""
    return _all(store, lambda rec: rec.get("task_run_id") == task_run_id)


def artifacts_of_flow_run(store: RunStore, flow_run_id: str) -> list[dict]:
    """The artifacts a flow run and its task runs created, oldest first."""
    return _all(store, lambda rec: rec.get("flow_run_id") == flow_run_id)


def find_artifact(store: RunStore, ref: str) -> list[dict]:
    """``ref`` as an artifact key (its versions, newest first), else as an artifact id (prefix)."""
    try:
        return artifact_versions(store, ref)
    except LookupError:
        pass
    want = ref.replace("-", "")
    found = _all(store, lambda rec: (rec.get("id") or "").replace("-", "").startswith(want))
    if not found:
        raise LookupError(f"no artifact with key or id {ref!r}")
    return found
