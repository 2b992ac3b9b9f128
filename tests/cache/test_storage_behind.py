"""Storage writes left to the end of the flow run (engine/worker/write_behind.py), against moto's S3 server.

A proxy in front of the server (``s3_proxy``) holds or refuses the PUTs of packs, so that a
write is under way, lost or refused exactly when the test says.
"""

from __future__ import annotations

import os
import signal
import uuid

import dask.config
import pytest
from s3_proxy import S3Proxy
from test_storage import s3_server  # noqa: F401 - the module's S3 server fixture

from daskflow import flow, task, unmapped
from daskflow.cache import INPUTS
from daskflow.cache.storage import ObjectStorage
from daskflow.cache.storage_spec import StorageSpec
from daskflow.cache.store import CacheWarning
from daskflow.exceptions import StorageUnreachable


@task(cache_policy=INPUTS - "counter")
def cube(x: int, counter: str) -> int:
    with open(os.path.join(counter, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass
    return x ** 3


@pytest.fixture
def proxied(s3_server, tmp_path):  # noqa: F811
    """A result storage reached through the proxy (``proxy``, ``url``), and a counter of bodies."""
    proxy = S3Proxy(s3_server["endpoint"])
    key = tmp_path / "results.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    url = f"s3://results/{uuid.uuid4().hex}"
    counter = tmp_path / "count"
    counter.mkdir()
    options = dict(s3_server["options"], endpoint_url=proxy.endpoint)
    with dask.config.set({"daskflow.results.storage": url, "daskflow.results.secret-file": str(key),
                          "daskflow.results.storage-options": options}):
        yield proxy, url, str(counter)
    proxy.close()


def _cache_packs(s3_server, url: str) -> list[str]:  # noqa: F811
    """The cache's packs in the storage, listed straight from the server (not through the proxy)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server["options"])
    fs.invalidate_cache()
    return [p for p in fs.find(url[len("s3://"):]) if "/packs/" in p and "/kept/" not in p]


def test_chunks_end_before_their_storage_writes_and_the_flow_run_waits_for_them(on_cluster, proxied, s3_server):  # noqa: F811
    proxy, url, counter = proxied
    proxy.hold.clear()
    seen = {}

    @flow
    def pipeline():
        futs = cube.map(range(200), unmapped(counter))
        seen["values"] = futs.result()  # every chunk ended ...
        seen["behind"] = [c.result.behind for c in futs.chunks]
        seen["held"] = proxy.wait_held("/v1/")  # ... while the PUT of its records is held
        seen["stored"] = _cache_packs(s3_server, url)
        proxy.hold.set()
        return len(seen["values"])

    assert pipeline() == 200
    assert seen["values"] == [x ** 3 for x in range(200)] and all(seen["behind"]) and seen["held"]
    assert seen["stored"] == []  # nothing was in the storage when the runs had all ended
    stored = ObjectStorage(StorageSpec.from_config(None)).entries()[0]
    assert len({e.key for e in stored}) == 200  # the flow run returned once every record was stored
    assert len(os.listdir(counter)) == 200


def test_a_storage_refusing_writes_fails_the_flow_run_at_its_end_naming_the_url(on_cluster, proxied):
    proxy, url, counter = proxied
    proxy.refuse = True

    @flow
    def pipeline():
        return cube.map(range(20), unmapped(counter)).result()

    with pytest.raises(StorageUnreachable, match="could not write to it") as info:
        pipeline()
    assert url in str(info.value)
    with dask.config.set({"daskflow.results.on-storage-error": "warn"}):
        assert pipeline() == [x ** 3 for x in range(20)]  # the runs go on; only the storage misses them


def test_a_worker_killed_before_its_storage_write_loses_only_that_write(proxied, tmp_path, monkeypatch):
    """The runs are final (Completed, one warning says the writes were lost); another home
    finds nothing in the storage and runs every body again: a miss, never a wrong value."""
    from distributed import Client, LocalCluster

    from daskflow.runners.dask import DaskTaskRunner

    proxy, url, counter = proxied
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        pid = next(iter(client.run(os.getpid).values()))

        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def pipeline(kill: bool):
            futs = cube.map(range(50), unmapped(counter))
            values = futs.result()
            if kill:
                assert proxy.wait_held("/v1/")  # its records are on their way to the storage
                os.kill(pid, signal.SIGKILL)  # the worker this test's cluster started
                proxy.forward_held = False  # the write dies with its worker
                proxy.hold.set()
            return values, [s.name for s in futs.states]

        proxy.hold.clear()
        with pytest.warns(CacheWarning, match="may be missing from the storage"):
            values, names = pipeline(True)
        assert values == [x ** 3 for x in range(50)] and set(names) == {"Completed"}
        # Dask may run chunks whose results died with the worker again, on its replacement:
        # only those executions can have put records in the storage since
        again = len(os.listdir(counter)) - 50
        monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "second"))  # another home: the storage alone
        proxy.forward_held = True
        before = len(os.listdir(counter))
        values, names = pipeline(False)
        assert values == [x ** 3 for x in range(50)]  # never a wrong value
        assert names.count("Cached") <= again  # the lost write's records were not in the storage ...
        assert len(os.listdir(counter)) - before == 50 - names.count("Cached")  # ... so their runs ran again
