"""Where results go: a result storage's URL, its fsspec options and the secret that signs its
records (``result_storage``, ``daskflow.results.*``). Small and picklable: it travels in a
chunk's cache spec, and the worker opens the storage itself (``cache.storage.open_storage``).

Signing. Every reader verifies a record with the secret: the home's ``secret.key``, or the
file ``daskflow.results.secret-file`` names. People and hosts that share a storage share
that file (created once with ``python -c "import os; open('key','wb').write(os.urandom(32))"``,
mode 0600).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from daskflow import config

__all__ = ["StorageSpec"]


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

    @property
    def object_store(self) -> bool:
        """Whether the URL names an object store (s3://, gs://, ...: a write is a request of
        milliseconds) rather than a filesystem path (file://, a plain path: a file written now)."""
        return "://" in self.url and not self.url.startswith(("file://", "local://"))

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
