"""Replication: the standby of a redundant pair follows the active's durable state, so a
failover loses nothing (issue 22, docs/redundancy.md "Replication").

**Log shipping of the state files**, as PostgreSQL ships its WAL: the active's durable state
already lives in files that are appended to (journals) or atomically replaced (snapshots), all
written before anyone is told. The active serves a stream of those files' new bytes; the
standby writes them at the same offsets into its own state directory, so at promotion its
stores open exactly what the active had written. Streams (one directory each):

=============  =======================================  =====================================
stream         active's files                           standby
=============  =======================================  =====================================
alarms         journal-*.jsonl (log), snapshot.json     same place; journal lines applied as
                                                        they arrive (the states stay **hot**)
schedules      overrides.json                           same place; re-read at promotion
interventions  journal.jsonl (log), snapshot.json,      same place; store reloaded at
               kpi.json, photos/*                       promotion
open311        *.jsonl (log), other files               same place; ``reload()`` at promotion
audit          audit.log (log)                          replication/audit/<peer>.log (each
                                                        server audits what it served)
spool          historian spool: keys.txt (log), *.blk   replication/spool/, replayed into the
                                                        new active's own spool at promotion
=============  =======================================  =====================================

Offsets: at connection the standby lists what it has (size and a hash of each log's last
bytes, of each other file's content); the active resumes every log at the standby's size when
its own bytes there are the same (nothing sent twice, nothing skipped), sends whole the files
that differ, and replaces a log whose bytes differ (the old active rejoining with transitions
the new one never received; its copy is moved aside to ``replication/diverged/``, never lost
silently). Then the active looks for new bytes every ``interval`` (one ``stat`` per file),
ships logs before snapshots (a snapshot never arrives ahead of the journal lines it covers),
and ends each round with a ``sync`` the standby acknowledges: the lag.

Fencing: every frame carries the active's fencing token (:mod:`scada.ha.role`); the standby
keeps the newest token it has seen (``replication/token``, survives restarts) and refuses
frames with an older one, and an active refuses a standby that has seen a newer token than its
own (it is a stale active). Only an ``active`` server serves; promotion stops following,
reloads the stores and replays the spool *before* the role becomes active.

Authentication: HMAC-SHA256 challenge-response on the shared secret (:mod:`scada.ha.wire`);
malformed frames and failed handshakes are counted and the link dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fnmatch
import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..files import replace_text
from ..runtime import Service
from . import wire
from .role import WRITING, Role

log = logging.getLogger("scada.ha.replication")

LOG, FILE = "log", "file"
#: names being written (replace_text's ``.tmp``, ours) or locks: never shipped
_TEMP = (".tmp", ".repl-tmp", ".lock")
HEARTBEAT = 1.0
#: bytes read per round and connection: a fresh standby catching up on a big history does it
#: in rounds instead of reading it all into memory at once
ROUND_BYTES = 16 * 1024 * 1024


@dataclass
class Stream:
    """One directory of durable state: its files on the active (``src``), where the standby
    keeps them (``dest``), which names belong to it and which of them are logs."""

    name: str
    src: str
    dest: str
    patterns: tuple[tuple[str, str], ...]  # (glob on the relative path, LOG | FILE)
    #: files the stream reaches in sub-directories (photos/*): their directories
    subdirs: tuple[str, ...] = ()

    def kind(self, rel: str) -> str | None:
        for pat, kind in self.patterns:
            if fnmatch.fnmatchcase(rel, pat):
                return kind
        return None

    def listing(self, root: str) -> dict[str, tuple[str, os.stat_result]]:
        """``relative name -> (absolute path, stat)`` of the stream's files under ``root``."""
        out: dict[str, tuple[str, os.stat_result]] = {}
        for sub in ("", *self.subdirs):
            d = os.path.join(root, sub) if sub else root
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for ent in it:
                    if ent.name.startswith(".") or ent.name.endswith(_TEMP):
                        continue
                    rel = f"{sub}/{ent.name}" if sub else ent.name
                    if self.kind(rel) is None:
                        continue
                    try:
                        if not ent.is_file(follow_symlinks=False):
                            continue
                        out[rel] = (ent.path, ent.stat(follow_symlinks=False))
                    except FileNotFoundError:
                        continue
        return out


def streams_for(runtime: Any, peer: str = "peer") -> list[Stream]:
    """The streams of this server's state directory (the same site file on both servers, so
    the same list on both). Logs first: the active ships them before snapshots."""
    sd = os.path.abspath(runtime.state_dir)
    rep = os.path.join(sd, "replication")
    site = runtime.site
    out: list[Stream] = []
    if site.config.alarms.enabled:
        d = os.path.join(sd, site.config.alarms.journal)
        out.append(Stream("alarms", d, d, (("journal*.jsonl", LOG), ("snapshot.json", FILE))))
    sched = runtime.services.get("schedules")
    d = os.path.abspath(getattr(getattr(sched, "store", None), "directory", "")
                        or os.path.join(sd, "schedules"))
    out.append(Stream("schedules", d, d, (("overrides.json", FILE),)))
    d = os.path.join(sd, "interventions")
    out.append(Stream("interventions", d, d, (("journal.jsonl", LOG), ("snapshot.json", FILE),
                                              ("kpi.json", FILE), ("photos/*", FILE)),
                      subdirs=("photos",)))
    d = os.path.join(sd, "open311")
    out.append(Stream("open311", d, d, (("*.jsonl", LOG), ("*.log", LOG), ("*", FILE))))
    out.append(Stream("audit", sd, os.path.join(rep, "audit"), (("audit.log", LOG),)))
    hist = runtime.services.get("historian")
    spool = getattr(getattr(hist, "spool", None), "dir", None)
    if spool:
        out.append(Stream("spool", os.path.abspath(spool), os.path.join(rep, "spool"),
                          (("keys.txt", LOG), ("*.blk", FILE))))
    return out


# --------------------------------------------------------------------------- the active
@dataclass
class _Sent:
    kind: str
    ino: int
    size: int
    mtime: int
    tail: bytes = b""


@dataclass
class _Round:
    r: int
    at: float
    lines: int
    #: the alarm journal files' sizes the standby has once it acknowledges this round
    offsets: dict[str, int] = field(default_factory=dict)


@dataclass
class _Link:
    """One standby connected to this active."""

    peer: str
    have: dict[str, list[Any]]
    sent: dict[str, _Sent] = field(default_factory=dict)
    rounds: deque[_Round] = field(default_factory=deque)
    r: int = 0
    acked: int = 0
    bytes: int = 0
    lines: int = 0
    acked_off: dict[str, int] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tx: wire.Seal | None = None
    rx: wire.Seal | None = None


def _pread_all(fd: int, off: int, n: int) -> bytes:
    parts = []
    while n > 0:
        b = os.pread(fd, min(n, 1 << 20), off)
        if not b:
            break
        parts.append(b)
        off += len(b)
        n -= len(b)
    return b"".join(parts)


def _tail(fd: int, size: int) -> bytes:
    k = min(wire.TAIL, size)
    return _pread_all(fd, size - k, k) if k else b""


class Source:
    """What the active reads and ships (runs in a worker thread, one round at a time)."""

    def __init__(self, streams: list[Stream], chunk: int):
        self.streams = streams
        self.chunk = chunk

    def scan(self, link: _Link) -> tuple[list[tuple[dict[str, Any], bytes]], int]:
        """One round: frames for what changed since the last round of ``link`` (``data`` /
        ``del``), logs first; and the number of log lines in them."""
        logs: list[tuple[str, Stream, str, os.stat_result]] = []
        files: list[tuple[str, Stream, str, os.stat_result]] = []
        current: set[str] = set()
        for s in self.streams:
            for rel, (path, st) in s.listing(s.src).items():
                wp = f"{s.name}/{rel}"
                current.add(wp)
                (logs if s.kind(rel) == LOG else files).append((wp, s, path, st))
        frames: list[tuple[dict[str, Any], bytes]] = []
        budget = ROUND_BYTES
        lines = 0
        for wp, s, path, st in logs + files:
            if budget <= 0:
                break
            prev = link.sent.get(wp)
            if prev is not None and (prev.ino, prev.size, prev.mtime) == (
                    st.st_ino, st.st_size, st.st_mtime_ns):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                if prev is None or prev.kind == LOG:
                    k = s.kind(wp.partition("/")[2])
                else:
                    k = FILE
                if k == LOG:
                    n, nl = self._log(link, wp, fd, prev, frames, budget)
                else:
                    n, nl = self._file(link, wp, fd, prev, frames)
                budget -= n
                lines += nl
            finally:
                os.close(fd)
        for wp in [p for p in link.sent if p not in current]:
            del link.sent[wp]
            frames.append(({"t": "del", "f": wp}, b""))
        for wp in [p for p in link.have if p not in current]:
            del link.have[wp]
            frames.append(({"t": "del", "f": wp}, b""))
        return frames, lines

    def _log(self, link: _Link, wp: str, fd: int, prev: _Sent | None,
             frames: list[tuple[dict[str, Any], bytes]], budget: int) -> tuple[int, int]:
        st = os.fstat(fd)
        size = st.st_size
        start: int | None = 0
        if prev is None:
            have = link.have.pop(wp, None)
            if have is not None:
                csize, chash = int(have[0]), have[1]
                k = min(wire.TAIL, csize)
                if csize <= size and wire.digest(_pread_all(fd, csize - k, k)) == chash:
                    start = csize
                else:
                    start = None  # the standby's copy diverged
        else:
            if prev.ino != st.st_ino or size < prev.size or _tail(fd, prev.size) != prev.tail:
                start = None
            else:
                start = prev.size
        if start is None:
            data = _pread_all(fd, 0, size)
            # the standby's copy differs (handshake) or the active replaced its file
            self._whole(wp, data, frames, diverged=prev is None)
            link.sent[wp] = _Sent(LOG, st.st_ino, size, st.st_mtime_ns, data[-wire.TAIL:])
            return len(data), data.count(b"\n")
        end = min(size, start + max(budget, self.chunk))
        data = _pread_all(fd, start, end - start)
        end = start + len(data)
        for i in range(0, len(data), self.chunk):
            frames.append(({"t": "data", "f": wp, "off": start + i}, data[i:i + self.chunk]))
        link.sent[wp] = _Sent(LOG, st.st_ino, end,
                              st.st_mtime_ns if end == size else -1, _tail(fd, end))
        return len(data), data.count(b"\n")

    def _file(self, link: _Link, wp: str, fd: int, prev: _Sent | None,
              frames: list[tuple[dict[str, Any], bytes]]) -> tuple[int, int]:
        st = os.fstat(fd)
        data = _pread_all(fd, 0, st.st_size)
        sent = _Sent(FILE, st.st_ino, len(data), st.st_mtime_ns)
        have = link.have.pop(wp, None) if prev is None else None
        link.sent[wp] = sent
        if have is not None and int(have[0]) == len(data) and have[1] == wire.digest(data):
            return 0, 0
        self._whole(wp, data, frames, diverged=False)
        return len(data), 0

    def _whole(self, wp: str, data: bytes, frames: list[tuple[dict[str, Any], bytes]], *,
               diverged: bool) -> None:
        """A file's whole content, to a temporary file renamed in place by the last piece."""
        n = max(1, -(-len(data) // self.chunk))
        for i in range(n):
            h: dict[str, Any] = {"t": "data", "f": wp, "off": i * self.chunk, "tmp": 1}
            if i == n - 1:
                h["fin"] = 1
                if diverged:
                    h["diverged"] = 1
            frames.append((h, data[i * self.chunk:(i + 1) * self.chunk]))


# --------------------------------------------------------------------------- the standby
class Sink:
    """What the standby does with the frames: write the bytes where the active had them, apply
    the alarm journal's lines to the hot engine, remember what needs a reload."""

    def __init__(self, streams: list[Stream], state_dir: str, *,
                 on_alarm_lines: Callable[[bytes], None] | None = None):
        self.by_name = {s.name: s for s in streams}
        self.state_dir = state_dir
        self.on_alarm_lines = on_alarm_lines
        self._rest: dict[str, bytes] = {}
        self._dirs: set[str] = set()
        #: streams whose files were replaced or deleted since the last promotion/reload
        self.changed: set[str] = set()
        self.alarms_reload = False
        self.stats = {"frames": 0, "bytes": 0, "lines": 0, "diverged": 0, "deleted": 0}

    def inventory(self) -> dict[str, list[Any]]:
        """What this standby has: ``path -> [size, hash]`` (a log: of its last bytes)."""
        out: dict[str, list[Any]] = {}
        for s in self.by_name.values():
            for rel, (path, st) in s.listing(s.dest).items():
                try:
                    with open(path, "rb") as f:
                        if s.kind(rel) == LOG:
                            k = min(wire.TAIL, st.st_size)
                            f.seek(st.st_size - k)
                            data = f.read(k)
                        else:
                            data = f.read()
                except FileNotFoundError:
                    continue
                out[f"{s.name}/{rel}"] = [st.st_size, wire.digest(data)]
        return out

    def _target(self, wp: Any) -> tuple[Stream, str, str]:
        name, rel = wire.check_path(wp)
        s = self.by_name.get(name)
        if s is None or s.kind(rel) is None:
            raise wire.Malformed(f"path {wp!r} is not in a replicated stream")
        path = os.path.join(s.dest, *rel.split("/"))
        d = os.path.dirname(path)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)
        return s, rel, path

    def data(self, h: dict[str, Any], payload: bytes) -> None:
        s, rel, path = self._target(h.get("f"))
        off = wire.int_field(h, "off")
        self.stats["frames"] += 1
        self.stats["bytes"] += len(payload)
        if h.get("tmp"):
            tmp = path + ".repl-tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if off == 0 else 0), 0o640)
            try:
                if os.fstat(fd).st_size != off:
                    raise wire.Malformed(f"{h['f']}: piece at {off}, have "
                                         f"{os.fstat(fd).st_size}")
                os.pwrite(fd, payload, off)
            finally:
                os.close(fd)
            if h.get("fin"):
                if h.get("diverged") and os.path.exists(path):
                    self._aside(s, rel, path)
                os.replace(tmp, path)
                self._rest.pop(h["f"], None)
                self.changed.add(s.name)
                if s.name == "alarms" and s.kind(rel) == LOG:
                    self.alarms_reload = True
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size != off:
                raise wire.Malformed(f"{h['f']}: append at {off} but the file has {size} bytes")
            os.pwrite(fd, payload, off)
        finally:
            os.close(fd)
        self.changed.add(s.name)
        if s.name == "alarms" and self.on_alarm_lines is not None:
            buf = self._rest.pop(h["f"], b"") + payload
            k = buf.rfind(b"\n")
            if k < len(buf) - 1:
                self._rest[h["f"]] = buf[k + 1:]
            if k >= 0:
                self.stats["lines"] += buf.count(b"\n", 0, k + 1)
                self.on_alarm_lines(buf[:k + 1])

    def delete(self, h: dict[str, Any]) -> None:
        s, rel, path = self._target(h.get("f"))
        if not os.path.exists(path):
            return
        self.stats["deleted"] += 1
        self._rest.pop(h["f"], None)
        self.changed.add(s.name)
        if s.kind(rel) == LOG:
            self._aside(s, rel, path)
            if s.name == "alarms":
                self.alarms_reload = True
        else:
            os.unlink(path)

    def _aside(self, s: Stream, rel: str, path: str) -> None:
        """Keep a log the active does not have (transitions it never received) for an
        investigation, out of the stores' way."""
        self.stats["diverged"] += 1
        d = os.path.join(self.state_dir, "replication", "diverged",
                         time.strftime("%Y%m%dT%H%M%S"), s.name, os.path.dirname(rel))
        os.makedirs(d, exist_ok=True)
        dst = os.path.join(d, os.path.basename(rel))
        os.replace(path, dst)
        log.warning("replication: %s/%s differs from the active's copy; kept in %s and "
                    "replaced by the active's", s.name, rel, dst)


# --------------------------------------------------------------------------- the service
def read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ConfigError(f"ha.replication.secret_file: cannot read {path}: {e.strerror}") from e
    if len(secret) < 16:
        raise ConfigError(f"ha.replication.secret_file {path}: the shared secret must be at "
                          f"least 16 bytes (e.g. head -c 32 /dev/urandom | base64)")
    return secret


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = str(addr).rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"replication address {addr!r}: expected host:port")
    return host.strip("[]"), int(port)


class ReplicationService(Service):
    """Serves the stream while this server is active, follows the holder's while it is not
    (registered under ``scada.services`` as ``replication``; see the module docstring)."""

    name = "replication"

    def __init__(self, runtime: Any, cfg: Any, *, listen: str | None, secret: bytes,
                 peers: dict[str, str] | None = None):
        self.runtime = runtime
        self.ha = runtime.ha
        self.cfg = cfg
        self.listen = listen
        self.secret = secret
        #: node -> replication address (a holder that published none is looked up here)
        self.peers = dict(peers or {})
        self.state_dir = os.path.abspath(runtime.state_dir)
        self.rdir = os.path.join(self.state_dir, "replication")
        os.makedirs(self.rdir, exist_ok=True)
        self.max_frame = int(cfg.max_frame_mb * 1024 * 1024)
        self.chunk = max(4096, self.max_frame // 4)
        self.last_token = self._load_token()
        self.started = asyncio.Event()
        self._streams: list[Stream] | None = None
        self._sink: Sink | None = None
        self._links: dict[int, tuple[_Link, asyncio.StreamWriter]] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._follow_gate = asyncio.Event()
        self._conn: asyncio.Task[None] | None = None
        self._role_event = asyncio.Event()
        self.peer: str | None = None
        #: why the standby is not following (last distinct failure), for status and the log
        self.last_error: str | None = None
        self.connected = False
        self._last_sync = 0.0
        self._reported_lag = (0, 0.0)
        self.counters = {"malformed": 0, "auth_failures": 0, "refused_tokens": 0,
                         "connections": 0, "reconnects": 0, "promotions": 0, "links_served": 0,
                         "sync_waits": 0, "sync_timeouts": 0}
        #: synchronous replication: alarm batches waiting for the standby's acknowledgement
        self._waiters: list[tuple[str, int, concurrent.futures.Future[None], float]] = []
        self.last_promotion: dict[str, Any] = {}
        alarms = runtime.services.get("alarms")
        self.engine = getattr(alarms, "engine", None)
        notifier = getattr(alarms, "notifier", None)
        self._exclude = [notifier.on_events] if notifier is not None else []
        if self.engine is not None and not self.ha.is_active():
            self.engine.follow()
        if self.engine is not None and getattr(cfg, "synchronous", False):
            self.engine.journal.barrier = self._barrier
        self.ha.on_promote(self._on_promote)
        self.ha.on_demote(self._on_demote)
        self.ha.listen(self._on_role)
        if not self.ha.is_active():
            self._follow_gate.set()

    # ----------------------------------------------------------------- set-up
    @property
    def streams(self) -> list[Stream]:
        if self._streams is None:  # after every service exists (the spool's directory)
            self._streams = streams_for(self.runtime)
        return self._streams

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            self._sink = Sink(self.streams, self.state_dir, on_alarm_lines=self._alarm_lines)
        return self._sink

    def _load_token(self) -> int:
        try:
            with open(os.path.join(self.rdir, "token"), encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _see_token(self, tok: int) -> None:
        if tok > self.last_token:
            self.last_token = tok
            replace_text(os.path.join(self.rdir, "token"), f"{tok}\n", fsync=False)

    def _on_role(self, role: Role) -> None:
        self._role_event.set()

    # ----------------------------------------------------------------- run
    async def run(self) -> None:
        tasks = [asyncio.create_task(self._follower(), name="replication:follow")]
        try:
            if self.listen:
                host, port = parse_addr(self.listen)
                self._server = await asyncio.start_server(
                    self._serve, host, port, reuse_address=True, limit=self.max_frame + 16)
            self.started.set()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_server()

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()  # no new standby
        for _link, w in list(self._links.values()):
            w.close()
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def aclose(self) -> None:
        await self._stop_following()
        await self._close_server()

    # ----------------------------------------------------------------- active: serve
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pn = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{pn[0]}:{pn[1]}"
        key = id(writer)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        try:
            _sock_opts(writer)
            if not self.ha.is_active():
                await self._send(writer, {"t": "error", "msg": f"{self.ha.node} is "
                                          f"{self.ha.role.value}, not active (the active server "
                                          f"is {self.ha.holder or 'not known'})"})
                return
            nonce = secrets.token_hex(16)
            await self._send(writer, {"t": "hello", "v": wire.VERSION, "node": self.ha.node,
                                      "nonce": nonce})
            h, _ = await asyncio.wait_for(self._recv(reader), self.cfg.timeout)
            node = h.get("node")
            if h.get("t") != "auth" or not isinstance(node, str) or not wire.check_mac(
                    self.secret, h.get("mac"), "client", nonce, str(h.get("nonce")), node):
                self.counters["auth_failures"] += 1
                log.warning("replication: %s failed to authenticate (wrong shared secret?)", peer)
                await self._send(writer, {"t": "error", "msg": "authentication failed"})
                return
            tok = self.ha.token or 0
            seen = h.get("tok")
            if isinstance(seen, int) and seen > tok:
                self.counters["refused_tokens"] += 1
                log.error("replication: standby %s has seen fencing token %d, newer than this "
                          "server's %d: this server is a stale active; not serving", node, seen,
                          tok)
                await self._send(writer, {"t": "error", "msg": f"stale active (token {tok} < "
                                          f"{seen})"})
                return
            have = h.get("have")
            if not isinstance(have, dict):
                raise wire.Malformed("auth frame without its inventory")
            for k, v in have.items():
                wire.check_path(k)
                if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int)):
                    raise wire.Malformed(f"inventory entry {k!r}: {v!r}")
            await self._send(writer, {"t": "welcome", "node": self.ha.node, "tok": tok,
                                      "mac": wire.mac(self.secret, "server", nonce,
                                                      str(h.get("nonce")), self.ha.node)})
            cn = str(h.get("nonce"))
            link = _Link(f"{node}@{peer}", have,
                         tx=wire.Seal(self.secret, "s2c", nonce, cn),
                         rx=wire.Seal(self.secret, "c2s", nonce, cn))
            self._links[key] = (link, writer)
            self.counters["links_served"] += 1
            log.info("replication: standby %s connected from %s", node, peer)
            acks = asyncio.create_task(self._read_acks(reader, link))
            try:
                await self._ship(link, writer, acks)
            finally:
                acks.cancel()
                await asyncio.gather(acks, return_exceptions=True)
                self._links.pop(key, None)
                self._release()
        except wire.Malformed as e:
            self.counters["malformed"] += 1
            log.warning("replication: malformed frame from %s: %s; link dropped", peer, e)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # server closing: end normally (asyncio's stream callback of Python 3.11 logs an
            # error for a cancelled handler task)
            pass
        finally:
            if me is not None:
                self._handlers.discard(me)
            self._links.pop(key, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _ship(self, link: _Link, writer: asyncio.StreamWriter,
                    acks: asyncio.Task[None]) -> None:
        source = Source(self.streams, self.chunk)
        last = 0.0
        while self.ha.is_active() and not acks.done() and not writer.is_closing():
            link.wake.clear()
            t0 = time.monotonic()
            frames, lines = await asyncio.to_thread(source.scan, link)
            tok = self.ha.token or 0
            if frames:
                for h, payload in frames:
                    h["tok"] = tok
                    writer.write(wire.encode(h, payload, link.tx))
                    link.bytes += len(payload)
                    await writer.drain()
                link.lines += lines
            if frames or t0 - last >= HEARTBEAT:
                link.r += 1
                link.rounds.append(_Round(link.r, t0, lines, {
                    wp: x.size for wp, x in link.sent.items() if wp.startswith("alarms/")}))
                lag_lines, lag_s = self._link_lag(link, time.monotonic())
                writer.write(wire.encode({"t": "sync", "tok": tok, "r": link.r,
                                          "lag_records": lag_lines, "lag_s": round(lag_s, 4)},
                                         seal=link.tx))
                await writer.drain()
                last = t0
            self._release()
            wake = asyncio.ensure_future(link.wake.wait())
            try:
                await asyncio.wait([acks, wake], timeout=self.cfg.interval,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
        if acks.done() and not acks.cancelled() and isinstance(acks.exception(), wire.Malformed):
            raise acks.exception()  # type: ignore[misc]

    async def _read_acks(self, reader: asyncio.StreamReader, link: _Link) -> None:
        while True:
            h, _ = await self._recv(reader, link.rx)
            if h.get("t") != "ack":
                raise wire.Malformed(f"unexpected {h.get('t')} frame from the standby")
            r = wire.int_field(h, "r")
            link.acked = max(link.acked, r)
            while link.rounds and link.rounds[0].r <= r:
                link.acked_off.update(link.rounds.popleft().offsets)
            if self._waiters:
                self._release()

    def _barrier(self, path: str, size: int) -> concurrent.futures.Future[None] | None:
        """Synchronous replication (``ha.replication.synchronous``): called by the alarm
        journal after each write on the active; the future is done once a standby has
        acknowledged the file up to ``size`` (at most ``sync_timeout`` later), so no announced
        transition is lost with the active. None when no standby is connected: the alarms are
        announced at once (availability first; ``status()`` shows the standby is missing)."""
        if not self._links or not self.ha.is_active():
            return None
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._waiters.append((f"alarms/{os.path.basename(path)}", size, fut, time.monotonic()))
        self.counters["sync_waits"] += 1
        for link, _w in self._links.values():
            link.wake.set()
        return fut

    def _release(self, force: bool = False) -> None:
        """Complete the waits a standby acknowledged, timed out, or that have no standby."""
        if not self._waiters:
            return
        now = time.monotonic()
        links = [x for x, _w in self._links.values()]
        force = force or not links
        keep = []
        for wp, size, fut, t in self._waiters:
            ok = any(x.acked_off.get(wp, -1) >= size for x in links)
            if ok or force or now - t > self.cfg.sync_timeout:
                if not ok and not force:
                    self.counters["sync_timeouts"] += 1
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((wp, size, fut, t))
        self._waiters = keep

    @staticmethod
    def _link_lag(link: _Link, now: float) -> tuple[int, float]:
        if not link.rounds:
            return 0, 0.0
        pending = [x for x in link.rounds if x.lines]
        return (sum(x.lines for x in pending),
                (now - pending[0].at) if pending else 0.0)

    # ----------------------------------------------------------------- standby: follow
    def _target(self) -> tuple[str, str] | None:
        holder = self.ha.holder
        if not holder or holder == self.ha.node:
            return None
        addr = self.ha.holder_info.get("replication") or self.peers.get(holder)
        return (holder, str(addr)) if addr else None

    async def _follower(self) -> None:
        delay = 0.2
        while True:
            await self._follow_gate.wait()
            target = self._target()
            if target is None:
                self._role_event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._role_event.wait(), 0.2)
                continue
            self._conn = asyncio.create_task(self._follow_once(*target))
            await asyncio.wait([self._conn])
            conn, self._conn = self._conn, None
            self.connected = False
            ok = not conn.cancelled() and conn.exception() is None
            if ok:
                self.last_error = None
            if not conn.cancelled() and conn.exception() is not None:
                e = conn.exception()
                if isinstance(e, wire.Malformed):
                    self.counters["malformed"] += 1
                    log.warning("replication: malformed frame from %s: %s; reconnecting",
                                target[1], e)
                else:
                    # once per distinct reason (a wrong secret, a full disk, the active not
                    # reachable): the operator learns why the standby is not following, and
                    # a retry every two seconds does not flood the log
                    why = f"{type(e).__name__}: {e}"
                    if why != self.last_error:
                        self.last_error = why
                        quiet = isinstance(e, (ConnectionError, asyncio.IncompleteReadError,
                                               TimeoutError)) and not isinstance(e, _Refused)
                        (log.info if quiet else log.warning)(
                            "replication: cannot follow %s (%s); retrying", target[1], why)
            if not self._follow_gate.is_set():
                continue
            self.counters["reconnects"] += 1
            await asyncio.sleep(0.05 if ok else delay)
            delay = 0.2 if ok else min(delay * 2, 2.0)

    async def _follow_once(self, holder: str, addr: str) -> None:
        host, port = parse_addr(addr)
        self.peer = f"{holder}@{addr}"
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=self.max_frame + 16), self.cfg.timeout)
        try:
            _sock_opts(writer)
            h, _ = await asyncio.wait_for(self._recv(reader), self.cfg.timeout)
            if h.get("t") == "error":
                raise _Refused(str(h.get("msg")))
            if h.get("t") != "hello" or not isinstance(h.get("nonce"), str):
                raise wire.Malformed(f"expected hello, got {h.get('t')}")
            snonce = h["nonce"]
            cnonce = secrets.token_hex(16)
            have = await asyncio.to_thread(self.sink.inventory)
            await self._send(writer, {"t": "auth", "node": self.ha.node, "nonce": cnonce,
                                      "mac": wire.mac(self.secret, "client", snonce, cnonce,
                                                      self.ha.node),
                                      "tok": self.last_token, "have": have})
            h, _ = await asyncio.wait_for(self._recv(reader), self.cfg.timeout)
            if h.get("t") == "error":
                raise _Refused(str(h.get("msg")))
            node = str(h.get("node"))
            if h.get("t") != "welcome" or not wire.check_mac(self.secret, h.get("mac"),
                                                              "server", snonce, cnonce, node):
                self.counters["auth_failures"] += 1
                raise _Refused(f"{addr} failed to prove the shared secret")
            self._check_token(h)
            rx = wire.Seal(self.secret, "s2c", snonce, cnonce)
            tx = wire.Seal(self.secret, "c2s", snonce, cnonce)
            self.counters["connections"] += 1
            self.connected = True
            self.last_error = None
            log.info("replication: following %s (%s), fencing token %s", node, addr,
                     h.get("tok"))
            while True:
                h, payload = await asyncio.wait_for(self._recv(reader, rx), self.cfg.timeout)
                self._check_token(h)
                t = h["t"]
                if t == "data":
                    self.sink.data(h, payload)
                elif t == "del":
                    self.sink.delete(h)
                elif t == "sync":
                    self._synced(h)
                    await self._send(writer, {"t": "ack", "r": wire.int_field(h, "r")}, tx)
                    if self._target() != (holder, addr):
                        return  # the lease moved: follow the new holder
                elif t == "error":
                    raise _Refused(str(h.get("msg")))
                else:
                    raise wire.Malformed(f"unexpected {t} frame from the active")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _check_token(self, h: dict[str, Any]) -> None:
        tok = h.get("tok")
        if not isinstance(tok, int):
            raise wire.Malformed(f"{h.get('t')} frame without a fencing token")
        if tok < self.last_token:
            self.counters["refused_tokens"] += 1
            raise _Refused(f"frame with fencing token {tok}, older than {self.last_token} "
                           f"already seen: refused (a stale active)")
        self._see_token(tok)

    def _synced(self, h: dict[str, Any]) -> None:
        self._last_sync = time.monotonic()
        lr, ls = h.get("lag_records"), h.get("lag_s")
        self._reported_lag = (lr if isinstance(lr, int) else 0,
                              float(ls) if isinstance(ls, (int, float)) else 0.0)
        sink = self.sink
        if sink.alarms_reload and self.engine is not None:
            sink.alarms_reload = False
            t0 = time.perf_counter()
            self.engine.reload()
            log.warning("replication: alarm states reloaded from the active's journal "
                        "(%.2f s)", time.perf_counter() - t0)

    def _alarm_lines(self, text: bytes) -> None:
        """Apply whole journal lines (``text`` ends at a line's end) to the hot engine. One
        JSON array parse for the run of lines (the C scanner, no per-line Python call); a line
        the parse refuses is skipped and counted. Members a line leaves at their default
        (scada.alarms.codec) are read with the same defaults by the engine."""
        eng = self.engine
        if eng is None:
            return
        s = text.decode("utf-8", "replace").strip("\n")
        if not s:
            return
        try:
            entries = json.loads("[" + s.replace("\n", ",") + "]")
        except ValueError:
            entries = []
            for ln in s.split("\n"):
                try:
                    entries.append(json.loads(ln))
                except ValueError:
                    self.counters["malformed"] += 1
        entries = [e for e in entries if isinstance(e, dict)]
        tell = self.cfg.announce and any(fn not in self._exclude for fn in eng.listeners)
        events = eng.apply_replicated(entries, events=tell)
        if events:
            eng.announce(events, exclude=self._exclude)

    async def _stop_following(self) -> None:
        self._follow_gate.clear()
        conn = self._conn
        if conn is not None:
            conn.cancel()
            await asyncio.gather(conn, return_exceptions=True)

    # ----------------------------------------------------------------- role changes
    async def _on_promote(self, token: int) -> None:
        """Before this server becomes active: stop following, bring every store to what was
        received, replay the dead active's spool."""
        t0 = time.perf_counter()
        await self._stop_following()
        self._see_token(token)
        sink = self._sink
        rt = self.runtime
        done: dict[str, Any] = {}
        if self.engine is not None:
            if sink is not None and sink.alarms_reload:
                sink.alarms_reload = False
                await asyncio.to_thread(self.engine.reload)
                done["alarms_reloaded"] = True
            self.engine.take_over()
        sched = rt.services.get("schedules")
        store = getattr(sched, "store", None)
        if store is not None and hasattr(store, "reload_if_changed"):
            store._stamp = None
            await asyncio.to_thread(store.reload_if_changed)
            changed = getattr(sched, "overrides_changed", None)
            if callable(changed):
                changed()
            done["overrides"] = len(getattr(store, "overrides", []))
        wo = rt.services.get("interventions")
        reload = getattr(wo, "reload_store", None)
        if callable(reload):
            await reload()
            done["work_orders"] = len(wo.store.orders)
        o311 = rt.services.get("open311")
        reload = getattr(o311, "reload", None)
        if callable(reload):
            r = reload()
            if asyncio.iscoroutine(r):
                await r
            done["open311"] = True
        hist = rt.services.get("historian")
        adopt = getattr(hist, "adopt_spool", None)
        mirror = os.path.join(self.rdir, "spool")
        if callable(adopt) and await asyncio.to_thread(os.path.isdir, mirror):
            done["spool_points"] = await adopt(mirror)
        if sink is not None:
            sink.changed.clear()
        self.counters["promotions"] += 1
        done["seconds"] = round(time.perf_counter() - t0, 3)
        self.last_promotion = done
        log.warning("replication: promotion with token %d: %s", token, done)

    async def _on_demote(self, reason: str) -> None:
        if self.engine is not None:
            self.engine.follow()
        for _link, w in list(self._links.values()):
            w.close()
        self._release(force=True)
        self._follow_gate.set()

    # ----------------------------------------------------------------- frames
    async def _recv(self, reader: asyncio.StreamReader,
                    seal: wire.Seal | None = None) -> tuple[dict[str, Any], bytes]:
        n = wire.frame_length(await reader.readexactly(4), self.max_frame + wire.MAC_LEN)
        return wire.decode(await reader.readexactly(n), seal)

    async def _send(self, writer: asyncio.StreamWriter, h: dict[str, Any],
                    seal: wire.Seal | None = None) -> None:
        writer.write(wire.encode(h, seal=seal))
        await writer.drain()

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """For ``scada ha status``: this server's side of the stream."""
        now = time.monotonic()
        base: dict[str, Any] = {"role": self.ha.role.value, "last_token": self.last_token,
                                **self.counters}
        if self.ha.role in WRITING:
            loop_now = time.monotonic()
            links = []
            lag_r, lag_s, nbytes = 0, 0.0, 0
            for link, _w in self._links.values():
                lr, ls = self._link_lag(link, loop_now)
                links.append({"peer": link.peer, "lag_records": lr, "lag_s": round(ls, 4),
                              "bytes": link.bytes, "records": link.lines})
                lag_r, lag_s, nbytes = max(lag_r, lr), max(lag_s, ls), nbytes + link.bytes
            return {**base, "serving": self.listen, "peer": links[0]["peer"] if links else None,
                    "standbys": links, "lag_records": lag_r, "lag_s": round(lag_s, 4),
                    "bytes": nbytes}
        sink = self._sink
        lr, ls = self._reported_lag
        if not self.connected and self._last_sync:
            ls = max(ls, now - self._last_sync)
        return {**base, "peer": self.peer, "connected": self.connected,
                "error": None if self.connected else self.last_error, "lag_records": lr,
                "lag_s": round(ls, 4) if self._last_sync else None,
                "bytes": sink.stats["bytes"] if sink else 0,
                "records": sink.stats["lines"] if sink else 0,
                "diverged": sink.stats["diverged"] if sink else 0}


class _Refused(ConnectionError):
    """The other end refused the link (not active, wrong secret, stale token)."""


def _sock_opts(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def create(runtime: Any) -> ReplicationService | None:
    """The replication service of a server configured as one of a pair (``ha:`` section);
    None for a single server."""
    ha = getattr(runtime.site.config, "ha", None)
    if ha is None:
        return None
    cfg = getattr(ha, "replication", None)
    if cfg is None or not getattr(cfg, "secret_file", None):
        raise ConfigError("ha.replication.secret_file: a pair needs a shared secret file "
                          "(the same on both servers) to authenticate the replication stream")
    path = cfg.secret_file
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(runtime.site.path)), path)
    nodes = getattr(ha, "nodes", {}) or {}

    def addr(n: Any) -> str | None:
        return n.get("replication") if isinstance(n, dict) else getattr(n, "replication", None)

    peers = {name: a for name, n in nodes.items() if (a := addr(n))}
    listen = peers.get(runtime.ha.node)
    return ReplicationService(runtime, cfg, listen=listen, secret=read_secret(path), peers=peers)
