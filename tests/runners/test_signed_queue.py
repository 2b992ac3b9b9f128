"""Background queue records are signed (issue 13): a planted record is refused, never unpickled."""

from __future__ import annotations

import signal
import time
import uuid

import cloudpickle
import pytest

from daskflow.background import store


class _Planted:
    """Unpickling this creates a file: proof that a payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _entry(marker):
    rid = str(uuid.uuid4())
    evil = cloudpickle.dumps(_Planted(marker))
    return {"id": rid, "task_key": "planted-00000000", "task_name": "planted", "task": evil, "args": evil,
            "flow_run_id": None, "submitted": time.time(), "key": f"planted-{rid}"}


def _plant(env, entry, signed):
    raw = store.seal_entry(env, entry) if signed else store.pack(entry)
    env.write(lambda txn: txn.put(entry["id"].encode(), raw, db=env.db("queue")))


def test_unsigned_queue_entry_is_refused_and_signed_one_read(tmp_path, on_cluster):
    from daskflow import task

    env = store.open_store(tmp_path / "home" / "background")
    marker = tmp_path / "payload-ran"
    planted, honest = _entry(marker), _entry(tmp_path / "unused")
    _plant(env, planted, signed=False)
    _plant(env, honest, signed=True)
    with pytest.warns(store.RefusedRecord, match=planted["id"]):
        entries = store.queued(env)
    assert [e["id"] for e in entries] == [honest["id"]]
    assert not marker.exists()

    @task
    def double(x):
        return 2 * x

    assert double.map(range(100)).result() == [2 * i for i in range(100)]


def test_unsigned_result_is_refused(tmp_path):
    env = store.open_store(tmp_path / "home" / "background")
    marker = tmp_path / "payload-ran"
    rec = store.new_record(_entry(marker))
    env.write(lambda txn: (store.write_records(env, txn, [rec]),
                           txn.put(rec["id"].encode(), cloudpickle.dumps(_Planted(marker)), db=env.db("results"))))
    with pytest.warns(store.RefusedRecord, match="result"):
        found = store.read_records([rec["id"]], env, results=True)
    assert found[rec["id"]].result is None and not marker.exists()


def test_server_refuses_a_planted_queue_entry_at_restart(tmp_path):
    from background_procs import start_server

    from daskflow import _lmdb

    home = tmp_path / "home"
    marker = tmp_path / "payload-ran"
    env = store.open_store(home / "background")
    planted = _entry(marker)
    _plant(env, planted, signed=False)
    _lmdb.close_env(home / "background")
    proc, _ = start_server(home)
    log = home.parent / "server.log"
    deadline = time.monotonic() + 30
    while planted["id"] not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the server's log for its verdict, with a deadline
    assert proc.stop(signal.SIGTERM) == 0
    text = log.read_text()
    assert f"queue entry {planted['id']!r} refused" in text and "bad signature" in text
    assert not marker.exists()
