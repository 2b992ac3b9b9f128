"""Kept results in the result storage: a flow run is resumed from another home (another host).

The second home shares nothing with the first but the S3-protocol server (moto's server
mode, started by ``test_storage``'s fixture) and the secret file: it reads the flow run's
entrypoint and parameters and its kept values from the storage.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from test_storage import s3_server, shared  # noqa: F401 - the moto server and a storage on it

from daskflow import flow, task, unmapped
from daskflow.cache import INPUTS
from daskflow.cache.kept import KeptChunk, chunk_key, encode, get_kept_store, load_kept
from daskflow.cli import main
from daskflow.runners import ThreadPoolTaskRunner


@task
def part(x: int, counter: str, broken: str) -> int:
    if os.path.exists(broken) and x in (4, 9):
        raise ValueError(f"element {x} is broken")
    with open(os.path.join(counter, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass
    return x + 100


@flow(task_runner=ThreadPoolTaskRunner(4))
def shared_pipeline(n: int, counter: str, broken: str) -> int:
    return sum(part.map(range(n), unmapped(counter), unmapped(broken)).result())


def _executed(folder) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(folder))


@pytest.mark.usefixtures("shared")
def test_retry_from_another_home_reads_source_and_values_from_storage(tmp_path, monkeypatch):
    counter, broken = tmp_path / "counter", tmp_path / "broken"
    counter.mkdir()
    broken.touch()
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "host-a"))
    state = shared_pipeline(12, str(counter), str(broken), return_state=True)
    assert state.is_failed()
    from daskflow.engine.tracking import tracker
    from daskflow.store import open_run_store

    tracker.flush()
    flow_run_id = open_run_store(create=False).flow_runs()[0]["id"]
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    broken.unlink()

    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "host-b"))  # no run store, no kept records here
    result = CliRunner().invoke(main, ["flow-runs", "retry", flow_run_id])  # the entrypoint: from the storage
    assert result.exit_code == 0, result.output
    assert "Completed" in result.output
    assert _executed(counter) == [4, 9]  # the ten kept runs came from the storage


@pytest.mark.usefixtures("shared")
def test_kept_records_are_verified_and_foreign_files_ignored(tmp_path):
    """A record signed with another secret is not loaded; a foreign file under the prefix is ignored."""
    from daskflow.cache.storage_spec import StorageSpec

    spec = StorageSpec.from_config(None)
    store = get_kept_store(str(tmp_path / "home"), spec)
    flow_run_id = str(uuid.uuid4())
    good = encode(KeptChunk("t#0", [0, 1], ["a", "b"]), "t", 60, store.secret)
    forged = encode(KeptChunk("t#0", [2], ["evil"]), "t", 60, os.urandom(32))
    store.put_many([(chunk_key(flow_run_id, "t#0", 0, "1"), good), (chunk_key(flow_run_id, "t#0", 2, "1"), forged)])
    storage = store.storage
    storage.fs.pipe(f"{storage.root}/kept/{flow_run_id}/README.txt", b"not ours")
    kept = load_kept(get_kept_store(None, spec), flow_run_id)  # the storage alone (another host)
    assert kept.calls == {"t#0": {0: "a", 1: "b"}}


def test_direct_calls_kept_by_bursts_and_as_written_before_both_load(tmp_path):
    """``KeptCallRuns`` (runs of consecutive calls: a name, a first number, the values) and the
    ``KeptCalls`` records written before it (a name per call) read as the same calls."""
    from daskflow.cache.kept import KeptCallRuns, KeptCalls

    store = get_kept_store(str(tmp_path / "home"))
    flow_run_id = str(uuid.uuid4())
    runs = encode(KeptCallRuns(["t", "sub#0/u"], [0, 5], [["a", "b", None], [7]]), "direct calls", 60, store.secret)
    older = encode(KeptCalls(["v#0", "v#1"], [1.5, "x"]), "direct calls", 60, store.secret)
    store.put_many([(chunk_key(flow_run_id, "direct:t#0", 0, "1"), runs),
                    (chunk_key(flow_run_id, "direct:v#0", 0, "1"), older)])
    kept = load_kept(store, flow_run_id)
    assert kept.calls == {"t#0": {0: "a"}, "t#1": {0: "b"}, "t#2": {0: None}, "sub#0/u#5": {0: 7},
                          "v#0": {0: 1.5}, "v#1": {0: "x"}}
    assert kept.records == 2


@task(cache_policy=INPUTS - "counter")
def cached_array(x: int, counter: str):
    with open(os.path.join(counter, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass
    return np.full(12_500, float(x))  # 100 kB: kept as a reference to its cache record


@task
def total_or_fail(arrays: list, broken: str) -> float:
    if os.path.exists(broken):
        raise ValueError("broken")
    return float(sum(a.sum() for a in arrays))


@flow(task_runner=ThreadPoolTaskRunner(2))
def arrays_pipeline(n: int, counter: str, broken: str) -> float:
    return total_or_fail(cached_array.map(range(n), unmapped(counter)).result(), broken)


@pytest.mark.usefixtures("shared")
def test_cached_values_are_kept_once_in_storage_and_a_retry_elsewhere_reads_them(tmp_path, monkeypatch):
    """In a result storage too: the kept values of cached arrays are their keys (the arrays are
    written once, as cache records); a retry from another home reads them through its cache."""
    import fsspec

    import dask.config

    counter, broken = tmp_path / "counter", tmp_path / "broken"
    counter.mkdir()
    broken.touch()
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "host-a"))
    assert arrays_pipeline(4, str(counter), str(broken), return_state=True).is_failed()
    from daskflow.engine.tracking import tracker
    from daskflow.store import open_run_store

    tracker.flush()
    flow_run_id = open_run_store(create=False).flow_runs()[0]["id"]
    fs, root = fsspec.core.url_to_fs(dask.config.get("daskflow.results.storage"),
                                     **dask.config.get("daskflow.results.storage-options"))
    kept = sum(info["size"] for info in fs.find(f"{root}/kept/{flow_run_id}", detail=True).values())
    assert 0 < kept < 8_000  # the source and four keys, not 400 kB of arrays
    for name in os.listdir(counter):
        os.unlink(os.path.join(counter, name))
    broken.unlink()

    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "host-b"))  # nothing local: values from the storage
    assert arrays_pipeline.retry(flow_run_id) == float(sum(x * 12_500 for x in range(4)))
    assert _executed(counter) == []
