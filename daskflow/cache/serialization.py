"""Cache records: a signed header and a payload that loads numpy arrays without copies.

Layout of one record (all integers little-endian)::

    b"DFC1" | MAC (32 bytes) | u32 header length | header | padding
    | pickle bytes | padding | buffer 0 | padding | buffer 1 ...

The header (fixed-size struct fields, then the task key) holds ``created``,
``expires`` (0: never), the task key, the serializer and the offsets of the pickle and of every out-of-band buffer (pickle protocol 5). Buffers
start on 64-byte boundaries, so an array loads as a view of the record's one bytearray
(the copy out of LMDB is the only copy). The MAC (keyed BLAKE2b, a standard MAC like
HMAC but ~3x cheaper per small record) covers everything after itself, with a secret
private to the daskflow home: unpickling runs code, so a record that was not
written by this home's owner is never loaded.

Batches: ``encode_many`` signs a chunk's results with the keyed state set up once;
``load_many`` (a cached rerun's hot path) checks every MAC of a batch before it
unpickles anything, with one constant-time comparison when all verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import pickle
import struct
import tempfile
import sys
import time
from typing import Any

import cloudpickle

MAGIC = b"DFC1"
_MAC = 32
_FIXED = len(MAGIC) + _MAC + 4
_ALIGN = 64
SMALL = 4096  # records up to this size are copied out of the map before decoding


class DamagedRecord(Exception):
    """A record that cannot be read (truncated, bad signature, unloadable payload)."""


SECRET_BYTES = 32


class SecretWarning(UserWarning):
    """The home's ``secret.key`` had the wrong length and was replaced."""


def load_secret(home: str | os.PathLike) -> bytes:
    """The home's 32-byte signing secret, created once (0600) by whichever process comes first.

    A key of any other length (empty, cut short, padded) is never used: a short key
    makes forging a record easy. It is replaced by a new random key, with a warning;
    every entry signed with the old one becomes a miss.
    """
    path = pathlib.Path(home) / "secret.key"
    try:
        data = path.read_bytes()
        if len(data) == SECRET_BYTES:
            return data
        import warnings

        warnings.warn(f"{path} holds {len(data)} bytes, not {SECRET_BYTES}: it is not used as a signing key. "
                      "A new key replaces it; every cache entry signed with the old one is a miss.",
                      SecretWarning, stacklevel=2)
        replace = True
    except FileNotFoundError:
        replace = False
    pathlib.Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    # A name of its own per call (0600): threads of one process race here too, and a name
    # per process let one thread truncate the file another had just linked as the key.
    fd, name = tempfile.mkstemp(prefix=".secret.", suffix=".tmp", dir=home)
    tmp = pathlib.Path(name)
    try:
        os.write(fd, os.urandom(SECRET_BYTES))
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic and fails if another process won the race
    except FileExistsError:
        pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    data = path.read_bytes()
    check_secret(data, path)
    return data


def check_secret(secret: bytes, where: object = "the secret") -> None:
    """Raise unless ``secret`` is a full-length key (a weak key must never sign or verify)."""
    if type(secret) is not bytes or len(secret) != SECRET_BYTES:
        raise ValueError(f"{where}: a signing key must be {SECRET_BYTES} bytes, not {len(secret)}")


def sign(secret: bytes, body: bytes) -> bytes:
    """``MAC + body``: a blob that ``verify`` accepts only with the same secret (queue records)."""
    check_secret(secret)
    return mac(secret, body) + body


def verify(secret: bytes, blob: bytes) -> bytes:
    """The body of a ``sign``-ed blob; raises ``DamagedRecord`` when its MAC does not verify."""
    check_secret(secret)
    blob = bytes(blob)
    if len(blob) < _MAC or not hmac.compare_digest(mac(secret, blob[_MAC:]), blob[:_MAC]):
        raise DamagedRecord("bad signature (written with another secret, or altered)")
    return blob[_MAC:]


def _pad(n: int) -> int:
    return -n % _ALIGN


_SERIALIZERS = ("cloudpickle", "pickle", "json", "segment")  # segment: many pickles (cache/segments.py)
_SEGMENT = 3
_HEAD = struct.Struct("<ddBHQH")  # created, expires (0: never), serializer, n buffers, pickle length, key length
_FULL = struct.Struct("<IddBHQH")  # the header length, then _HEAD
_BUF = struct.Struct("<QQ")  # offset, length of an out-of-band buffer
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def mac(secret: bytes, body: Any) -> bytes:
    """Keyed BLAKE2b: a standard MAC (RFC 7693), 3x cheaper than HMAC-SHA256 for small records."""
    check_secret(secret)
    return hashlib.blake2b(body, key=secret, digest_size=_MAC).digest()


def _dumps(value: Any, serializer: str, buffers: list) -> bytes:
    if serializer == "json":
        return json.dumps(value).encode()
    if serializer == "pickle" or type(value) in _PLAIN:  # cloudpickle's per-call cost is 8x pickle's
        return pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    # numpy as loaded already (never imported here); getattr: another thread may be importing it
    if type(value) is getattr(sys.modules.get("numpy"), "ndarray", None) and not value.dtype.hasobject:
        return pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)


def encode(value: Any, task_key: str, expires: float | None, serializer: str | None, secret: bytes,
           created: float | None = None) -> bytes:
    """A signed record holding ``value``; raises if the value cannot be serialized."""
    buffers: list[pickle.PickleBuffer] = []
    serializer = serializer or "cloudpickle"
    payload = _dumps(value, serializer, buffers)
    raws = [b.raw() for b in buffers]
    offsets, pos = [], len(payload)
    for raw in raws:
        pos += _pad(pos)
        offsets.append((pos, raw.nbytes))
        pos += raw.nbytes
    tk = task_key.encode()
    header = b"".join([_HEAD.pack(created or time.time(), expires or 0.0, _SERIALIZERS.index(serializer),
                                  len(raws), len(payload), len(tk)), tk,
                       *(_BUF.pack(off, n) for off, n in offsets)])
    start = _FIXED + len(header)
    parts = [struct.pack("<I", len(header)), header, bytes(_pad(start)), payload]
    end = len(payload)
    for (off, _), raw in zip(offsets, raws):
        parts.append(bytes(off - end))
        parts.append(raw)
        end = off + raw.nbytes
    # the MAC over the parts as they are, then ONE copy into the record (joining the body and
    # then prefixing it copied a large value twice: 2 x 50 MB for a 50 MB array)
    check_secret(secret)
    h = hashlib.blake2b(key=secret, digest_size=_MAC)
    for part in parts:
        h.update(part)
    return b"".join([MAGIC, h.digest(), *parts])


def encode_many(values: list, task_key: str, expires: float | None, serializer: str | None, secret: bytes,
                created: float | None = None) -> list[bytes | None]:
    """``encode`` of many values sharing one header (a chunk's results): the same records,
    built without per-value header packing; None where a value cannot be serialized.

    Values with out-of-band buffers (arrays) or a JSON serializer go through ``encode``.
    """
    serializer = serializer or "cloudpickle"
    created = created or time.time()
    if serializer == "json":
        return [_try_encode(v, task_key, expires, serializer, secret, created) for v in values]
    tk = task_key.encode()
    code = _SERIALIZERS.index(serializer)
    plain = serializer == "pickle"
    pack_head = _FULL.pack
    check_secret(secret)
    dumps, cdumps, keyed = pickle.dumps, cloudpickle.dumps, hashlib.blake2b(key=secret, digest_size=_MAC)
    expires = expires or 0.0
    hlen = _HEAD.size + len(tk)
    pad = bytes(-(_FIXED + hlen) % _ALIGN)  # the header has the same length in every record
    join = b"".join
    out: list[bytes | None] = []
    append = out.append
    for value in values:
        buffers: list = []
        try:
            if plain or type(value) in _PLAIN:
                payload = dumps(value, 5, buffer_callback=buffers.append)
            else:
                payload = cdumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception:
            append(None)
            continue
        if buffers:
            append(_try_encode(value, task_key, expires, serializer, secret, created))
            continue
        body = join((pack_head(hlen, created, expires, code, 0, len(payload), len(tk)), tk, pad, payload))
        h = keyed.copy()  # the keyed state is set up once: a copy is cheaper than a new MAC
        h.update(body)
        append(join((MAGIC, h.digest(), body)))
    return out


def _try_encode(value: Any, task_key: str, expires: float | None, serializer: str, secret: bytes,
                created: float) -> bytes | None:
    try:
        return encode(value, task_key, expires, serializer, secret, created)
    except Exception:
        return None


def load_many(records: list, secret: bytes, now: float) -> tuple[dict[int, Any], list[tuple[int, str]]]:
    """``({position: value}, [(position, why damaged)])`` of many records (None: missing).

    The hot path of a cached rerun (10^5 records). Signatures are checked for the whole
    batch first (one constant-time comparison when every MAC verifies; only then record
    by record to find the bad ones) and only records whose MAC verified are unpickled.
    Expired records are left out of the hits (they are not damaged).
    """
    check_secret(secret)
    keyed = hashlib.blake2b(key=secret, digest_size=_MAC)
    copy = keyed.copy
    ours, theirs, where = [], [], []
    damaged: list[tuple[int, str]] = []
    low = _FIXED + _HEAD.size
    records = list(records)
    for pos, record in enumerate(records):
        if record is None:
            continue
        if type(record) is not bytes and len(record) <= SMALL:  # slicing bytes is cheaper than a view
            record = records[pos] = bytes(record)
        if len(record) < low or record[:4] != MAGIC:
            damaged.append((pos, "not a daskflow cache record"))
            continue
        h = copy()  # the keyed state is set up once: a copy is cheaper than a new MAC
        h.update(record[_FIXED - 4:])
        ours.append(h.digest())
        theirs.append(record[4:_FIXED - 4])
        where.append(pos)
    if not hmac.compare_digest(b"".join(ours), b"".join(theirs)):
        kept = []
        for pos, a, b in zip(where, ours, theirs):
            if hmac.compare_digest(a, b):
                kept.append(pos)
            else:
                damaged.append((pos, "bad signature (written with another secret, or altered)"))
        where = kept
    hits: dict[int, Any] = {}
    unpack, loads = _FULL.unpack_from, pickle.loads
    for pos in where:
        record = records[pos]
        hlen, _created, expires, ser_code, nbufs, plen, _klen = unpack(record, _FIXED - 4)
        if expires and expires <= now:
            continue
        try:
            if nbufs or ser_code >= 2:
                hits[pos] = decode(record, b"", verified=True)[1]
            else:
                start = _FIXED + hlen
                start += -start % _ALIGN
                hits[pos] = loads(record[start:start + plen])
        except DamagedRecord as exc:
            damaged.append((pos, str(exc)))
        except Exception as exc:
            damaged.append((pos, f"payload cannot be loaded: {type(exc).__name__}: {exc}"))
    return hits, damaged


SEGMENT_MEMBER_BYTES = SMALL  # the largest record whose value a segment repeats
_LENGTHS = struct.Struct("<I")


def segment(records: list[bytes], secret: bytes) -> bytes | None:
    """One record holding the values of ``records`` (this process's own, just encoded), in order;
    None when one of them cannot be a member (out-of-band buffers, JSON, over
    ``SEGMENT_MEMBER_BYTES``). Its value loads as the list of the members' values, with one
    MAC check for all of them: see ``cache.segments``."""
    payloads, expires, created = [], [], []
    for record in records:
        if len(record) > SEGMENT_MEMBER_BYTES:
            return None
        hlen, made, expiry, ser_code, nbufs, plen, _klen = _FULL.unpack_from(record, _FIXED - 4)
        if nbufs or ser_code >= 2:
            return None
        start = _FIXED + hlen
        start += -start % _ALIGN
        payloads.append(record[start:start + plen])
        expires.append(expiry)
        created.append(made)
    tk = bytes(records[0][_FIXED + _HEAD.size:_FIXED + _HEAD.size + _klen])
    lengths = struct.pack(f"<I{len(payloads)}I", len(payloads), *map(len, payloads))
    payload = lengths + b"".join(payloads)
    expiring = [e for e in expires if e]
    expiry = min(expiring) if expiring else 0.0  # with its first member to expire
    header = _HEAD.pack(min(created), expiry, _SEGMENT, 0, len(payload), len(tk)) + tk
    start = _FIXED + len(header)
    body = b"".join((_LENGTHS.pack(len(header)), header, bytes(_pad(start)), payload))
    return MAGIC + mac(secret, body) + body


def _load_segment(payload: bytes) -> list:
    (n,) = _LENGTHS.unpack_from(payload)
    lengths = struct.unpack_from(f"<{n}I", payload, 4)
    loads, out, at = pickle.loads, [], 4 + 4 * n
    for length in lengths:
        out.append(loads(payload[at:at + length]))
        at += length
    return out


def _header(record: Any) -> tuple[dict, int]:
    if len(record) < _FIXED + _HEAD.size or record[:4] != MAGIC:
        raise DamagedRecord("not a daskflow cache record")
    try:
        (hlen,) = struct.unpack_from("<I", record, len(MAGIC) + _MAC)
        created, expires, ser_code, nbufs, plen, klen = _HEAD.unpack_from(record, _FIXED)
        pos = _FIXED + _HEAD.size
        task_key = bytes(record[pos:pos + klen]).decode()
        pos += klen
        bufs = [_BUF.unpack_from(record, pos + i * _BUF.size) for i in range(nbufs)]
        header = {"c": created, "e": expires or None, "t": task_key, "s": _SERIALIZERS[ser_code],
                  "p": plen, "b": bufs}
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise DamagedRecord(f"unreadable header: {exc}") from None
    start = _FIXED + hlen
    return header, start + _pad(start)


SUMMARY = struct.Struct("<4s32xIddBHQH")  # magic, then the header's fixed fields: a listing's one read
SERIALIZERS = _SERIALIZERS


def summary(record: bytes | bytearray | memoryview) -> tuple[float, float | None, str]:
    """``(created, expires or None, serializer)`` of a record, not verified: for listings of
    10^5 entries (one struct read, no dict). Raises ``DamagedRecord``."""
    try:
        magic, _hlen, created, expires, ser_code, _n, _p, _k = SUMMARY.unpack_from(record)
        if magic != MAGIC:
            raise DamagedRecord("not a daskflow cache record")
        return created, expires or None, _SERIALIZERS[ser_code]
    except (struct.error, IndexError) as exc:
        raise DamagedRecord(f"unreadable header: {exc}") from None


def read_header(record: bytes | bytearray | memoryview) -> dict:
    """The header of a record (not verified: for listings, never for loading)."""
    return _header(record)[0]


def decode(record: bytearray | memoryview, secret: bytes, verified: bool = False) -> tuple[dict, Any]:
    """``({"c": created, "e": expires}, value)`` of a verified record; raises ``DamagedRecord``.

    Arrays in the value are writable views of ``record`` (copied first into a bytearray
    if it is not one). Batches of records go through ``load_many``.
    """
    view = memoryview(record)
    if len(view) < _FIXED + _HEAD.size or view[:4] != MAGIC:
        raise DamagedRecord("not a daskflow cache record")
    if not verified and not hmac.compare_digest(mac(secret, view[_FIXED - 4:]), view[4:_FIXED - 4]):
        raise DamagedRecord("bad signature (written with another secret, or altered)")
    hlen, created, expires, ser_code, nbufs, plen, klen = _FULL.unpack_from(record, _FIXED - 4)
    if nbufs and not isinstance(record, bytearray):  # e.g. a view of the LMDB map: copy once
        record = bytearray(record)
        view = memoryview(record)
    start = _FIXED + hlen
    start += _pad(start)
    try:
        if ser_code == 2:
            value = json.loads(bytes(view[start:start + plen]))
        elif ser_code == _SEGMENT:
            value = _load_segment(bytes(view[start:start + plen]))
        elif not nbufs:
            value = pickle.loads(view[start:start + plen])
        else:
            at = _FIXED + _HEAD.size + klen
            spans = [_BUF.unpack_from(record, at + i * _BUF.size) for i in range(nbufs)]
            value = pickle.loads(view[start:start + plen], buffers=[view[start + o:start + o + n] for o, n in spans])
    except Exception as exc:
        raise DamagedRecord(f"payload cannot be loaded: {type(exc).__name__}: {exc}") from None
    return {"c": created, "e": expires or None}, value
