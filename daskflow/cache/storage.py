"""Result storage: cache records in any fsspec URL, written and read by whoever computes or looks up.

``result_storage`` (a task or flow option, or ``daskflow.results.storage``) names a place
that outlives one machine: ``file:///shared/path``, ``s3://bucket/prefix``, ``gs://...``,
``abfs://...``, anything fsspec opens (its backends, s3fs and the like, are extras). A
record is the same signed blob the local LMDB store holds (``cache.serialization``), at
``{url}/{key as text}`` — content-addressed: the key is the hash of the task and its
inputs. The worker that computed a value writes it there itself; a lookup reads the local
store first (the index and hot tier), then the storage for what it lacks, in one batched
``cat``. Nothing of a value passes through the client unless the client asks for it.

Signing. Every reader verifies the record with the secret: the home's ``secret.key``, or
the file ``daskflow.results.secret-file`` names. People and hosts that share a storage
share that file (created once with ``python -c "import os; open('key','wb').write(os.urandom(32))"``,
mode 0600); a record signed with another secret, truncated or altered is a miss with one
warning, never loaded.

Writes are atomic per record: object stores put whole objects; on a filesystem a record is
written under a temporary name and renamed. Two writers of one key: one complete value wins.
A storage that cannot be reached raises ``StorageUnreachable`` naming the URL and the cause,
at the first write or read; with ``daskflow.results.on-storage-error: warn`` the runs go on
uncached after one warning. Timeouts are bounded (``daskflow.results.storage-timeout``).
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import os
import pathlib
import threading
import time
import uuid
import warnings
from typing import Any

import msgpack

from daskflow import config
from daskflow.cache import bounds
from daskflow.exceptions import DaskflowError


class StorageUnreachable(DaskflowError, OSError):
    """The result storage could not be written or read (missing bucket, refused credentials...)."""


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    """Where results go: an fsspec URL, its options, and the secret file that signs them.

    Travels in a chunk's cache spec: a worker opens the storage itself.
    """

    url: str
    options: str = "{}"  # fsspec's options for the URL, as JSON (hashable, and nested dicts allowed)
    secret_file: str | None = None

    @classmethod
    def from_config(cls, url: str | None) -> StorageSpec | None:
        """The storage ``url`` (or the configured default) with the configured options, or None."""
        url = url or config.get("results.storage")
        if not url:
            return None
        options = json.dumps(dict(config.get("results.storage-options") or {}), sort_keys=True)
        return cls(str(url).rstrip("/"), options, config.get("results.secret-file") or None)

    def secret(self, home: str | os.PathLike | None) -> bytes | None:
        """The signing secret: the secret file's, else the home's (None: neither is readable here)."""
        from daskflow.cache import serialization as ser

        if self.secret_file:
            data = pathlib.Path(self.secret_file).expanduser().read_bytes()
            ser.check_secret(data, self.secret_file)
            return data
        if home is None:
            return None
        return ser.load_secret(home)


class ObjectStorage:
    """Signed records at ``{url}/{key}`` through fsspec (see the module docstring)."""

    def __init__(self, spec: StorageSpec) -> None:
        import fsspec

        self.spec = spec
        options = json.loads(spec.options)
        protocol = fsspec.utils.get_protocol(spec.url)
        timeout = _seconds(config.get("results.storage-timeout", "30s"))
        if protocol in ("s3", "s3a"):  # bounded: a storage that does not answer is an error, not a hang
            options.setdefault("config_kwargs", {"connect_timeout": timeout, "read_timeout": timeout,
                                                 "retries": {"max_attempts": 2}})
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                options.setdefault("endpoint_url", endpoint)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(spec.url, **options)
        except ImportError as exc:
            raise StorageUnreachable(f"result storage {spec.url}: {exc} (install the fsspec backend for it, "
                                     f"e.g. pip install 'daskflow[s3]')") from exc
        self.local = protocol in ("file", "local")
        self.warned = False
        self.broken = False  # unreachable, and daskflow.results.on-storage-error is warn: not used
        self.reads = bounds.ReadStamps(bounds.STORAGE_READ_BATCH)
        self.total: int | None = None  # bytes of records at the last listing (None: not listed yet)
        self.unchecked = 0  # bytes this process wrote since
        self._evicting = threading.Lock()
        self._dirs: set[str] = set()  # directories this process made (or found) for records
        self._check()
        atexit.register(self._flush_at_exit)

    def _check(self) -> None:
        """Reach the storage once, when it is first used in this process: a missing bucket or
        refused credentials are one clear error here, not a miss per lookup."""
        try:
            if self.local:
                os.makedirs(self.root, mode=0o700, exist_ok=True)
                return
            bucket = self.root.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise FileNotFoundError(f"the bucket {bucket!r} does not exist")
        except Exception as exc:  # noqa: BLE001
            self._failed("reach", exc)

    def path(self, key: bytes) -> str:
        # keys.display(key), inlined: this runs once per record of a batch
        return f"{self.root}/{key[:-16].decode()}{key[-16:].hex()}"

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The records of ``keys`` (None where the storage has none), in one batched read."""
        if self.broken:
            return [None] * len(keys)
        paths = [self.path(k) for k in keys]
        if self.local:
            return self._read_files(paths, None)
        try:
            found = self.fs.cat(paths, on_error="omit")
        except FileNotFoundError:
            found = {}
        except Exception as exc:  # noqa: BLE001 - unreachable storage: a clear error or a warning
            self._failed("read from", exc)
            return [None] * len(keys)
        return [found.get(p) for p in paths]

    def get_bounded(self, keys: list[bytes], max_bytes: int | None) -> tuple[list[bytes | None], int]:
        """``get_many``, except that records over ``max_bytes`` are not fetched (a ranged read
        stops past it; they come back None) and are counted: ``(records, how many too large)``."""
        if max_bytes is None or self.broken:
            return self.get_many(keys), 0
        paths = [self.path(k) for k in keys]
        if self.local:
            found: list = self._read_files(paths, max_bytes)
        else:
            found = self._cat_ranges(paths, max_bytes)
            if found is None:
                return [None] * len(keys), 0
        out: list[bytes | None] = []
        large = 0
        for blob in found:
            if isinstance(blob, BaseException) or blob is None:
                out.append(None)
            elif len(blob) > max_bytes:
                out.append(None)
                large += 1
            else:
                out.append(blob)
        return out, large

    def _cat_ranges(self, paths: list[str], max_bytes: int) -> list | None:
        try:
            return self.fs.cat_ranges(paths, [0] * len(paths), [max_bytes + 1] * len(paths), on_error="return")
        except Exception as exc:  # noqa: BLE001 - unreachable storage: a clear error or a warning
            self._failed("read from", exc)
            return None

    def _read_files(self, paths: list[str], limit: int | None) -> list[bytes | None]:
        """Records of a filesystem storage, read directly (a tenth of fsspec's per-file cost);
        with ``limit``, at most ``limit + 1`` bytes of each."""
        out: list[bytes | None] = []
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as f:
                    out.append(f.read() if limit is None else f.read(limit + 1))
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                out.append(None)
            except OSError as exc:
                self._failed("read from", exc)
                return [None] * len(paths)
        return out

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write records, each atomically (see the module docstring)."""
        if not items or self.broken:
            return
        blobs = {self.path(k): r for k, r in items}
        log = self._read_log()
        if log is not None:  # pending read stamps ride along
            blobs[log[0]] = log[1]
        try:
            self._put(blobs)
        except Exception as exc:  # noqa: BLE001
            self._failed("write to", exc)
            return
        self._after_write(sum(len(r) for _, r in items))

    def _put(self, blobs: dict[str, bytes]) -> None:
        if self.local:
            for path, blob in blobs.items():
                self._put_file(path, blob)
        else:
            self.fs.pipe({path: bytes(blob) for path, blob in blobs.items()})

    def _put_file(self, path: str, record: bytes) -> None:
        """Write under a temporary name of this process, then rename: readers see a whole
        record or none (no uuid per record: a token per process and a counter)."""
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self._dirs.add(parent)
        tmp = f"{path}.{_TOKEN}{os.getpid()}-{next(_COUNTER)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # the directory went (a prune, a clean-up) since we made it
            os.makedirs(parent, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # -- read stamps and the size limit (see cache/bounds.py) ----------------------------
    def note_reads(self, keys: list[bytes]) -> None:
        """Remember records read (from here or from a local hot tier in front of it)."""
        if self.reads.note(keys) and not self.broken:
            self.flush_reads()

    def _read_log(self) -> tuple[str, bytes] | None:
        """The pending read stamps as one log object: (path, blob), or None."""
        keys = self.reads.take()
        if not keys:
            return None
        from daskflow.cache.keys import display

        now = time.time()
        name = f"{self.root}/{bounds.LOGS}/{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return name, msgpack.packb({display(k): now for k in keys})

    def flush_reads(self) -> None:
        """Write the pending read stamps (one small object)."""
        log = self._read_log()
        if log is not None:
            try:
                self._put(dict([log]))
            except Exception:  # noqa: BLE001 - stamps are a hint: lost ones make entries look older
                pass

    def _flush_at_exit(self) -> None:
        if not self.broken:
            self.flush_reads()

    def _after_write(self, nbytes: int) -> None:
        """Check the size when first writing here, and after each tenth of the limit written."""
        limit = bounds.max_bytes()
        if limit is None:
            return
        self.unchecked += nbytes
        if self.total is None or self.unchecked >= limit / 10 or self.total + self.unchecked > limit:
            self.evict(limit, check=True)

    def entries(self) -> tuple[list[bounds.Entry], list[str]]:
        """Every record (foreign files ignored) with size, write and last read time; and the
        read logs those times came from."""
        root = self.root.rstrip("/")
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            found = {}
        records, logs = [], []
        for path, info in found.items():
            relative = path[len(root) + 1:] if path.startswith(root + "/") else None
            if relative is None:
                continue
            if relative.startswith(bounds.LOGS + "/"):
                logs.append(path)
            elif (key := bounds.record_name(relative)) is not None:
                records.append(bounds.Entry(key, int(info.get("size") or 0), bounds.info_time(info), None))
        last = self._read_stamps(logs)
        from daskflow.cache.keys import display

        for entry in records:
            entry.last_read = last.get(display(entry.key))
        return records, logs

    def _read_stamps(self, logs: list[str]) -> dict[str, float]:
        last: dict[str, float] = {}
        if not logs:
            return last
        for blob in self.fs.cat(logs, on_error="omit").values():
            try:
                stamps = msgpack.unpackb(blob)
            except Exception:  # noqa: BLE001 - a damaged log: its stamps are lost
                continue
            if isinstance(stamps, dict):
                for name, t in stamps.items():
                    if isinstance(t, (int, float)) and t > last.get(name, 0.0):
                        last[name] = float(t)
        return last

    def delete(self, keys: list[bytes]) -> int:
        """Remove records; returns how many were asked (object stores do not say which existed)."""
        if keys:
            self.fs.rm([self.path(k) for k in keys])
        return len(keys)

    def evict(self, limit: int, target: float | None = None, check: bool = False) -> int:
        """Delete the least recently used records until the storage holds at most ``target``
        bytes (default: ``LOW_WATER`` of ``limit``) and fold the read logs into one.
        With ``check`` (after a write) nothing happens unless the storage is over ``limit``."""
        if not self._evicting.acquire(blocking=False):
            return 0
        try:
            records, logs = self.entries()
            total = sum(e.size for e in records)
            target = limit * bounds.LOW_WATER if target is None else target
            self.total, self.unchecked = total, 0
            if total <= (limit if check else target):
                return 0
            gone = bounds.victims(records, total, target)
            self.delete([e.key for e in gone])
            self.total = total - sum(e.size for e in gone)
            self._fold(records, gone, logs)
            return len(gone)
        except Exception as exc:  # noqa: BLE001 - an eviction that fails leaves the storage as it was
            warnings.warn(f"result storage {self.spec.url}: could not evict ({type(exc).__name__}: {exc})",
                          _cache_warning(), stacklevel=3)
            return 0
        finally:
            self._evicting.release()

    def _fold(self, records: list[bounds.Entry], gone: list[bounds.Entry], logs: list[str]) -> None:
        """Replace the read logs by one holding the stamps of the records that stay."""
        if len(logs) < 2 and not gone:
            return
        from daskflow.cache.keys import display

        dropped = {e.key for e in gone}
        kept = {display(e.key): e.last_read for e in records if e.key not in dropped and e.last_read}
        name = f"{self.root}/{bounds.LOGS}/{time.time_ns()}-{os.getpid()}-folded"
        if kept:
            self._put({name: msgpack.packb(kept)})
        if logs:
            self.fs.rm(logs)

    def _failed(self, what: str, exc: BaseException) -> None:
        message = (f"result storage {self.spec.url}: could not {what} it: {type(exc).__name__}: {exc}. Check the "
                   "URL, that the bucket or directory exists and the credentials (fsspec's, e.g. AWS_ACCESS_KEY_ID "
                   "and AWS_ENDPOINT_URL, or daskflow.results.storage-options)")
        if config.get("results.on-storage-error", "raise") == "warn":
            self.broken = what == "reach"
            if not self.warned:
                self.warned = True
                warnings.warn(message + "; runs go on uncached", _cache_warning(), stacklevel=4)
            return
        raise StorageUnreachable(message) from exc


_TOKEN = os.urandom(6).hex()  # temporary names of this process (pids repeat across hosts)
_COUNTER = itertools.count()
_opened: dict[tuple[StorageSpec, int], ObjectStorage] = {}
_lock = threading.Lock()


def open_storage(spec: StorageSpec) -> ObjectStorage:
    """This process's handle on a storage (opened once per process)."""
    key = (spec, os.getpid())
    storage = _opened.get(key)
    if storage is None:
        with _lock:
            storage = _opened.get(key)
            if storage is None:
                storage = _opened[key] = ObjectStorage(spec)
    return storage


def _cache_warning() -> type[Warning]:
    from daskflow.cache.store import CacheWarning

    return CacheWarning


def _seconds(value: Any) -> float:
    from daskflow.config import parse_timedelta

    return float(parse_timedelta(value, default="seconds"))
