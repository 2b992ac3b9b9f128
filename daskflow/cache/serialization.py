"""Cache records: a signed header and a payload that loads numpy arrays without copies.

Layout of one record (all integers little-endian)::

    b"DFC1" | HMAC-SHA256 (32 bytes) | u32 header length | header (msgpack) | padding
    | pickle bytes | padding | buffer 0 | padding | buffer 1 ...

The header holds ``created``, ``expires`` (or None), the task key, the serializer and
the offsets of the pickle and of every out-of-band buffer (pickle protocol 5). Buffers
start on 64-byte boundaries, so an array loads as a view of the record's one bytearray
(the copy out of LMDB is the only copy). The MAC covers everything after itself, with
a secret private to the daskflow home: unpickling runs code, so a record that was not
written by this home's owner is never loaded.
"""

from __future__ import annotations

import hmac
import json
import os
import pathlib
import pickle
import struct
import time
from typing import Any

import cloudpickle
import msgpack

MAGIC = b"DFC1"
_MAC = 32
_FIXED = len(MAGIC) + _MAC + 4
_ALIGN = 64


class DamagedRecord(Exception):
    """A record that cannot be read (truncated, bad signature, unloadable payload)."""


def load_secret(home: str | os.PathLike) -> bytes:
    """The home's 32-byte signing secret, created once (0600) by whichever process comes first."""
    path = pathlib.Path(home) / "secret.key"
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
    except FileNotFoundError:
        pass
    pathlib.Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".secret.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and fails if another process won the race
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def _pad(n: int) -> int:
    return -n % _ALIGN


def encode(value: Any, task_key: str, expires: float | None, serializer: str | None, secret: bytes,
           created: float | None = None) -> bytes:
    """A signed record holding ``value``; raises if the value cannot be serialized."""
    buffers: list[pickle.PickleBuffer] = []
    serializer = serializer or "cloudpickle"
    if serializer == "json":
        payload = json.dumps(value).encode()
    elif serializer == "pickle":
        payload = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    else:
        payload = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    offsets, pos = [], len(payload)
    for raw in raws:
        pos += _pad(pos)
        offsets.append((pos, raw.nbytes))
        pos += raw.nbytes
    header = msgpack.packb({"c": created or time.time(), "e": expires, "t": task_key, "s": serializer,
                            "p": len(payload), "b": offsets})
    start = _FIXED + len(header)
    parts = [struct.pack("<I", len(header)), header, bytes(_pad(start)), payload]
    end = len(payload)
    for (off, _), raw in zip(offsets, raws):
        parts.append(bytes(off - end))
        parts.append(raw)
        end = off + raw.nbytes
    body = b"".join(parts)
    return MAGIC + hmac.digest(secret, body, "sha256") + body


def read_header(record: bytes | bytearray | memoryview) -> dict:
    """The header of a record (not verified: for listings, never for loading)."""
    if bytes(record[:4]) != MAGIC or len(record) < _FIXED:
        raise DamagedRecord("not a daskflow cache record")
    (hlen,) = struct.unpack_from("<I", record, len(MAGIC) + _MAC)
    try:
        return msgpack.unpackb(bytes(record[_FIXED:_FIXED + hlen]))
    except Exception as exc:
        raise DamagedRecord(f"unreadable header: {exc}") from None


def decode(record: bytearray, secret: bytes) -> tuple[dict, Any]:
    """``(header, value)`` of a verified record; raises ``DamagedRecord``.

    ``record`` should be a bytearray: arrays in the value are writable views of it.
    """
    view = memoryview(record)
    if len(view) < _FIXED or bytes(view[:4]) != MAGIC:
        raise DamagedRecord("not a daskflow cache record")
    if not hmac.compare_digest(hmac.digest(secret, view[len(MAGIC) + _MAC:], "sha256"),
                               bytes(view[len(MAGIC):len(MAGIC) + _MAC])):
        raise DamagedRecord("bad signature (written with another secret, or altered)")
    header = read_header(view)
    (hlen,) = struct.unpack_from("<I", view, len(MAGIC) + _MAC)
    start = _FIXED + hlen
    start += _pad(start)
    try:
        payload = view[start:start + header["p"]]
        if header["s"] == "json":
            return header, json.loads(bytes(payload))
        buffers = [view[start + off:start + off + n] for off, n in header["b"]]
        return header, pickle.loads(payload, buffers=buffers)
    except Exception as exc:
        raise DamagedRecord(f"payload cannot be loaded: {type(exc).__name__}: {exc}") from None
