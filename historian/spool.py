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

File format (little-endian): ``SCHSPL01`` magic, uint32 header length, JSON header
(``batch``, ``n``, ``keys``), then the columns ``sid`` int32, ``t`` float64, ``v`` float64,
``q`` uint32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import struct

import numpy as np

from .base import HistorianError, Points

log = logging.getLogger("historian.spool")

MAGIC = b"SCHSPL01"


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
        self._seq += 1
        batch = f"{self._boot}{self._seq:x}"
        header = json.dumps({"batch": batch, "n": len(pts), "keys": pts.keys}).encode()
        body = b"".join((
            MAGIC, struct.pack("<I", len(header)), header,
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
        """Load a spooled block; a damaged file raises :class:`HistorianError` naming it."""
        path = os.path.join(self.dir, name)
        with open(path, "rb") as f:
            data = f.read()
        try:
            if data[:8] != MAGIC:
                raise ValueError("bad magic")
            (hl,) = struct.unpack_from("<I", data, 8)
            header = json.loads(data[12 : 12 + hl])
            n = int(header["n"])
            off = 12 + hl
            sid = np.frombuffer(data, "<i4", n, off)
            off += 4 * n
            t = np.frombuffer(data, "<f8", n, off)
            off += 8 * n
            v = np.frombuffer(data, "<f8", n, off)
            off += 8 * n
            q = np.frombuffer(data, "<u4", n, off)
        except (ValueError, KeyError, struct.error) as e:
            raise HistorianError(f"spool file {path} is damaged ({e}); it is moved to damaged/") from e
        return Points(list(header["keys"]), sid.astype(np.int32), t.copy(), v.copy(),
                      q.astype(np.uint32)), str(header["batch"])

    def remove(self, name: str) -> None:
        size = self._size(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, name))
        self.bytes = max(0, self.bytes - size)

    def set_aside(self, name: str, why: str) -> str:
        """Move a block the backend refused (or a damaged one) to ``<why>/`` for inspection."""
        d = os.path.join(self.dir, why)
        os.makedirs(d, exist_ok=True)
        size = self._size(name)
        os.replace(os.path.join(self.dir, name), os.path.join(d, name))
        self.bytes = max(0, self.bytes - size)
        return os.path.join(d, name)
