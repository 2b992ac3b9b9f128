"""Result storage: cache records in any fsspec URL, written and read by whoever computes or looks up.

``result_storage`` (a task or flow option, or ``daskflow.results.storage``) names a place
that outlives one machine: ``file:///shared/path``, ``s3://bucket/prefix``, ``gs://...``,
``abfs://...``, anything fsspec opens (its backends, s3fs and the like, are extras). A
record is the same signed blob the local LMDB store holds (``cache.serialization``),
content-addressed: the key is the hash of the task and its inputs. The worker that computed
a chunk writes its records there itself, as ONE object per task segment of the keys, a
pack (``cache/packs.py``: ``{url}/v1/{task_key}/packs/{name}``); a record of 1 MiB or more
keeps an object of its own at ``{url}/{key as text}`` (the layout before packs, still read).
A lookup reads the local store first (the index and hot tier), then the storage for what
it lacks: keys this process has not seen send it to one listing of their task segment and
the headers of the packs it did not know (``refs``: key -> pack, offset, length, kept for
the process's life), then to a few ranged reads per pack. Nothing of a value passes through
the client unless the client asks for it.

Every reader verifies each record with the storage's secret (``cache.storage_spec`` says
which, and how people who share a storage share it); a record signed with another secret,
truncated or altered is a miss with one warning, never loaded.

Writes are atomic per object: object stores put whole objects; on a filesystem a pack is
written under a temporary name and renamed. Two writers of one key write two whole packs;
a reader takes either (each a complete, signed value).
A storage that cannot be reached raises ``StorageUnreachable`` naming the URL and the cause,
at the first write or read; with ``daskflow.results.on-storage-error: warn`` the runs go on
uncached after one warning. Timeouts are bounded (``daskflow.results.storage-timeout``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import itertools
import json
import os
import threading
import time
import uuid
import warnings
from typing import Any

import msgpack

from daskflow import config
from daskflow.cache import bounds, packs
from daskflow.cache.pack_index import HEX_NAME, PackIndex
from daskflow.cache.storage_spec import StorageSpec
from daskflow.exceptions import StorageUnreachable


@dataclasses.dataclass(slots=True)
class Listing:
    """One listing of a storage: records of their own and packs (with fsspec's info), read logs."""

    singles: dict[bytes, dict]
    packs: dict[str, dict]
    logs: list[str]


@dataclasses.dataclass(slots=True)
class PendingPut:
    """A storage write under way (``ObjectStorage.start_put``): ``wait()`` for it to end."""

    storage: ObjectStorage
    future: concurrent.futures.Future | None
    written: list[tuple[str, bytes, bytes]]  # (pack path, task segment, header) of each pack
    items: list[tuple[bytes, bytes]]

    def wait(self) -> None:
        """Until the objects are stored; a failed write raises ``StorageUnreachable`` (or warns)."""
        if self.future is not None:
            try:
                self.future.result()
            except Exception as exc:  # noqa: BLE001
                self.storage._failed("write to", exc)
                return
        if self.items:
            self.storage._written(self.written, self.items)


class ObjectStorage(PackIndex):
    """Signed records in packs (and large ones alone) through fsspec (see the module docstring)."""

    def __init__(self, spec: StorageSpec) -> None:
        import fsspec

        self.spec = spec
        options = json.loads(spec.options)
        protocol = fsspec.utils.get_protocol(spec.url)
        timeout = float(config.parse_timedelta(config.get("results.storage-timeout", "30s")))
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
        self.protocol = protocol
        self.local = protocol in ("file", "local")
        self.warned = False
        self.broken = False  # unreachable, and daskflow.results.on-storage-error is warn: not used
        self.reads = bounds.ReadStamps(bounds.STORAGE_READ_BATCH)
        self.total: int | None = None  # bytes of records at the last listing (None: not listed yet)
        self.unchecked = 0  # bytes this process wrote since
        self._evicting = threading.Lock()
        self._stamping: concurrent.futures.Future | None = None  # read stamps being written, if any
        self._dirs: set[str] = set()  # directories this process made (or found) for records
        self.init_index()
        self._check()
        atexit.register(self._flush_at_exit)

    def _check(self) -> None:
        """Reach the storage once, when it is first used in this process: a missing bucket or
        refused credentials are one clear error here, not a miss per lookup. A bucket found
        once is not asked again for another prefix in it (a request costs milliseconds)."""
        try:
            if self.local:
                os.makedirs(self.root, mode=0o700, exist_ok=True)
                return
            bucket = self.root.split("/", 1)[0]
            reached = (self.fs, bucket)
            if reached in _reached:
                return
            if not self.fs.exists(bucket):
                raise FileNotFoundError(f"the bucket {bucket!r} does not exist")
            _reached.add(reached)
        except Exception as exc:  # noqa: BLE001
            self._failed("reach", exc)

    def path(self, key: bytes) -> str:
        """Where a record of its own lives (a large one, or one written before packs)."""
        # keys.display(key), inlined: this runs once per record of a batch
        return f"{self.root}/{key[:-16].decode()}{key[-16:].hex()}"

    # -- reads ---------------------------------------------------------------------------
    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The records of ``keys`` (None where the storage has none), in batched reads."""
        return self.get_bounded(keys, None)[0]

    def get_bounded(self, keys: list[bytes], max_bytes: int | None) -> tuple[list[bytes | None], int]:
        """The records of ``keys``, except that records over ``max_bytes`` are not fetched (they
        come back None) and are counted: ``(records, how many too large)``.

        Keys this process has not seen yet send it to the listing of their task segment (one
        LIST each), then to the headers of the packs it did not know; records are then read by
        pack, a few ranged reads (or one whole read) per pack."""
        return self._get_bounded(keys, max_bytes, False)

    def _get_bounded(self, keys: list[bytes], max_bytes: int | None,
                     rescanned: bool) -> tuple[list[bytes | None], int]:
        """``get_bounded``; ``rescanned``: the second try of keys whose pack went (listed again)."""
        if self.broken:
            return [None] * len(keys), 0
        refs, singles, sizes = self.refs, self.singles, self.sizes
        heads: dict[str, bytes] = {}  # packs read whole while scanning: no second read
        unknown = {k[:-16] for k in keys if k not in refs and k not in singles} if not rescanned else \
            {k[:-16] for k in keys}
        if unknown and not self._scan_segments(unknown, heads):
            return [None] * len(keys), 0
        out: list[bytes | None] = [None] * len(keys)
        by_pack: dict[str, list[tuple[int, packs.PackRef]]] = {}
        alone: list[int] = []
        large = 0
        limit = max_bytes if max_bytes is not None else float("inf")
        for pos, key in enumerate(keys):
            ref = refs.get(key)
            if ref is not None:
                if ref.length > limit:
                    large += 1
                else:
                    by_pack.setdefault(ref.pack, []).append((pos, ref))
            elif key in singles:
                if sizes.get(key, 0) > limit:  # its size is known: not a byte of it is read
                    large += 1
                else:
                    alone.append(pos)
        if by_pack:
            gone = self._read_packs(by_pack, heads, out)
            if gone and not rescanned:  # a pack went (evicted, rewritten): list again, once
                again = [pos for path in gone for pos, _ in by_pack[path]]
                found, more = self._get_bounded([keys[p] for p in again], max_bytes, True)
                large += more
                for pos, record in zip(again, found):
                    out[pos] = record
        if alone:
            found, over = self._read_singles([self.path(keys[p]) for p in alone], max_bytes)
            large += over
            for pos, record in zip(alone, found):
                out[pos] = record
        return out, large

    def _read_singles(self, paths: list[str], max_bytes: int | None) -> tuple[list[bytes | None], int]:
        """Records of their own (up to ``max_bytes + 1`` bytes of each, if given)."""
        if self.local:
            found: list = self._read_files(paths, max_bytes)
        elif max_bytes is None:
            try:
                got = self.fs.cat(paths, on_error="omit")
            except FileNotFoundError:
                got = {}
            except Exception as exc:  # noqa: BLE001 - unreachable storage: a clear error or a warning
                self._failed("read from", exc)
                return [None] * len(paths), 0
            found = [got.get(p) for p in paths]
        else:
            found = self._cat_ranges(paths, max_bytes) or [None] * len(paths)
        out: list[bytes | None] = []
        large = 0
        for blob in found:
            if isinstance(blob, BaseException) or blob is None:
                out.append(None)
            elif max_bytes is not None and len(blob) > max_bytes:
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

    # -- writes --------------------------------------------------------------------------
    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write records: a pack per task segment, large ones alone; each object atomically."""
        self.start_put(items).wait()

    def start_put(self, items: list[tuple[bytes, bytes]]) -> PendingPut:
        """``put_many`` that returns while an object store's PUTs are under way: the caller does
        other work meanwhile (the hot tier's LMDB write) and then ``wait()``s, which raises or
        warns as ``put_many`` does. A filesystem storage is written before this returns."""
        if not items or self.broken:
            return PendingPut(self, None, [], [])
        blobs: dict[str, list] = {}
        by_segment = packs.by_segment(items, blobs, self.path)
        written = []
        for prefix, records in by_segment.items():
            path = f"{self.root}/{prefix.decode()}{packs.DIR}/{packs.new_name()}"
            blobs[path] = parts = packs.encode(records)
            written.append((path, prefix, parts[0]))
        log = self._read_log()
        if log is not None:  # pending read stamps ride along
            blobs[log[0]] = [log[1]]
        try:
            return PendingPut(self, self._start(blobs), written, items)
        except Exception as exc:  # noqa: BLE001
            self._failed("write to", exc)
            return PendingPut(self, None, [], [])

    def _written(self, written: list[tuple[str, bytes, bytes]], items: list[tuple[bytes, bytes]]) -> None:
        """After a put: this process knows where its own records are; the size limit is checked."""
        for path, prefix, head in written:
            self._indexed(path, prefix, packs.parse_header(head))
        for key, record in items:
            if len(record) >= packs.SINGLE_BYTES:
                self.singles.add(key)
                self.sizes[key] = len(record)
        self._after_write(sum(len(r) for _, r in items))

    def _put(self, blobs: dict[str, list]) -> None:
        future = self._start(blobs)
        if future is not None:
            future.result()

    def _start(self, blobs: dict[str, list]) -> concurrent.futures.Future | None:
        """Write ``blobs``: a filesystem's at once (None), an async object store's PUTs started
        on fsspec's event loop, all at once (their future); another backend's at once."""
        if self.local:
            for path, parts in blobs.items():
                self._put_file(path, parts)
            return None
        data = {path: b"".join(parts) for path, parts in blobs.items()}
        if getattr(self.fs, "async_impl", False) and getattr(self.fs, "loop", None) is not None:
            return asyncio.run_coroutine_threadsafe(self.fs._pipe(data), self.fs.loop)
        self.fs.pipe(data)
        return None

    def _put_file(self, path: str, parts: list) -> None:
        """Write under a temporary name of this process, then rename: readers see a whole
        object or none (no uuid per object: a token per process and a counter)."""
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
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # -- read stamps and the size limit (see cache/bounds.py) ----------------------------
    def note_reads(self, keys: list[bytes]) -> None:
        """Remember records read (from here or from a local hot tier in front of it). Stamps
        that are due go out without waiting: an object store's PUT runs on fsspec's event loop
        while the lookup goes on (a filesystem's small file is written at once)."""
        if self.reads.note(keys) and not self.broken:
            if self._stamping is not None and not self._stamping.done():
                return  # one write at a time: these stamps ride with the next one
            log = self._read_log()
            if log is not None:
                try:
                    self._stamping = self._start({log[0]: [log[1]]})
                except Exception:  # noqa: BLE001 - stamps are a hint: lost ones make entries look older
                    pass

    def _read_log(self) -> tuple[str, bytes] | None:
        """The pending read stamps as one log object: (path, blob), or None. The blob is
        msgpack ``[time, [keys]]`` (no per-key text: ~0.05 µs a key)."""
        keys = self.reads.take()
        if not keys:
            return None
        name = f"{self.root}/{bounds.LOGS}/{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return name, msgpack.packb([time.time(), keys])

    def flush_reads(self) -> None:
        """Write the pending read stamps (one small object), after a write under way ends."""
        stamping, self._stamping = self._stamping, None
        if stamping is not None:
            try:
                stamping.result()
            except Exception:  # noqa: BLE001 - stamps are a hint: lost ones make entries look older
                pass
        log = self._read_log()
        if log is not None:
            try:
                self._put({log[0]: [log[1]]})
            except Exception:  # noqa: BLE001
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

    def _list_all(self) -> Listing:
        """One listing of the whole storage: its records, packs and read logs (foreign files,
        temporary names and kept values left out)."""
        root = self.root.rstrip("/")
        if not self.local:
            self.fs.invalidate_cache(root)
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            found = {}
        out = Listing({}, {}, [])
        for path, info in found.items():
            relative = path[len(root) + 1:] if path.startswith(root + "/") else None
            if relative is None:
                continue
            if relative.startswith(bounds.LOGS + "/"):
                out.logs.append(path)
            elif (key := bounds.record_name(relative)) is not None:
                out.singles[key] = info
            elif relative.startswith("v") and packs.PACK_NAME.fullmatch(relative):
                out.packs[path] = info
        return out

    def entries(self, listing: Listing | None = None) -> tuple[list[bounds.Entry], list[str]]:
        """Every record (foreign files ignored) with size, write and last read time, and its
        pack; and the read logs those times came from."""
        listing = self._list_all() if listing is None else listing
        self._learn([p for p in listing.packs if p not in self.headers and p not in self.damaged], {})
        records = [bounds.Entry(key, int(info.get("size") or 0), bounds.info_time(info), None)
                   for key, info in listing.singles.items()]
        for path, info in listing.packs.items():
            header, prefix = self.headers.get(path), self._pack_prefix(path)
            if header is None or prefix is None:
                continue  # damaged (warned about) or gone
            written = bounds.info_time(info)
            records.extend(bounds.Entry(prefix + d, n, written, None, pack=path)
                           for d, n in zip(header.digests, header.lengths))
        last = self._read_stamps(listing.logs)
        for entry in records:
            entry.last_read = last.get(entry.key)
        return records, listing.logs

    def _read_stamps(self, logs: list[str]) -> dict[bytes, float]:
        """``{key: last read}`` from the read logs: ``[time, [keys]]``, or a folded ``{key text: time}``."""
        last: dict[bytes, float] = {}
        if not logs:
            return last
        for blob in self.fs.cat(logs, on_error="omit").values():
            try:
                stamps = msgpack.unpackb(blob)
                if isinstance(stamps, dict):
                    pairs = [(_key(name), t) for name, t in stamps.items()]
                else:
                    when, keys = stamps
                    pairs = [(k, when) for k in keys]
            except Exception:  # noqa: BLE001 - a damaged log: its stamps are lost
                continue
            get = last.get
            for key, t in pairs:
                if isinstance(t, (int, float)) and t > get(key, 0.0):
                    last[key] = float(t)
        return last

    def _objects(self, records: list[bounds.Entry]) -> dict[str, list[bounds.Entry]]:
        """Records by the object holding them (a pack, or their own)."""
        out: dict[str, list[bounds.Entry]] = {}
        for e in records:
            out.setdefault(e.pack or self.path(e.key), []).append(e)
        return out

    def _remove(self, objects: dict[str, list[bounds.Entry]]) -> int:
        """Delete whole objects; returns how many records went with them."""
        if not objects:
            return 0
        self.fs.rm(list(objects))
        for path, records in objects.items():
            self.forget(path)
            for e in records:
                if e.pack is None:
                    self.singles.discard(e.key)
                    self.sizes.pop(e.key, None)
        return sum(len(v) for v in objects.values())

    def delete(self, keys: list[bytes]) -> int:
        """Remove the objects all of whose records are in ``keys`` (a pack goes whole, or
        stays); returns how many records went."""
        if not keys:
            return 0
        doomed = set(keys)
        objects = self._objects(self.entries()[0])
        return self._remove({p: rs for p, rs in objects.items() if all(e.key in doomed for e in rs)})

    def clear(self) -> int:
        """Delete every cache record (packs, records of their own, read logs; not foreign files
        nor kept values); returns how many records went."""
        records, logs = self.entries()
        removed = self._remove(self._objects(records))
        if logs:
            self.fs.rm(logs)
        self.total = None
        return removed

    def remove_older(self, folder: str, seconds: float) -> int:
        """Delete the packs and records under ``{url}/{folder}`` written more than ``seconds``
        ago (kept values past their window); returns how many objects went."""
        base = f"{self.root}/{folder}".rstrip("/")
        if not self.local:
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return 0
        cutoff = time.time() - seconds
        old = [path for path, info in found.items()
               if (self._pack_prefix(path) or HEX_NAME.fullmatch(path.rsplit("/", 1)[-1]))
               and (bounds.info_time(info) or cutoff) < cutoff]
        if old:
            self.fs.rm(old)
            for path in old:
                self.forget(path)
        return len(old)

    def keys_under(self, prefix: bytes) -> list[bytes]:
        """Keys of the records of one segment (``kept/{flow run}/``): one listing, headers read."""
        self._scan_segments({prefix}, {})
        return sorted({k for k in self.refs if k.startswith(prefix)}
                      | {k for k in self.singles if k.startswith(prefix)})

    def evict(self, limit: int, target: float | None = None, check: bool = False) -> int:
        """Delete the least recently used packs (and records of their own) until the storage
        holds at most ``target`` bytes (default: ``LOW_WATER`` of ``limit``) and fold the read
        logs into one; returns how many records went. A pack's last use is its most recently
        read record's. With ``check`` (after a write) nothing happens unless the storage is
        over ``limit`` (decided from the listing's sizes: no header is read for that)."""
        if not self._evicting.acquire(blocking=False):
            return 0
        try:
            listing = self._list_all()
            sizes = {p: int(i.get("size") or 0) for p, i in listing.packs.items()}
            sizes.update((self.path(k), int(i.get("size") or 0)) for k, i in listing.singles.items())
            total = sum(sizes.values())
            target = limit * bounds.LOW_WATER if target is None else target
            self.total, self.unchecked = total, 0
            if total <= (limit if check else target):
                return 0
            records, logs = self.entries(listing)
            objects = self._objects(records)
            units = [bounds.Entry(path.encode(), sizes.get(path, 0), max(e.written or 0.0 for e in rs),
                                  max(e.last_read or 0.0 for e in rs)) for path, rs in objects.items()]
            doomed = {u.key.decode(): objects[u.key.decode()] for u in bounds.victims(units, total, target)}
            gone = [e for rs in doomed.values() for e in rs]
            removed = self._remove(doomed)
            self.total = total - sum(sizes.get(p, 0) for p in doomed)
            self._fold(records, gone, logs)
            return removed
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
            self._put({name: [msgpack.packb(kept)]})
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
_reached: set[tuple[Any, str]] = set()  # (fsspec filesystem, bucket) found to exist by this process
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


def _key(name: str) -> bytes:
    """A key from its text form (``keys.display``'s inverse)."""
    return name[:-32].encode() + bytes.fromhex(name[-32:])


def _cache_warning() -> type[Warning]:
    from daskflow.cache.store import CacheWarning

    return CacheWarning
