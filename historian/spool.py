"""Store-and-forward: every recorded block is on disk before any backend sees it.

The spool is a write-ahead queue of blocks, one file per block, in ``<state>/historian/spool``.
The recorder appends (temporary name, fsync, rename: a block is either wholly there or not at
all, even after ``kill -9`` or a power cut); the forwarder hands blocks to the backend in
sequence order and deletes each one only once the backend has stored it. So:

* backend slow or down -> blocks pile up here and are replayed *in order* when it returns;
* server restart or crash -> the next start finds the files and replays them;
* a block stored but not yet deleted when the crash came is replayed again; backends make
  that harmless (same series and time overwrite; the embedded store also skips a known batch
  id), so replays are idempotent.

The spool is bounded (``max_bytes``). Past 80 % the service raises its ``spool_alarm`` health
tag; when full, new blocks are refused and counted as ``dropped`` (older data is kept: the
order of what is stored never has holes in the middle).

Series keys are not stored in the blocks but in the spool's **key table** ``keys.txt``: an
append-only file, one UTF-8 key per line (``\\`` and newline escaped as ``\\\\`` and ``\\n``),
whose line number is the key id. :meth:`Spool.append` maps the keys of a block to ids (dict
lookups) and writes the keys it has never seen to the table, durably (flush, fsync), *before*
the block that refers to them is written and renamed into place; :meth:`Spool.read` returns
the key string objects of the in-memory table. So a snapshot block (every recorded tag, ~480,000
keys in a city) creates no new Python strings when it is replayed: parsing them from each
block made ~45 MB of short-lived small objects per snapshot, and the pymalloc arenas they
fragmented were never given back (RSS stepped up at every snapshot). At start-up the table is
loaded; a torn last line (crash in the middle of adding keys) is dropped, which is safe
because no block referring to it was renamed into place. A block referring to an id the table
does not have is damaged. When the spool holds no block at start-up the table is started
afresh, so it never outgrows the series recorded since the last time the spool was empty.
One :class:`Spool` (the server's) owns a directory.

File format (little-endian): ``SCHSPL02`` magic, uint32 header length, JSON header
(``batch``, ``n`` points, ``k`` keys), then the columns ``kid`` int32 (k key ids into the key
table, the block's ``keys``), ``sid`` int32 (n, indexes into ``kid``), ``t`` float64, ``v``
float64, ``q`` uint32. Blocks of the previous format ``SCHSPL01`` (the keys as a JSON list
``keys`` in the header, no ``kid`` column) are still read, so blocks spooled before an upgrade
are replayed; a block set aside (``rejected/``, ``damaged/`` when still readable) is rewritten
in that self-contained format so it can be inspected without the key table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import struct
import threading

import numpy as np

from .base import HistorianError, Points

log = logging.getLogger("historian.spool")

MAGIC = b"SCHSPL02"
MAGIC_V1 = b"SCHSPL01"
KEYS_FILE = "keys.txt"

_UNESCAPE = re.compile(r"\\(.)", re.S)


def _escape(key: str) -> str:
    if "\\" in key or "\n" in key:
        return key.replace("\\", "\\\\").replace("\n", "\\n")
    return key


def _unescape(line: str) -> str:
    if "\\" not in line:
        return line
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), line)


class SpoolFull(HistorianError):
    """The spool reached its size limit; the block was not stored."""


class Spool:
    def __init__(self, directory: str, max_bytes: int = 2 * 1024**3, fsync: bool = True):
        self.dir = directory
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        os.makedirs(directory, exist_ok=True)
        for n in os.listdir(directory):
            if n.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, n))
        names = self.pending()
        self._seq = int(names[-1].split(".")[0]) if names else 0
        self._boot = secrets.token_hex(4)
        self.bytes = sum(self._size(n) for n in names)
        self.dropped = 0
        # key table: id -> key (object array: indexing it with a block's int32 ids hands out the
        # stored string objects without creating a Python int per key), key -> id
        self._lock = threading.Lock()
        self._kpath = os.path.join(directory, KEYS_FILE)
        self._karr = np.empty(0, object)
        self._nkeys = 0
        self._kid: dict[str, int] = {}
        self._kbytes = 0
        self._load_keys(fresh=not names)

    # ------------------------------------------------------------------ key table
    def _load_keys(self, fresh: bool) -> None:
        existed = os.path.exists(self._kpath)
        if fresh or not existed:
            with open(self._kpath, "wb") as f:  # no block refers to any key: start afresh
                if self.fsync:
                    os.fsync(f.fileno())
            if self.fsync and not existed:
                self._fsync_dir()
            return
        with open(self._kpath, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1  # a torn last line (no newline) was never referred to
        keys: list[str] = []
        pos = 0
        while pos < end:
            nl = data.index(b"\n", pos)
            try:
                keys.append(_unescape(data[pos:nl].decode("utf-8", "surrogatepass")))
            except UnicodeDecodeError:
                log.warning("historian spool key table %s is damaged at byte %d; the keys from "
                            "there on are dropped (blocks that use them are set aside)",
                            self._kpath, pos)
                break
            pos = nl + 1
        if pos < len(data):
            if pos == end:
                log.warning("historian spool key table %s: torn last line ignored", self._kpath)
            with open(self._kpath, "r+b") as f:  # appends must start on a line boundary
                f.truncate(pos)
                if self.fsync:
                    os.fsync(f.fileno())
        self._kbytes = pos
        self._put_keys(keys)

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _put_keys(self, keys: list[str]) -> None:
        """Add keys (already durable in the table file) to the in-memory table."""
        base = self._nkeys
        need = base + len(keys)
        arr = self._karr
        if need > len(arr):
            arr = np.empty(max(need, 2 * len(arr), 1024), object)
            arr[:base] = self._karr[:base]
        arr[base:need] = keys
        for j, k in enumerate(keys):
            self._kid.setdefault(k, base + j)
        # readers take the count first, then the array: publish the array first
        self._karr = arr
        self._nkeys = need

    def _write_keys(self, keys: list[str]) -> None:
        """Append keys to the table file, durably; on failure the file is cut back."""
        data = "".join(_escape(k) + "\n" for k in keys).encode("utf-8", "surrogatepass")
        with open(self._kpath, "ab") as f:
            try:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    f.truncate(self._kbytes)
                raise
        self._kbytes += len(data)

    @property
    def key_count(self) -> int:
        """Number of keys in the key table."""
        return self._nkeys

    # ------------------------------------------------------------------ blocks
    def _size(self, name: str) -> int:
        try:
            return os.path.getsize(os.path.join(self.dir, name))
        except FileNotFoundError:
            return 0

    @property
    def fill(self) -> float:
        """Fraction of ``max_bytes`` in use (0..1)."""
        return self.bytes / self.max_bytes if self.max_bytes else 0.0

    def pending(self) -> list[str]:
        """Spooled block files, oldest first."""
        # not ".tmp-*.blk": a block being written (it is renamed into place when complete)
        return sorted(n for n in os.listdir(self.dir) if n.endswith(".blk") and not n.startswith("."))

    def append(self, points: Points) -> str:
        """Store a block durably; returns its file name. Raises :class:`SpoolFull`."""
        pts = points.compact_keys()
        with self._lock:
            kid = self._kid
            ids = [kid.get(k) for k in pts.keys]
            new: list[str] = []
            if None in ids:
                seen: dict[str, int] = {}
                for j, k in enumerate(pts.keys):
                    if ids[j] is None:
                        i = seen.get(k)
                        if i is None:
                            i = seen[k] = self._nkeys + len(new)
                            new.append(k)
                        ids[j] = i
            self._seq += 1
            batch = f"{self._boot}{self._seq:x}"
            header = json.dumps({"batch": batch, "n": len(pts), "k": len(ids)}).encode()
            body = b"".join((
                MAGIC, struct.pack("<I", len(header)), header,
                np.array(ids, "<i4").tobytes(),
                np.ascontiguousarray(pts.sid, "<i4").tobytes(),
                np.ascontiguousarray(pts.t, "<f8").tobytes(),
                np.ascontiguousarray(pts.v, "<f8").tobytes(),
                np.ascontiguousarray(pts.q, "<u4").tobytes(),
            ))
            if self.bytes + len(body) > self.max_bytes:
                self.dropped += len(pts)
                self._seq -= 1
                raise SpoolFull(
                    f"historian spool {self.dir} is full ({self.bytes} of {self.max_bytes} bytes): "
                    f"{len(pts)} points dropped; the backend has been unavailable too long - "
                    "restore it or raise historian.options.spool_max_bytes"
                )
            if new:  # the keys are durable before any block refers to them
                try:
                    self._write_keys(new)
                except BaseException:
                    self._seq -= 1
                    raise
                self._put_keys(new)
            name = f"{self._seq:012d}.blk"
            tmp = os.path.join(self.dir, f".tmp-{name}")
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.dir, name))
            self.bytes += len(body)
            return name

    def read(self, name: str) -> tuple[Points, str]:
        """Load a spooled block; a damaged file raises :class:`HistorianError` naming it.

        The keys of the block are the string objects of the key table (none is created).
        """
        path = os.path.join(self.dir, name)
        with open(path, "rb") as f:
            data = f.read()
        try:
            magic = data[:8]
            if magic not in (MAGIC, MAGIC_V1):
                raise ValueError("bad magic")
            (hl,) = struct.unpack_from("<I", data, 8)
            header = json.loads(data[12 : 12 + hl])
            n = int(header["n"])
            off = 12 + hl
            if magic == MAGIC:
                k = int(header["k"])
                kid = np.frombuffer(data, "<i4", k, off)
                off += 4 * k
                nk = self._nkeys  # count first, then the array (see _put_keys)
                arr = self._karr
                if k and (int(kid.min()) < 0 or int(kid.max()) >= nk):
                    raise ValueError(f"key id {int(kid.max())} not in the key table "
                                     f"{self._kpath} ({nk} keys)")
                keys = arr[kid].tolist()
            else:
                keys = list(header["keys"])
                if not all(isinstance(x, str) for x in keys):
                    raise ValueError("keys are not strings")
            sid = np.frombuffer(data, "<i4", n, off)
            off += 4 * n
            t = np.frombuffer(data, "<f8", n, off)
            off += 8 * n
            v = np.frombuffer(data, "<f8", n, off)
            off += 8 * n
            q = np.frombuffer(data, "<u4", n, off)
            if n and (int(sid.min()) < 0 or int(sid.max()) >= len(keys)):
                raise ValueError(f"series index out of range ({len(keys)} keys)")
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise HistorianError(f"spool file {path} is damaged ({e}); it is moved to damaged/") from e
        return Points(keys, sid.astype(np.int32), t.copy(), v.copy(),
                      q.astype(np.uint32)), str(header["batch"])

    def remove(self, name: str) -> None:
        size = self._size(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, name))
        self.bytes = max(0, self.bytes - size)

    def set_aside(self, name: str, why: str) -> str:
        """Move a block the backend refused (or a damaged one) to ``<why>/`` for inspection.

        A readable block is rewritten there in the self-contained ``SCHSPL01`` format (keys in
        the header): the key table is started afresh once the spool is empty.
        """
        d = os.path.join(self.dir, why)
        os.makedirs(d, exist_ok=True)
        size = self._size(name)
        src, dst = os.path.join(self.dir, name), os.path.join(d, name)
        try:
            pts, batch = self.read(name)
        except HistorianError:
            os.replace(src, dst)
        else:
            header = json.dumps({"batch": batch, "n": len(pts), "keys": pts.keys}).encode()
            tmp = os.path.join(d, f".tmp-{name}")
            try:
                with open(tmp, "wb") as f:
                    f.write(b"".join((
                        MAGIC_V1, struct.pack("<I", len(header)), header,
                        np.ascontiguousarray(pts.sid, "<i4").tobytes(),
                        np.ascontiguousarray(pts.t, "<f8").tobytes(),
                        np.ascontiguousarray(pts.v, "<f8").tobytes(),
                        np.ascontiguousarray(pts.q, "<u4").tobytes(),
                    )))
                os.replace(tmp, dst)
            except OSError:  # e.g. disk full: keep the block as it is
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                os.replace(src, dst)
            else:
                os.unlink(src)
        self.bytes = max(0, self.bytes - size)
        return dst
