"""A process for the storage tests: writes one key of a result storage over and over, reading it back.

``python storage_procs.py URL OPTIONS_JSON SECRET_FILE VALUE REPS SIZE``: each repetition puts a
record of SIZE bytes (every byte ``VALUE``; 1 MiB: an object of its own, small: a pack) under one
fixed key, then reads the key back and checks that the record verifies and holds a whole value,
its own or the other writer's. Prints ``ok``; any partial or foreign value fails the process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

from daskflow.cache import serialization as ser
from daskflow.cache.storage import StorageSpec, open_storage

KEY = b"v1/race-00000000/" + bytes(16)


def main(url: str, options: str, secret_file: str, value: int, reps: int, size: int = 1 << 20) -> None:
    storage = open_storage(StorageSpec(url, options, secret_file))
    secret = open(secret_file, "rb").read()
    record = ser.encode(np.full(size, value, dtype="u1"), "race-00000000", None, None, secret)
    for _ in range(reps):
        storage.put_many([(KEY, record)])
        _, loaded = ser.decode(bytearray(storage.get_many([KEY])[0]), secret)
        assert loaded.shape == (size,) and loaded[0] in (1, 2) and (loaded == loaded[0]).all()
    print("ok")


def race(url: str, options: str, secret_file: str, reps: int = 40, size: int = 1 << 20) -> None:
    """Two real processes of ``main`` write one key at once (for the tests); both must succeed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, str(pathlib.Path(__file__)), url, options, secret_file, str(v),
                               str(reps), str(size)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
