"""Where a result storage's records are: the index of packs a process builds, and reads by pack.

``ObjectStorage`` (``cache/storage.py``) is a ``PackIndex``. A process knows nothing of a storage
at first; when a lookup asks for keys it has not seen, it lists their task segment once (one
LIST: the packs and the records of their own in it), reads the headers of the packs it did not
know (the first ``packs.HEAD_READ`` bytes of each, which hold all of a pack of small records),
and keeps ``refs``: key -> ``PackRef`` (pack, offset, length). Records are then read by pack,
one ranged read per pack when the wanted records lie together, as a chunk's do. A damaged pack
(truncated, unreadable header) is forgotten with one warning naming it; a pack that went (an
eviction) is forgotten and its keys listed again, once.

The index lives as long as the process (up to ``MAX_REFS`` records: then it starts again).
``adopt`` takes places a local LMDB index remembered (``cache/store.py``, ``TieredStore``).
"""

from __future__ import annotations

import bisect
import os
import re
import warnings
from typing import Any

from daskflow.cache import packs

HEX_NAME = re.compile(r"[0-9a-f]{32}")  # the name of a record of its own: its key's digest
MAX_REFS = 1 << 19  # records whose place a process remembers (~100 MB), see PackIndex._indexed


class PackIndex:
    """The pack index and pack reads of an ``ObjectStorage`` (which provides ``fs``, ``root``, ``protocol``,
    ``local``, ``spec`` and ``_failed``)."""

    fs: Any
    root: str
    local: bool
    protocol: str
    spec: Any

    def init_index(self) -> None:
        """Start knowing nothing (a new handle, or a process that forgets)."""
        self.refs: dict[bytes, packs.PackRef] = {}  # where records are, as far as this process knows
        self.singles: set[bytes] = set()  # keys of records with an object of their own
        self.sizes: dict[bytes, int] = {}  # their sizes, as listed or written (none read past a reader's limit)
        self.headers: dict[str, packs.PackHeader] = {}  # packs indexed here
        self.damaged: set[str] = set()  # packs found damaged (warned about once)

    def _failed(self, what: str, exc: BaseException) -> None:
        raise NotImplementedError

    def where(self, key: bytes) -> str | None:
        """The pack this process found ``key`` in (for warnings), or None."""
        ref = self.refs.get(key)
        return ref.pack if ref is not None else None

    def _pack_prefix(self, path: str) -> bytes | None:
        """The key prefix (task segment) of the pack at ``path``, or None if it is not a pack."""
        found = packs.PACK_NAME.fullmatch(path[len(self.root.rstrip("/")) + 1:])
        return found.group(1).encode() if found else None

    def _scan_segments(self, prefixes: set[bytes], heads: dict[str, bytes]) -> bool:
        """List each task segment once and learn the packs and single records in it; False if
        the storage cannot be read (and ``on-storage-error`` is warn)."""
        try:
            for prefix in prefixes:
                seg = prefix.decode()
                singles, found = self._list_segment(seg)
                self.singles.update(prefix + d for d in singles)
                self.sizes.update((prefix + d, n) for d, n in singles.items())
                self._learn([p for p in found if p not in self.headers and p not in self.damaged], heads)
        except Exception as exc:  # noqa: BLE001 - unreachable storage: a clear error or a warning
            self._failed("read from", exc)
            return False
        return True

    def _list_segment(self, seg: str) -> tuple[dict[bytes, int], list[str]]:
        """The digests of the single records of a segment with their sizes, and the paths of its packs."""
        folder = f"{self.root}/{seg}".rstrip("/")
        if self.local:
            names = _scandir(folder)
            found = [f"{folder}/{packs.DIR}/{n}" for n in _scandir(f"{folder}/{packs.DIR}", sizes=False)
                     if packs.PACK_NAME.fullmatch(f"{seg}{packs.DIR}/{n}")]
        else:
            names, found = {}, []
            for path, info in self._find(folder).items():
                rest = path[len(folder) + 1:]
                if rest.startswith(packs.DIR + "/"):
                    if packs.PACK_NAME.fullmatch(f"{seg}{rest}"):
                        found.append(path)
                else:
                    names[rest] = int(info.get("size") or 0)
        singles = {bytes.fromhex(n): size for n, size in names.items() if len(n) == 32 and HEX_NAME.fullmatch(n)}
        return singles, found

    def _find(self, folder: str) -> dict[str, dict]:
        """Every object under ``folder`` with fsspec's info (its size), freshly listed. On S3 one LIST request: a plain
        ``find`` of a folder that holds nothing asks twice more whether it is an object."""
        self.fs.invalidate_cache(folder)
        try:
            if self.protocol in ("s3", "s3a") and "/" in folder:
                parent, name = folder.rsplit("/", 1)
                return self.fs.find(parent, prefix=name + "/", detail=True)
            return self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}

    def _learn(self, paths: list[str], heads: dict[str, bytes]) -> None:
        """Read the headers of the packs at ``paths`` and index their records; a pack read
        whole on the way is kept in ``heads``. A damaged one: one warning naming it."""
        if not paths:
            return
        firsts = self._read_ranges([(p, 0, packs.HEAD_READ) for p in paths])
        longer: list[tuple[str, int, int]] = []
        for path, head in zip(paths, firsts):
            if isinstance(head, (bytes, bytearray)):
                try:
                    if (n := packs.header_length(head)) > len(head):
                        longer.append((path, 0, n))  # a header beyond the first read (thousands of records)
                        continue
                except packs.DamagedPack:
                    pass
            self._index(path, head, heads)
        for (path, _, _), head in zip(longer, self._read_ranges(longer) if longer else []):
            self._index(path, head, heads)

    def _index(self, path: str, head: Any, heads: dict[str, bytes]) -> None:
        if isinstance(head, FileNotFoundError) or head is None:
            return  # gone since the listing (an eviction): nothing to index
        if isinstance(head, BaseException):
            raise head
        try:
            header = packs.parse_header(head)
        except packs.DamagedPack as exc:
            self._damaged(path, str(exc))
            return
        prefix = self._pack_prefix(path)
        if prefix is None:
            return
        self._indexed(path, prefix, header)
        if len(head) >= header.size:
            heads[path] = head

    def _indexed(self, path: str, prefix: bytes, header: packs.PackHeader) -> None:
        """Remember a pack's records; past ``MAX_REFS`` the index starts again (it is relearned
        from listings: a long-lived process's memory stays bounded)."""
        if len(self.refs) >= MAX_REFS:
            self.refs.clear()
            self.headers.clear()
        self.headers[path] = header
        self.refs.update(packs.refs(path, prefix, header))

    def forget(self, path: str) -> None:
        """Drop a pack from this process's index (it went, or it is damaged)."""
        self.headers.pop(path, None)
        for key in [k for k, r in self.refs.items() if r.pack == path]:
            del self.refs[key]

    def adopt(self, refs: dict[bytes, tuple[str, int, int]]) -> None:
        """Take where records are from a local index (a pack that went since: see ``get_bounded``)."""
        for key, (path, offset, length) in refs.items():
            self.refs[key] = packs.PackRef(path, offset, length)

    def _read_packs(self, by_pack: dict[str, list[tuple[int, packs.PackRef]]], heads: dict[str, bytes],
                    out: list) -> list[str]:
        """Fill ``out`` with the records of each pack: from a pack read whole, or ranged reads
        (one per pack when the wanted records lie together, as a chunk's do). Returns the
        packs that were not there any more."""
        gone: list[str] = []
        ranges: list[tuple[str, int, int]] = []
        for path, wanted in by_pack.items():
            if path not in heads:
                ranges.extend((path, a, b) for a, b in packs.spans([r for _, r in wanted]))
        blobs: dict[str, tuple[list[int], list]] = {}
        for (path, start, _end), blob in zip(ranges, self._read_ranges(ranges) if ranges else ()):
            starts, got = blobs.setdefault(path, ([], []))
            starts.append(start)
            got.append(blob)
        for path, wanted in by_pack.items():
            whole = heads.get(path)
            if whole is not None:
                for pos, ref in wanted:
                    out[pos] = whole[ref.offset:ref.end]
                continue
            starts, got = blobs[path]
            failed = next((b for b in got if isinstance(b, BaseException)), None)
            if isinstance(failed, FileNotFoundError):
                self.forget(path)  # evicted since it was indexed: a miss
                gone.append(path)
                continue
            if failed is not None:
                self._failed("read from", failed)
                return gone
            one = len(starts) == 1
            for pos, ref in wanted:
                i = 0 if one else bisect.bisect_right(starts, ref.offset) - 1
                record = got[i][ref.offset - starts[i]:ref.end - starts[i]]
                if len(record) < ref.length:  # a pack is read whole or not at all
                    self._damaged(path, f"truncated ({len(got[-1]) + starts[-1]} bytes where its header says "
                                        f"{self.headers[path].size})")
                    for p, _ in wanted:
                        out[p] = None
                    break
                out[pos] = record
        return gone

    def _read_ranges(self, ranges: list[tuple[str, int, int]]) -> list:
        """Bytes ``[start, end)`` of each path (fewer at a file's end; an exception where it failed)."""
        if self.local:
            out: list = []
            for path, start, end in ranges:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    out.append(FileNotFoundError(path) if isinstance(exc, (FileNotFoundError, NotADirectoryError))
                               else exc)
                    continue
                try:
                    out.append(os.pread(fd, end - start, start))
                finally:
                    os.close(fd)
            return out
        return self.fs.cat_ranges([r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges],
                                  on_error="return")

    def _damaged(self, path: str, why: str) -> None:
        """A pack that cannot be read: forgotten here, one warning naming it (once per process)."""
        self.forget(path)
        if path not in self.damaged:
            self.damaged.add(path)
            warnings.warn(f"damaged pack in result storage {self.spec.url} treated as a miss: {path}: {why}; its "
                          "runs execute again", _cache_warning(), stacklevel=5)


def _scandir(folder: str, sizes: bool = True) -> dict[str, int]:
    """Names and sizes (0 without ``sizes``: no stat) of the files in a local folder (none if
    it does not exist)."""
    try:
        with os.scandir(folder) as it:
            return {e.name: e.stat().st_size if sizes else 0 for e in it if not e.name.endswith(".tmp") and e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _cache_warning() -> type[Warning]:
    from daskflow.cache.store import CacheWarning

    return CacheWarning
