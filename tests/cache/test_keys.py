import dataclasses
import datetime
import enum
import pathlib
import socket
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from daskflow.cache.keys import KeyColumn, KeyPlan, NotConcrete, Unhashable, display, fingerprint


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Custom:
    def __init__(self, v):
        self.v = v

    def __daskflow_cache_key__(self):
        return ("custom", self.v)


class Plain:
    def __init__(self, a):
        self.a = a


SAMPLES = {
    "int": 1,
    "float": 1.0,
    "str": "1",
    "bool": True,
    "none": None,
    "bytes": b"\x00\x01",
    "tuple": (1, "a", None),
    "list": [1, [2, 3]],
    "dict": {"b": 2, "a": 1},
    "set": {3, 1, 2},
    "path": pathlib.PurePosixPath("/data/x.csv"),
    "datetime": datetime.datetime(2024, 6, 1, 12, 0, tzinfo=datetime.timezone.utc),
    "timedelta": datetime.timedelta(days=1, seconds=3),
    "enum": Color.RED,
    "uuid": uuid.UUID(int=7),
    "array": np.arange(6, dtype="<i8").reshape(2, 3),
    "npscalar": np.float32(1.5),
}

# Pinned: a change here changes every cache key (bump keys.VERSION when it is deliberate).
GOLDEN_ALL = {'int': 'c3d8523c272c18fb5f79164a38c7d984', 'float': '31af32929a463a44276669466b7ce7c9',
              'str': 'f1a4b4b4d3b756eb12b24d8b9cc5718b', 'bool': '1d33c0bd3511c80d20948828081ddcb4',
              'none': '626d368fe0e74b4f1a038927df1311d6', 'bytes': 'd3f349a4f2b3d334f79e46d6bd260e89',
              'tuple': '9823e7b713a66de2d81dab3ef42240ea', 'list': '3a47f56a51b83b81e143e5a57e07624b',
              'dict': '011dbae4b9137b81e5fb91941ca06a5a', 'set': 'f49f8a3852c4ca1767688cf103c79536',
              'path': 'fdf04e715148007922b40f4e5cd9bb3b', 'datetime': '9d141ba82d2b19ae089c51f60df6af48',
              'timedelta': '6a0d42f601e3e9305c97a2f59c856113', 'enum': '02c457310a8369e962b7b038ed83296e',
              'uuid': '97d75cc8132bf6cfab773741b2b25552', 'array': '471420920ba912b3c8be446533ca36f8',
              'npscalar': '632c8c51b18a10bb6c18a0cb03bc099f'}
GOLDEN_KEY = "v1/double-0123abcd/e1c71eabbbeed8a8e46306070e43e568"


def test_keys_golden_fingerprints():
    got = {name: fingerprint(v).hex() for name, v in SAMPLES.items()}
    for name, expected in GOLDEN_ALL.items():
        assert got[name] == expected, name


def test_keys_distinguish_types_and_values():
    fps = [fingerprint(v) for v in (1, 1.0, "1", True, b"1", (1,), [1], {1}, np.int64(1))]
    assert len(set(fps)) == len(fps)
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({1, 2, 3}) == fingerprint({3, 2, 1})
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(3).astype("i4"))
    assert fingerprint(np.arange(6).reshape(2, 3)) != fingerprint(np.arange(6).reshape(3, 2))
    assert fingerprint(np.arange(10)[::2]) == fingerprint(np.array([0, 2, 4, 6, 8]))
    assert fingerprint(Point(1, 2.0)) != fingerprint(Point(1, 2.5))
    assert fingerprint(Custom(1)) == fingerprint(Custom(1)) != fingerprint(Custom(2))
    assert fingerprint(Plain([1])) == fingerprint(Plain([1])) != fingerprint(Plain([2]))


@pytest.mark.parametrize("bad", [threading.Lock(), socket.socket(), open(__file__)], ids=["lock", "socket", "file"])
def test_keys_refuse_unhashable(bad):
    with pytest.raises(Unhashable):
        fingerprint({"x": [bad]})
    if hasattr(bad, "close"):
        bad.close()


def test_keys_refuse_recursive_structures():
    a: list = []
    a.append(a)
    with pytest.raises(Unhashable):
        fingerprint(a)


def test_keys_futures_are_not_concrete():
    from daskflow import unmapped

    with pytest.raises(NotConcrete):
        fingerprint([unmapped(1)])


def test_keys_plan_full_key_is_pinned():
    plan = KeyPlan("double-0123abcd", b"v1/double-0123abcd/", b"v1\x00inputs", (0,), (b"x",))
    key = plan.key(None, (21,), lambda: "")
    assert display(key) == GOLDEN_KEY
    keys, bad = plan.keys_for(None, [KeyColumn(True, [20, 21])], 2, lambda i: "")
    assert keys[1] == key and bad is None


_CHILD = r"""
import sys, json
sys.path.insert(0, {here!r})
import test_keys as t
print(json.dumps({{n: t.fingerprint(v).hex() for n, v in t.SAMPLES.items()}}))
"""


def test_keys_same_in_two_fresh_processes():
    here = str(pathlib.Path(__file__).parent)
    outs = []
    for seed in ("1", "2"):  # different hash seeds: str hashing must not leak into keys
        env = {"PYTHONHASHSEED": seed, "PATH": "", "PYTHONPATH": ":".join(sys.path)}
        out = subprocess.run([sys.executable, "-c", _CHILD.format(here=here)], capture_output=True, text=True,
                             env=env, check=True).stdout
        outs.append(out)
    assert outs[0] == outs[1]
    import json

    assert json.loads(outs[0]) == GOLDEN_ALL


@pytest.mark.parametrize("column", [range(5, 40), [1, -2, 3.5, "é", b"b", None, True, 2**70], ["x"] * 7])
def test_keys_atom_fast_path_equals_key_by_key(column):
    plan = KeyPlan("double-0123abcd", b"v1/double-0123abcd/", b"v1\x00inputs", (0, 1), (b"x", b"y"))
    n = len(column)
    for second in (KeyColumn(False, 7), KeyColumn(True, list(range(n)))):
        keys, bad = plan.keys_for(None, [KeyColumn(True, column), second], n, lambda i: "")
        rows = zip(column, second.value if second.mapped else [7] * n)
        assert bad is None and keys == [plan.key(None, row, lambda: "") for row in rows]
