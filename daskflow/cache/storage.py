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

import dataclasses
import json
import os
import pathlib
import threading
import uuid
import warnings
from typing import Any

from daskflow import config
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
        self._check()

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
        from daskflow.cache.keys import display

        return f"{self.root}/{display(key)}"

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The records of ``keys`` (None where the storage has none), in one batched read."""
        if self.broken:
            return [None] * len(keys)
        paths = [self.path(k) for k in keys]
        try:
            found = self.fs.cat(paths, on_error="omit")
        except FileNotFoundError:
            found = {}
        except Exception as exc:  # noqa: BLE001 - unreachable storage: a clear error or a warning
            self._failed("read from", exc)
            return [None] * len(keys)
        return [found.get(p) for p in paths]

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write records, each atomically (see the module docstring)."""
        if not items or self.broken:
            return
        try:
            if self.local:
                for key, record in items:
                    self._put_file(self.path(key), record)
            else:
                self.fs.pipe({self.path(k): bytes(r) for k, r in items})
        except Exception as exc:  # noqa: BLE001
            self._failed("write to", exc)

    def _put_file(self, path: str, record: bytes) -> None:
        parent = os.path.dirname(path)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(record)
        os.replace(tmp, path)

    def _failed(self, what: str, exc: BaseException) -> None:
        message = (f"result storage {self.spec.url}: could not {what} it: {type(exc).__name__}: {exc}. Check the "
                   "URL, that the bucket or directory exists and the credentials (fsspec's, e.g. AWS_ACCESS_KEY_ID "
                   "and AWS_ENDPOINT_URL, or daskflow.results.storage-options)")
        if config.get("results.on-storage-error", "raise") == "warn":
            self.broken = what == "reach"
            if not self.warned:
                self.warned = True
                from daskflow.cache.store import CacheWarning

                warnings.warn(message + "; runs go on uncached", CacheWarning, stacklevel=4)
            return
        raise StorageUnreachable(message) from exc


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


def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="seconds"))
