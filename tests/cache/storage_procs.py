"""A process for the storage tests: writes two keys of a result storage over and over, reading them back.

``python storage_procs.py URL OPTIONS_JSON SECRET_FILE VALUE REPS``: each repetition puts a
1 MiB record under ``KEY`` (an object of its own) and a 100-byte record under ``SMALL_KEY``
(a pack of its own), every byte ``VALUE``, then reads both back and checks that each record
verifies and holds a whole value, its own or the other writer's. Prints ``ok``; any partial
or foreign value fails the process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

from daskflow.cache import serialization as ser
from daskflow.cache.storage import open_storage
from daskflow.cache.storage_spec import StorageSpec

KEY = b"v1/race-00000000/" + bytes(16)
SMALL_KEY = b"v1/race-00000000/" + bytes(15) + b"\x01"
SIZES = {KEY: 1 << 20, SMALL_KEY: 100}


def check(record: bytes, size: int, secret: bytes) -> None:
    """A record holds a whole value of one of the writers."""
    _, loaded = ser.decode(bytearray(record), secret)
    assert loaded.shape == (size,) and loaded[0] in (1, 2) and (loaded == loaded[0]).all()


def main(url: str, options: str, secret_file: str, value: int, reps: int) -> None:
    storage = open_storage(StorageSpec(url, options, secret_file))
    secret = open(secret_file, "rb").read()
    records = [(k, ser.encode(np.full(n, value, dtype="u1"), "race-00000000", None, None, secret))
               for k, n in SIZES.items()]
    for _ in range(reps):
        storage.put_many(records)
        for (key, _), record in zip(records, storage.get_many(list(SIZES))):
            check(record, SIZES[key], secret)
    print("ok")


def race(url: str, options: str, secret_file: str, reps: int = 40) -> None:
    """Two real processes of ``main`` write the keys at once (for the tests); both must succeed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, str(pathlib.Path(__file__)), url, options, secret_file, str(v),
                               str(reps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
