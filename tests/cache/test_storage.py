"""Result storage: cached results in an S3-protocol server (moto's server mode, started here), shared by homes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import dask.config
import pytest

from daskflow import flow, task, unmapped
from daskflow.cache import INPUTS
from daskflow.cache.storage import ObjectStorage
from daskflow.cache.storage_spec import StorageSpec
from daskflow.exceptions import StorageUnreachable
from daskflow.cache.store import CacheWarning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a real HTTP server speaking S3), with a bucket."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # wait for the port (a deadline, not a sleep as synchronisation)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.05)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "eu-west-1"}}
        import s3fs

        s3fs.S3FileSystem(**options).mkdir("results")
        yield {"endpoint": endpoint, "options": options}
    finally:  # stopped whatever happened, also when the setup failed
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def shared(s3_server, tmp_path):
    """A result storage on the S3 server and the secret file its users share."""
    key = tmp_path / "results.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    prefix = f"s3://results/{uuid.uuid4().hex}"
    with dask.config.set({"daskflow.results.storage": prefix, "daskflow.results.secret-file": str(key),
                          "daskflow.results.storage-options": s3_server["options"]}):
        yield prefix


@task(cache_policy=INPUTS - "counter")
def square(x: int, counter: str) -> int:
    with open(os.path.join(counter, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass
    return x * x


def _cached_map(counter, n: int = 300) -> tuple[list, list]:
    @flow
    def pipeline():
        futs = square.map(range(n), unmapped(str(counter)))
        return futs.result(), [s.name for s in futs.states]

    return pipeline()


def test_two_homes_share_a_cache_through_s3(on_cluster, shared, tmp_path, monkeypatch):
    counter = tmp_path / "count"
    counter.mkdir()
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "first"))
    values, names = _cached_map(counter)
    assert values == [x * x for x in range(300)] and set(names) == {"Completed"}
    import s3fs

    listed = s3fs.S3FileSystem(**dask.config.get("daskflow.results.storage-options")).find(shared[len("s3://"):])
    listed = [path for path in listed if "/kept/" not in path and "/_daskflow/" not in path]  # kept values: apart
    assert listed and all("/packs/" in path for path in listed) and len(listed) < 30  # a pack per chunk
    stored = ObjectStorage(StorageSpec.from_config(None)).entries()[0]  # no index: one listing, the headers
    assert len({e.key for e in stored}) == 300  # written by the workers, one signed record per run

    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "second"))  # a colleague: another home, cold
    values, names = _cached_map(counter)
    assert values == [x * x for x in range(300)]
    assert names.count("Cached") == 300
    assert len(os.listdir(counter)) == 300  # no body ran for the second home


def test_a_blob_signed_with_another_secret_is_a_miss_with_a_warning(on_cluster, shared, tmp_path, monkeypatch):
    counter = tmp_path / "count"
    counter.mkdir()
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "first"))
    _cached_map(counter, 20)
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "second"))
    with dask.config.set({"daskflow.results.secret-file": str(other)}):
        with pytest.warns(CacheWarning, match="bad signature"):
            values, names = _cached_map(counter, 20)
    assert values == [x * x for x in range(20)] and "Cached" not in names  # never loaded: run again
    assert len(os.listdir(counter)) == 40


def test_a_missing_bucket_is_one_clear_error_naming_the_url(s3_server, tmp_path, monkeypatch):
    from daskflow.runners import ThreadPoolTaskRunner

    counter = tmp_path / "count"
    counter.mkdir()
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    url = "s3://no-such-bucket/prefix"

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline():
        return square.map(range(3), unmapped(str(counter))).result()

    with dask.config.set({"daskflow.results.storage": url, "daskflow.results.secret-file": str(key),
                          "daskflow.results.storage-options": s3_server["options"]}):
        with pytest.raises(Exception) as info:
            pipeline()
        assert isinstance(info.value, StorageUnreachable) or isinstance(info.value.__cause__, StorageUnreachable) \
            or "no-such-bucket" in str(info.value)
        assert url in str(info.value)
        with dask.config.set({"daskflow.results.on-storage-error": "warn"}):
            with pytest.warns(CacheWarning, match="runs go on uncached"):
                assert pipeline() == [0, 1, 4]


def test_two_processes_writing_one_key_in_s3_both_read_a_complete_value(shared):
    import json

    from storage_procs import SIZES, check, race

    race(shared, json.dumps(dask.config.get("daskflow.results.storage-options")),
         dask.config.get("daskflow.results.secret-file"), reps=3)
    fresh = ObjectStorage(StorageSpec.from_config(None))  # a reader with no index
    assert len([e for e in fresh.entries()[0] if e.pack]) == 6  # six whole packs of the small record
    secret = open(dask.config.get("daskflow.results.secret-file"), "rb").read()
    for key, record in zip(SIZES, fresh.get_many(list(SIZES))):
        check(record, SIZES[key], secret)


def test_a_truncated_pack_in_s3_is_a_miss_with_one_warning_and_foreign_objects_are_ignored(shared, tmp_path,
                                                                                           monkeypatch):
    import warnings

    import s3fs
    from click.testing import CliRunner

    from daskflow.cache import packs
    from daskflow.cli import main
    from daskflow.runners import ThreadPoolTaskRunner

    counter = tmp_path / "count"
    counter.mkdir()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def pipeline(n):
        return square.map(range(n), unmapped(str(counter))).result()

    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "first"))
    assert pipeline(8) == [x * x for x in range(8)]
    fs = s3fs.S3FileSystem(**dask.config.get("daskflow.results.storage-options"))
    root = shared[len("s3://"):]
    pack = sorted(p for p in fs.find(root) if "/packs/" in p and "/kept/" not in p)[0]
    blob = fs.cat(pack)
    inside = len(packs.parse_header(blob).lengths)
    fs.pipe(pack, blob[:-3])  # truncated
    task_dir = pack.rsplit("/packs/", 1)[0]
    for foreign in (f"{root}/README.txt", f"{task_dir}/notes", f"{task_dir}/packs/not-a-pack"):
        fs.pipe(foreign, b"not a record")
    monkeypatch.setenv("DASKFLOW_HOME", str(tmp_path / "cold"))  # no hot tier: every read goes to the storage
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert pipeline(8) == [x * x for x in range(8)]
    damaged = [str(w.message) for w in seen if issubclass(w.category, CacheWarning) and "damaged" in str(w.message)]
    assert len(damaged) == 1 and pack in damaged[0], damaged
    assert len(os.listdir(counter)) == 8 + inside  # the truncated pack's runs ran again, nothing else did
    listed = CliRunner().invoke(main, ["cache", "ls", "--storage", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    import json

    assert len({r["key"] for r in json.loads(listed.output)}) == 8  # foreign objects: not listed
    assert all(fs.exists(p) for p in (f"{root}/README.txt", f"{task_dir}/notes", f"{task_dir}/packs/not-a-pack"))


def test_a_fresh_s3_handle_learns_sizes_from_one_listing_and_stamps_reads(shared):
    """A client lookup with a byte limit counts a large record as too large from the listing's
    size (none of it read); a segment of a task named with a "/" is found; due read stamps go
    out while the lookup goes on and are in the storage after ``flush_reads``."""
    from daskflow.cache import packs

    prefix = b"v1/etl/load-0000000a/"
    big, small = prefix + b"B" * 16, prefix + b"s" * 16
    writer = ObjectStorage(StorageSpec.from_config(None))
    writer.put_many([(big, b"x" * (packs.SINGLE_BYTES + 10)), (small, b"small record")])
    assert writer.sizes[big] == packs.SINGLE_BYTES + 10  # its own write, remembered

    fresh = ObjectStorage(StorageSpec.from_config(None))  # knows nothing: one listing of the segment
    records, too_large = fresh.get_bounded([big, small], 64 * 1024)
    assert records == [None, b"small record"] and too_large == 1
    assert fresh.sizes[big] == packs.SINGLE_BYTES + 10  # from the listing
    assert fresh.get_many([big]) == [b"x" * (packs.SINGLE_BYTES + 10)]  # without a limit: read whole

    fresh.note_reads([small] * 300)  # due (over 256 pending): written without waiting
    fresh.flush_reads()  # waits for that write, writes the rest
    stamped = {e.key: e.last_read for e in ObjectStorage(StorageSpec.from_config(None)).entries()[0]}
    assert stamped[small] is not None and stamped[big] is None
