"""Append-only alarm journal: every transition is on disk before anyone is told about it.

Why (ISA-18.2 / IEC 62682 monitoring and assessment: alarm history): the journal is both the alarm history an
operator queries (``scada alarms --history``), the source of the performance metrics and of the
historian's intervention delays, and the state the engine restores after a crash.

Format: JSON lines in ``<state_dir>/alarms/journal-NNNNNN.jsonl`` (rotated by size), one object
per transition; the members, their order and defaults are described, written and read by
:mod:`scada.alarms.codec` (the only place that knows the line format). The last line of an alarm
*is* its state.

Durability (fsync policy, ``alarms.fsync``):

* every batch of transitions (one tag-change batch, one operator action) is written with **one**
  ``write()`` before the transitions are announced; a killed process (``kill -9``) therefore
  loses nothing that was announced, since the data is in the kernel page cache;
* ``interval`` (default): ``fsync`` at most every ``fsync_interval`` seconds in a worker thread,
  so a power cut loses at most that window; ``always``: ``fsync`` after every batch, in the
  journal's writer thread (never on the event loop), and the engine announces the batch, and an
  operator action returns, only once that ``fsync`` is done (power-loss safe; :meth:`pending`,
  :meth:`durable`); ``never``: leave it to the OS. Without a running event loop (tools, tests)
  the ``always`` fsync runs in line.

A line cut by a crash mid-write is detected on open (the file does not end with a newline),
truncated away and logged; the reader skips such a line too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..files import replace_text
from .codec import DEFAULTS, decode  # noqa: F401  (DEFAULTS: public name, docs/alarms.md)

log = logging.getLogger("scada.alarms.journal")

_NAME = re.compile(r"journal-(\d{6})\.jsonl$")
DEAD_LETTERS = "dead-letters.jsonl"
SNAPSHOT = "snapshot.json"
_CHUNK = 1 << 20


def journal_files(directory: str) -> list[str]:
    """The journal files of ``directory`` in write order."""
    files = glob.glob(os.path.join(directory, "journal*.jsonl"))

    def key(f: str) -> tuple[int, str]:
        m = _NAME.search(f)
        return (int(m.group(1)) if m else -1, f)

    return sorted(files, key=key)


class Journal:
    """Writer of the journal directory (single writer: the alarm engine of one server)."""

    def __init__(self, directory: str, *, fsync: str = "interval", fsync_interval: float = 1.0,
                 rotate_bytes: int = 64 * 1024 * 1024,
                 snapshot: Callable[[], dict[str, Any]] | None = None):
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"alarms.fsync: expected always, interval or never, got {fsync!r}")
        self.directory = directory
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.rotate_bytes = rotate_bytes
        #: called at each rotation: the writer's current states, saved as snapshot.json so a
        #: restart replays only the files written since (bounded start-up time)
        self.snapshot = snapshot
        os.makedirs(directory, exist_ok=True)
        self._fd = -1
        self._open()
        self._retired: list[int] = []
        self._background = False
        #: ``always`` on an event loop: the writer thread (fsyncs, closes and snapshots of
        #: finished files, in submission order) and the future of the last batch's fsync
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[None] | None = None
        #: synchronous replication (scada.ha.replication): ``barrier(path, size)`` after each
        #: write returns a future done once the standby holds the file up to ``size`` (or None:
        #: no standby to wait for); announcements and operator actions wait for it like for
        #: the ``always`` fsync
        self.barrier: Callable[[str, int], concurrent.futures.Future[None] | None] | None = None
        self._replicated: concurrent.futures.Future[None] | None = None
        #: a standby's journal: its files are written by the replication (the active's), so
        #: this writer neither writes nor rotates until promoted (:meth:`reopen`)
        self.readonly = False
        self.stats = {"writes": 0, "lines": 0, "bytes": 0, "fsyncs": 0, "rotations": 0}

    def _open(self) -> None:
        """Open the last journal file for appending (repairing a torn last line) and read the
        last sequence number from the files and the snapshot."""
        files = journal_files(self.directory)
        self._num = 1
        if files:
            m = _NAME.search(files[-1])
            self._num = int(m.group(1)) if m else 1
        self.path = self._file(self._num)
        self.repaired = self._repair(self.path)
        snap = load_snapshot(self.directory)
        # the snapshot's seq counts when the files before it were archived
        self.last_seq = max(self._last_seq(files), int(snap.get("seq", 0)) if snap else 0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    def reopen(self) -> None:
        """Re-read the directory after another writer filled it (a standby's replication of the
        active's journal, :mod:`scada.ha.replication`): the last file, its size and the last
        sequence number are taken again, so this journal continues where the other one
        stopped. Called at promotion, when nothing else writes here any more."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._open()

    def _file(self, n: int) -> str:
        return os.path.join(self.directory, f"journal-{n:06d}.jsonl")

    @staticmethod
    def _repair(path: str) -> int:
        """Cut a trailing partial line left by a crash mid-write; return bytes removed."""
        if not os.path.exists(path):
            return 0
        size = os.path.getsize(path)
        if size == 0:
            return 0
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return 0
            # find the last newline
            pos = size
            chunk = 65536
            keep = 0
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                data = f.read(pos - start)
                k = data.rfind(b"\n")
                if k >= 0:
                    keep = start + k + 1
                    break
                pos = start
            f.truncate(keep)
        log.warning("alarm journal %s: removed a partial last line of %d bytes left by a crash",
                    path, size - keep)
        return size - keep

    @staticmethod
    def _last_seq(files: list[str]) -> int:
        for f in reversed(files):
            last = _last_line(f)
            if last is not None:
                try:
                    return int(json.loads(last)["seq"])
                except (ValueError, KeyError, TypeError):
                    log.warning("alarm journal %s: unreadable last line; scanning the file", f)
                    seqs = [e["seq"] for e in _read_file(f)]
                    if seqs:
                        return max(seqs)
        return 0

    def write(self, lines: Iterable[bytes]) -> int:
        """Append ``lines`` (UTF-8 bytes, each ending with a newline) in one ``write()``;
        return the number of bytes written."""
        data = b"".join(lines)
        if not data:
            return 0
        if self.readonly:
            raise OSError(f"alarm journal {self.path} belongs to the active server (this one "
                          f"is the standby): not written")
        if self._fd < 0:
            raise OSError(f"alarm journal {self.path} is closed")
        view = memoryview(data)
        while view:  # in <= 1 MiB pieces: one multi-MB write() is ~7x slower on ext4 here
            n = os.write(self._fd, view[:_CHUNK])
            view = view[n:]
        self._size += len(data)
        self.stats["writes"] += 1
        self.stats["bytes"] += len(data)
        self.stats["lines"] += data.count(b"\n")
        if self.fsync == "always":
            if _on_loop():
                self._pending = self._submit(self._fsync, self._fd)
            else:
                self._fsync(self._fd)
        else:
            self._dirty = True
        if self.barrier is not None:
            r = self.barrier(self.path, self._size)
            if r is not None:
                self._replicated = r
        if self._size >= self.rotate_bytes and not self._background:
            self._rotate()  # no background task (tools, tests): rotate in line
        return len(data)

    def _rotate(self) -> None:
        """Start the next file. Nothing slow in line: the finished file (up to ``rotate_mb`` of
        dirty pages) is fsynced and closed by the flusher thread (``interval``), was already
        fsynced batch by batch (``always``), or is just closed (``never``)."""
        if self.fsync == "interval" and self._dirty:
            self._retired.append(self._fd)
        elif self._writer is not None:
            self._pending = self._submit(os.close, self._fd)  # after the file's queued fsyncs
        else:
            os.close(self._fd)
        self._num += 1
        self.path = self._file(self._num)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = 0
        self._dirty = False
        self.stats["rotations"] += 1
        if self.snapshot is not None:
            self.write_snapshot(self.snapshot())

    def write_snapshot(self, data: dict[str, Any]) -> None:
        """Atomically replace ``snapshot.json`` (states as of ``data['seq']``, valid for the
        journal files numbered ``>= file``)."""
        data = {**data, "file": self._num}
        path = os.path.join(self.directory, SNAPSHOT)
        text = json.dumps(data, default=str, ensure_ascii=False, separators=(",", ":"))
        if self.fsync == "always" and _on_loop():
            self._pending = self._submit(replace_text, path, text, True)
        else:
            replace_text(path, text, fsync=self.fsync == "always")
        # interval/never: a power cut right after a rotation may lose the snapshot; the start-up
        # then replays the journal files (they are never deleted by the server)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="alarm-journal")
        return self._writer.submit(fn, *args)

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.stats["fsyncs"] += 1

    def pending(self) -> concurrent.futures.Future[Any] | None:
        """What the engine waits for before announcing the last batch, while it runs: the
        writer thread's fsync (``always`` on an event loop) and/or the standby's copy
        (synchronous replication, :attr:`barrier`); else None."""
        p = self._fsync_pending()
        r = self._replicated
        if r is None or r.done():
            return p
        if p is None:
            return r
        both: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(_f: concurrent.futures.Future[Any]) -> None:
            if p.done() and r.done() and not both.done():
                e = p.exception() if not p.cancelled() else None
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    if e is not None:
                        both.set_exception(e)
                    else:
                        both.set_result(None)

        p.add_done_callback(done)
        r.add_done_callback(done)
        return both

    def _fsync_pending(self) -> concurrent.futures.Future[Any] | None:
        p = self._pending
        return None if p is None or p.done() else p

    async def durable(self) -> None:
        """Wait until every batch written so far is on disk (``always``); at once otherwise.
        Raises the ``OSError`` of a failed fsync."""
        p = self._pending
        if p is not None:
            await asyncio.wrap_future(p)
        r = self._replicated
        if r is not None:
            await asyncio.wrap_future(r)

    async def run_fsync(self) -> None:
        """Background task: rotation (with its snapshot) between batches, never inside one, and
        for the ``interval`` policy the fsyncs, in a worker thread. Runs every
        ``fsync_interval`` of real time: durability is physical, not simulated."""
        self._background = True
        try:
            while True:
                await asyncio.sleep(self.fsync_interval)
                if self._size >= self.rotate_bytes and self._fd >= 0 and not self.readonly:
                    self._rotate()
                if self.fsync == "interval":
                    await self.flush()
        finally:
            self._background = False

    async def flush(self) -> None:
        retired, self._retired = self._retired, []
        for fd in retired:
            await asyncio.to_thread(_fsync_close, fd)
            self.stats["fsyncs"] += 1
        if self._dirty and self._fd >= 0:
            self._dirty = False
            fd = self._fd  # a rotation meanwhile retires it without closing: still valid
            await asyncio.to_thread(os.fsync, fd)
            self.stats["fsyncs"] += 1

    def close(self) -> None:
        fd, self._fd = self._fd, -1  # a write racing the close fails cleanly (closed journal)
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # the queued fsyncs and closes first
            self._writer = None
        retired, self._retired = self._retired, []
        for r in retired:
            _fsync_close(r)
        if fd >= 0:
            if self._dirty and self.fsync != "never":
                os.fsync(fd)
            os.close(fd)


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_line(path: str) -> str | None:
    size = os.path.getsize(path)
    if size == 0:
        return None
    with open(path, "rb") as f:
        pos = size
        buf = b""
        while pos > 0:
            start = max(0, pos - 8192)
            f.seek(start)
            buf = f.read(pos - start) + buf
            stripped = buf.rstrip(b"\n")
            k = stripped.rfind(b"\n")
            if k >= 0:
                return stripped[k + 1:].decode("utf-8", "replace")
            pos = start
        s = buf.strip()
        return s.decode("utf-8", "replace") if s else None


def _read_file(path: str) -> Iterator[dict[str, Any]]:
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = decode(line)
            except json.JSONDecodeError:
                bad += 1
                if bad <= 3:
                    log.warning("alarm journal %s:%d: skipped an unreadable line (partial write?)",
                                path, lineno)
                continue
            if e is not None:
                yield e


def read_journal(path_or_dir: str | os.PathLike[str], since: float | None = None,
                 until: float | None = None) -> list[dict[str, Any]]:
    """Every journal entry (dicts, in ``seq`` order) from a journal file or directory, optionally
    limited to ``since <= ts < until`` (POSIX seconds).

    Public API used by the historian (intervention delays: ``raise`` -> ``ack`` per alarm_id)
    and by ``scada alarms --history``. Unreadable lines are skipped and logged.
    """
    p = os.fspath(path_or_dir)
    files = journal_files(p) if os.path.isdir(p) else ([p] if os.path.exists(p) else [])
    out: list[dict[str, Any]] = []
    for f in files:
        for e in _read_file(f):
            ts = e.get("ts")
            if not isinstance(ts, (int, float)):
                continue
            if since is not None and ts < since:
                continue
            if until is not None and ts >= until:
                continue
            out.append(e)
    out.sort(key=lambda e: e.get("seq", 0))
    return out


def _file_number(f: str) -> int:
    m = _NAME.search(f)
    return int(m.group(1)) if m else -1


def iter_journal(directory: str, first_file: int = 0) -> Iterator[dict[str, Any]]:
    """Stream the entries of the journal files numbered ``>= first_file`` (constant memory)."""
    for f in journal_files(directory):
        if _file_number(f) >= first_file:
            yield from _read_file(f)


def load_snapshot(directory: str) -> dict[str, Any] | None:
    p = os.path.join(directory, SNAPSHOT)
    if not os.path.exists(p):
        return None
    try:
        with open(p, encoding="utf-8") as f:
            snap = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        log.warning("alarm snapshot %s unreadable (%s); replaying the whole journal", p, e)
        return None
    if not isinstance(snap, dict) or not isinstance(snap.get("alarms"), dict):
        log.warning("alarm snapshot %s has an unexpected shape; replaying the whole journal", p)
        return None
    return snap


def snapshot_entries(snap: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The snapshot's alarms as journal-like entries. The snapshot is columnar (one list per
    field, written straight from the engine's arrays) so taking it costs milliseconds even with
    10,000 active alarms."""
    cols = snap["alarms"]
    names = list(cols)
    for row in zip(*(cols[k] for k in names), strict=True):
        e = dict(zip(names, row, strict=True))
        e.setdefault("event", "snapshot")
        yield e


def current_states(directory: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, float]]:
    """The state of every alarm and device as of the end of the journal: the snapshot (if any)
    plus the entries written after it, streamed. Returns ``(alarms, devices, raised_ts)``
    like :func:`replay`, plus the time of each alarm's last raise."""
    alarms: dict[str, dict[str, Any]] = {}
    devices: dict[str, dict[str, Any]] = {}
    raised: dict[str, float] = {}
    snap = load_snapshot(directory)
    first, after = 0, 0
    if snap is not None:
        first, after = int(snap.get("file", 0)), int(snap.get("seq", 0))
        for e in snapshot_entries(snap):
            alarms[e["alarm_id"]] = e
            if isinstance(e.get("raised_ts"), (int, float)):
                raised[e["alarm_id"]] = e["raised_ts"]
        for d in snap.get("devices", []):
            devices[d] = {"device": d, "event": "out_of_service", "name": "", "alarm_id": d}
    _fold((e for e in iter_journal(directory, first) if e.get("seq", 0) > after),
          alarms, devices, raised)
    return alarms, devices, raised


def _fold(entries: Iterable[dict[str, Any]], alarms: dict[str, dict[str, Any]],
          devices: dict[str, dict[str, Any]], raised: dict[str, float] | None = None) -> None:
    for e in entries:
        if not e.get("name"):
            if e.get("event") in ("out_of_service", "in_service"):
                devices[e.get("device", "")] = e
            continue
        aid = e.get("alarm_id")
        if isinstance(aid, str):
            alarms[aid] = e
            if raised is not None and e.get("event") == "raise":
                raised[aid] = e["ts"]


def replay(entries: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Fold journal entries into the last state of each alarm and each device's service state.

    Returns ``(alarms, devices)``: ``alarms[alarm_id]`` is the alarm's last entry (which carries
    its full flag set); ``devices[path]`` is the last ``out_of_service``/``in_service`` entry of
    a device (device-level lines have an empty ``name``).
    """
    alarms: dict[str, dict[str, Any]] = {}
    devices: dict[str, dict[str, Any]] = {}
    _fold(entries, alarms, devices)
    return alarms, devices
