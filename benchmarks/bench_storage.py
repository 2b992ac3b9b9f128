"""Result storage: an INPUTS-cached ``.map()`` on the local LMDB store vs ``file://`` vs an S3 server.

    python benchmarks/bench_storage.py                    # 10^4 small values (medians of 3), 64 x 50 MB arrays (one rep)
    python benchmarks/bench_storage.py --quick            # 10^4 small values, 16 x 20 MB arrays
    python -m benchmarks --sections storage               # the same, from the suite

One LocalCluster(2 workers x 1 thread) serves every row; the S3 server is moto's server
mode, started here on 127.0.0.1 (a real HTTP server speaking S3; s3fs is the client).
Each repetition of each backend starts from an empty home and an empty storage prefix:

- ``first``: every body runs, and its worker writes the record (local store, or storage);
- ``rerun``: the same home again (the local store is the hot tier: small values come from it);
- ``cold rerun``: another, empty home with the same storage (a colleague, a CI job): every
  value comes from the storage. For the local store alone there is nothing to read it from.
  Its time per hit includes the whole flow run in a new home (run store, cache created).

``lookup`` rows: the storage lookup alone (``TieredStore.load_many`` of 10^4 small records
written in packs of 500, by a handle that knows nothing, in front of an empty home), in-process.

Bodies executed in reruns are counted on the workers (they must be 0). Raw Dask
(``client.map`` + ``gather``, no cache) runs the same work in the same process, between the
daskflow rows. The large workload returns each array's sum to the client, so the arrays stay
on the workers (and in the storage) as a real pipeline's would; ``client MB`` is the client's
resident memory at its highest during a run, over what it was before (the most of any run of
the row): a value that passed through the client would show as its size. The arrays workload
moves GBs through moto (a Python server): ``--large-reps`` (default 1) sets its repetitions.

``ls`` rows: ``daskflow cache ls`` on a real 80,000-entry store (built with ``put_many``),
each command a fresh subprocess (interpreter start included), and the listing itself in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np


def small(x):
    from distributed import get_worker

    w = get_worker()
    w.daskflow_bench_bodies = getattr(w, "daskflow_bench_bodies", 0) + 1
    return x * x + 1


def plain_small(x):
    return x * x + 1


def make(i, mb):
    from distributed import get_worker

    w = get_worker()
    w.daskflow_bench_bodies = getattr(w, "daskflow_bench_bodies", 0) + 1
    return np.full(mb * 2**20 // 8, float(i))


def plain_make(i, mb):
    return np.full(mb * 2**20 // 8, float(i))


def total(a):
    return float(a.sum())


def scheduler_tasks(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def settle(client, before: int, seconds: float = 60) -> None:
    """Until the scheduler holds no more tasks than ``before`` (raw Dask's are released after its run)."""
    deadline = time.monotonic() + seconds
    while scheduler_tasks(client) > before and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the scheduler with a deadline


def bodies(client) -> int:
    return sum(client.run(lambda dask_worker: getattr(dask_worker, "daskflow_bench_bodies", 0)).values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(log_dir: str) -> tuple[subprocess.Popen, dict]:
    """moto's S3 server on 127.0.0.1 with a bucket ``bench``; its fsspec options."""
    port = _free_port()
    log = open(os.path.join(log_dir, "moto.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.05)  # polling a port with a deadline
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench",
               "client_kwargs": {"region_name": "eu-west-1"}}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("bench")
    return proc, options


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class PeakRSS:
    """The client's resident memory at its highest during a block, over what it was before
    (sampled every 5 ms by a thread): a 50 MB value passing through the client shows."""

    def __enter__(self) -> PeakRSS:
        import threading

        import psutil

        self.proc, self.stop = psutil.Process(), threading.Event()
        self.start = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def grew(self) -> float:
        """MB over the start."""
        return (self.peak - self.start) / 2**20


def timed_rss(fn) -> tuple[float, object, float]:
    """``timed`` and the client's RSS growth (MB) while ``fn`` ran."""
    with PeakRSS() as rss:
        t, out = timed(fn)
    return t, out, rss.grew


def backend_config(name: str, base: str, s3_options: dict, secret_file: str) -> dict:
    """The dask config of one repetition of a backend: a fresh storage prefix."""
    if name == "local LMDB":
        return {"daskflow.results.storage": None}
    url = (f"file://{base}/{uuid.uuid4().hex}" if name == "file://" else f"s3://bench/{uuid.uuid4().hex}")
    return {"daskflow.results.storage": url, "daskflow.results.secret-file": secret_file,
            "daskflow.results.storage-options": s3_options if name == "S3 (moto)" else {}}


def clean(cfg: dict, s3_options: dict) -> None:
    """Free what a repetition wrote (moto keeps objects in memory; /tmp is shared)."""
    url = cfg.get("daskflow.results.storage")
    if not url:
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(s3_options if url.startswith("s3://") else {}))
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


def run_workload(cluster, client, kind: str, n: int, mb: int, backends: list[str], reps: int,
                 s3_options: dict, secret_file: str, base: str) -> dict:
    """Medians of first run, rerun and cold rerun per backend, and raw Dask, for one workload."""
    import dask.config

    from daskflow import flow, task
    from daskflow.cache import INPUTS
    from daskflow.runners.dask import DaskTaskRunner

    runner = DaskTaskRunner(address=cluster.scheduler_address)
    if kind == "small":
        cached = task(name="bench-storage-small", cache_policy=INPUTS)(small)

        @flow(task_runner=runner)
        def pipeline():
            return sum(cached.map(range(n)).result())

        def raw():
            return sum(client.gather(client.map(plain_small, range(n), pure=False)))
    else:
        cached = task(name="bench-storage-make", cache_policy=INPUTS)(make)
        summed = task(name="bench-storage-total")(total)

        @flow(task_runner=runner)
        def pipeline():
            from daskflow import unmapped

            return sum(summed.map(cached.map(range(n), unmapped(mb))).result())

        def raw():
            arrays = client.map(plain_make, range(n), [mb] * n, pure=False)
            return sum(client.gather(client.map(total, arrays, pure=False)))

    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-storage-warm-", dir=base)
    pipeline()  # warm: worker imports, connections (its own home, thrown away)
    raw()
    out: dict = {"raw Dask": {"first": []}}
    for name in backends:
        out[name] = {"first": [], "rerun": [], "cold rerun": [], "rerun bodies": 0, "client MB": 0.0}
    for _ in range(reps):
        held = scheduler_tasks(client)
        out["raw Dask"]["first"].append(timed(raw)[0])
        settle(client, held)  # the row after raw Dask must not pay for the release of its tasks
        for name in backends:
            cfg = backend_config(name, base, s3_options, secret_file)
            row = out[name]
            with dask.config.set(cfg):
                os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-storage-", dir=base)
                t, first, grew = timed_rss(pipeline)
                row["first"].append(t)
                before = bodies(client)
                t, again, grew2 = timed_rss(pipeline)
                row["rerun"].append(t)
                row["client MB"] = max(row["client MB"], grew, grew2)
                if name != "local LMDB":
                    os.environ["DASKFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-storage-cold-", dir=base)
                    t, cold, grew = timed_rss(pipeline)
                    row["cold rerun"].append(t)
                    row["client MB"] = max(row["client MB"], grew)
                    assert cold == first
                row["rerun bodies"] = max(row["rerun bodies"], bodies(client) - before)
                assert again == first
            clean(cfg, s3_options)
    med = {}
    for name, row in out.items():
        med[name] = {k: (statistics.median(v) if isinstance(v, list) and v else v) for k, v in row.items()
                     if not (isinstance(v, list) and not v)}
    return med


def bench_lookup(n: int, chunk: int, reps: int, s3_options: dict, secret_file: str, base: str) -> dict:
    """The storage lookup alone, in this process: ``n`` small records written in packs of ``chunk``
    (as workers write a map's chunks), then looked up by a new process's handle (nothing known:
    one listing, the pack headers, the packs) in front of an empty home, as a cold rerun's
    client does. µs per hit, medians of ``reps``; the hot tier's write of the copies included."""
    import dask.config

    from daskflow.cache import serialization as ser
    from daskflow.cache.storage import ObjectStorage
    from daskflow.cache.storage_spec import StorageSpec
    from daskflow.cache.store import LMDBResultStore, TieredStore

    secret = open(secret_file, "rb").read()
    keys = [b"v1/bench-lookup-0000000a/" + i.to_bytes(16, "big") for i in range(n)]
    items = list(zip(keys, ser.encode_many([x * x + 1 for x in range(n)], "bench-lookup-0000000a", None, None,
                                           secret)))
    out = {}
    for name in ("file://", "S3 (moto)"):
        times, listing = [], []
        for _ in range(reps):
            cfg = backend_config(name, base, s3_options, secret_file)
            with dask.config.set(cfg):
                spec = StorageSpec.from_config(None)
                writer = ObjectStorage(spec)
                for i in range(0, n, chunk):
                    writer.put_many(items[i:i + chunk])
                home = tempfile.mkdtemp(prefix="bench-lookup-", dir=base)
                store = TieredStore(LMDBResultStore(home), ObjectStorage(spec), secret)
                t, hits = timed(lambda: store.load_many(keys))
                assert len(hits) == n
                times.append(t)
                store.settle()  # its hot-tier copy, which the lookup did not wait for, is complete
                again = TieredStore(LMDBResultStore(home), ObjectStorage(spec), secret)  # the same home, warm
                listing.append(timed(lambda: again.load_many(keys))[0])
            clean(cfg, s3_options)
        out[name] = {"cold": statistics.median(times) / n * 1e6, "hot tier": statistics.median(listing) / n * 1e6}
    return out


def bench_ls(n: int, reps: int, base: str) -> dict:
    """``daskflow cache ls`` on a real store of ``n`` entries: subprocess wall times, in-process listing."""
    from daskflow.cache import serialization as ser
    from daskflow.cache.store import close_store, get_store

    home = tempfile.mkdtemp(prefix="bench-ls-", dir=base)
    store = get_store(home)
    keys = [b"v1/bench-ls-0000000a/" + i.to_bytes(16, "big") for i in range(n)]
    store.put_many(list(zip(keys, ser.encode_many(list(range(n)), "bench-ls-0000000a", None, None, store.secret))))
    store.load_many(keys[::7])
    close_store(home)
    env = dict(os.environ, DASKFLOW_HOME=home)
    commands = {"ls (table, all rows)": ["ls"], "ls -o json": ["ls", "-o", "json"],
                "ls --sort read --limit 20": ["ls", "--sort", "read", "--limit", "20"],
                "--help (interpreter + imports only)": ["ls", "--help"]}
    out = {}
    for label, args in commands.items():
        times = []
        for _ in range(reps):
            t, proc = timed(lambda: subprocess.run([sys.executable, "-m", "daskflow", "cache", *args], env=env,
                                                   capture_output=True, check=True))
            times.append(t)
        out[label] = statistics.median(times)
    from daskflow.cache.store import open_existing

    listing = []
    for _ in range(reps):
        reader = open_existing(home)
        listing.append(timed(reader.entries)[0])
    out["store.entries() in-process"] = statistics.median(listing)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 x 20 MB arrays instead of 64 x 50 MB")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--large-reps", type=int, default=1,
                        help="repetitions of the arrays workload (one is minutes: GBs through moto)")
    parser.add_argument("-n", type=int, default=10_000, help="small values per map")
    parser.add_argument("--s3-n", type=int, default=10_000, help="small values per map on the S3 server")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true", help="only the arrays (and ls) rows")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    base = tempfile.mkdtemp(prefix="bench-storage-")
    secret_file = os.path.join(base, "results.key")
    with open(secret_file, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(secret_file, 0o600)
    moto, s3_options = start_s3(base)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    backends = ["local LMDB", "file://", "S3 (moto)"]
    load = os.getloadavg()
    results: dict = {"load_before": load, "reps": args.reps}
    try:
        if not args.skip_small:
            results["small"] = {"n": args.n, **run_workload(cluster, client, "small", args.n, 0, backends[:2], args.reps,
                                                            s3_options, secret_file, base)}
            # the S3 rows in a workload of their own (--s3-n: fewer values if moto is slow here)
            results["small, S3"] = {"n": args.s3_n, **run_workload(cluster, client, "small", args.s3_n, 0,
                                                                   [backends[0], backends[2]], args.reps, s3_options,
                                                                   secret_file, base)}
        if not args.skip_large:
            count, mb = (16, 20) if args.quick else (64, 50)
            results["large"] = {"n": count, "mb": mb, "reps": args.large_reps,
                                **run_workload(cluster, client, "large", count, mb, backends, args.large_reps,
                                               s3_options, secret_file, base)}
    finally:
        from daskflow.runners.clients import close_shared_clients

        close_shared_clients()
        client.close()
        cluster.close()
        moto.terminate()
        moto.wait(10)
    moto, s3_options = start_s3(base)  # a fresh server: the one above holds the runs' objects
    try:
        if not args.skip_small:
            results["lookup"] = {"n": args.n, "chunk": 500,
                                 **bench_lookup(args.n, 500, args.reps, s3_options, secret_file, base)}
    finally:
        moto.terminate()
        moto.wait(10)
    results["ls"] = {"entries": 80_000, **bench_ls(80_000, args.reps, base)}
    results["load_after"] = os.getloadavg()
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def report(results: dict) -> None:
    print(f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f} "
          f"(2 cores); medians of {results['reps']}")
    for kind in ("small", "small, S3", "large"):
        if kind not in results:
            continue
        r = results[kind]
        what = f"{r['n']:,} small values" if kind != "large" else \
            f"{r['n']} x {r['mb']} MB arrays (medians of {r['reps']})"
        raw = r["raw Dask"]["first"]
        local = r["local LMDB"]["first"]
        print(f"\n{what}: raw Dask {raw:.3f} s")
        print(f"{'backend':>12} {'first':>9} {'/local':>7} {'/raw':>6} {'rerun':>9} {'cold rerun':>11} "
              f"{'µs/hit cold':>12} {'bodies':>7} {'client MB':>10}")
        for name in ("local LMDB", "file://", "S3 (moto)"):
            if name not in r:
                continue
            row = r[name]
            cold = row.get("cold rerun")
            per_hit = f"{cold / r['n'] * 1e6:.1f}" if cold is not None else "-"
            cold_s = f"{cold:.3f} s" if cold is not None else "-"
            print(f"{name:>12} {row['first']:>7.3f} s {row['first'] / local:>6.2f}x {row['first'] / raw:>5.2f}x "
                  f"{row['rerun']:>7.3f} s {cold_s:>11} {per_hit:>12} {row['rerun bodies']:>7} "
                  f"{row['client MB']:>10.1f}")
    if "lookup" in results:
        r = results["lookup"]
        print(f"\nstorage lookup alone, {r['n']:,} small records in packs of {r['chunk']} (in-process, µs per hit):")
        for name in ("file://", "S3 (moto)"):
            print(f"{name:>12} cold home {r[name]['cold']:>7.1f}   hot tier (same home) {r[name]['hot tier']:>6.1f}")
    print(f"\ndaskflow cache ls on {results['ls']['entries']:,} entries:")
    for label, t in results["ls"].items():
        if label != "entries":
            print(f"  {label:<40} {t:.3f} s")


if __name__ == "__main__":
    main()
