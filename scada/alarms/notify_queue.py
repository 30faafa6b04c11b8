"""Durable notification queue, dead letters and replay requests (files in the alarms state
directory), shared by the server's notifier and the ``scada notify`` command.

Layout under ``<state_dir>/alarms/``:

* ``notify/<channel>.queue.jsonl``: the channel's queue as an append-only log. A ``put`` line
  holds one notification (``id``, ``created``, ``kind``, ``escalation``, the alarm ``event``);
  a ``done`` or ``dead`` line lists the ids delivered or given up. The live queue is the puts
  not yet done, in file order. The log is rewritten (tmp + fsync + rename) when it empties or
  grows past :data:`COMPACT_BYTES`. Lines are written with ``write()`` when the notification is
  queued (a killed process loses nothing: the data is in the kernel's page cache) and fsynced
  in a worker thread before each delivery attempt (a power cut loses at most the notifications
  not yet tried).
* ``dead-letters.jsonl``: one line per notification given up (a permanent refusal, or older
  than the channel's ``max_age``), with its ``id`` and the reason; a ``replayed`` line records
  a replay. Only the server writes it.
* ``notify/replay/*.json``: replay requests written by ``scada notify replay`` (ids, optional
  target channel, who asked); the server picks them up, queues the dead letters again at the
  tail of their channel and appends the ``replayed`` line. The command therefore changes no
  server state itself: it leaves a request file the server acts on (and logs), like a spool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from scada.files import replace_text

from .journal import DEAD_LETTERS

#: rewrite a channel's queue log when it is this large (and holds delivered entries)
COMPACT_BYTES = 1 << 20


def notify_dir(alarms_dir: str) -> str:
    return os.path.join(alarms_dir, "notify")


def replay_dir(alarms_dir: str) -> str:
    return os.path.join(notify_dir(alarms_dir), "replay")


def dead_path(alarms_dir: str) -> str:
    return os.path.join(alarms_dir, DEAD_LETTERS)


def _lines(path: str) -> Iterable[dict[str, Any]]:
    """Parsed JSON lines of ``path``; a line cut by a crash (no newline, bad JSON) is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
    except FileNotFoundError:
        return


def read_queue(path: str) -> list[dict[str, Any]]:
    """The live entries of a queue log, oldest first."""
    live: dict[str, dict[str, Any]] = {}
    for rec in _lines(path):
        op = rec.get("op")
        if op == "put" and isinstance(rec.get("entry"), dict):
            live[rec["entry"]["id"]] = rec["entry"]
        elif op in ("done", "dead"):
            for i in rec.get("ids", ()):
                live.pop(i, None)
    return list(live.values())


def read_queues(alarms_dir: str) -> dict[str, list[dict[str, Any]]]:
    """Channel name -> live queue, for every queue log in the directory."""
    d = notify_dir(alarms_dir)
    out: dict[str, list[dict[str, Any]]] = {}
    if os.path.isdir(d):
        for name in sorted(os.listdir(d)):
            if name.endswith(".queue.jsonl"):
                out[name[: -len(".queue.jsonl")]] = read_queue(os.path.join(d, name))
    return out


def read_dead_letters(alarms_dir: str, *, include_replayed: bool = False) -> list[dict[str, Any]]:
    """Dead letters, oldest first; those already replayed are left out unless asked for (they
    then carry ``replayed_at``)."""
    dead: dict[str, dict[str, Any]] = {}
    anon = 0
    for rec in _lines(dead_path(alarms_dir)):
        if "replayed" in rec:
            for i in rec["replayed"]:
                if i in dead:
                    dead[i]["replayed_at"] = rec.get("ts")
            continue
        key = rec.get("id")
        if key is None:  # written before dead letters had ids: listed, not replayable
            anon += 1
            key = f"-{anon}"
        dead[key] = rec
    return [d for d in dead.values() if include_replayed or "replayed_at" not in d]


def request_replay(alarms_dir: str, ids: list[str], *, channel: str | None, user: str,
                   ts: float) -> str:
    """Write a replay request for the server (see the module docstring); returns its path."""
    d = replay_dir(alarms_dir)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{int(ts * 1000):015d}-{os.getpid()}.json")
    replace_text(path, json.dumps({"ids": ids, "channel": channel, "user": user, "ts": ts}))
    return path


class QueueLog:
    """One channel's durable queue (see the module docstring). Used from the event loop only;
    :meth:`sync` runs in a worker thread."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.pending: list[dict[str, Any]] = read_queue(path)
        self._f = open(path, "a", encoding="utf-8")
        self._dirty = False

    def _write(self, recs: list[dict[str, Any]]) -> None:
        self._f.write("".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in recs))
        self._f.flush()
        self._dirty = True

    def put(self, entries: list[dict[str, Any]]) -> None:
        self._write([{"op": "put", "entry": e} for e in entries])
        self.pending.extend(entries)

    def remove(self, ids: list[str], op: str = "done") -> None:
        if not ids:
            return
        gone = set(ids)
        self.pending = [e for e in self.pending if e["id"] not in gone]
        self._write([{"op": op, "ids": ids}])
        if not self.pending or self._f.tell() > COMPACT_BYTES:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log with the live entries only. No fsync here (this runs in the event
        loop): the next :meth:`sync_fd` before a delivery attempt covers the new file, and a
        crash before it leaves either the old log (same live set) or the new one."""
        self._f.close()
        replace_text(self.path, "".join(
            json.dumps({"op": "put", "entry": e}, default=str, ensure_ascii=False) + "\n"
            for e in self.pending), fsync=False)
        self._f = open(self.path, "a", encoding="utf-8")
        self._dirty = bool(self.pending)

    def sync_fd(self) -> int | None:
        """A duplicate of the log's descriptor to fsync in a worker thread (and close there), or
        None when nothing was written since the last one; a duplicate, so a compaction closing
        the log meanwhile cannot pull the descriptor from under the thread."""
        if not self._dirty:
            return None
        self._dirty = False
        return os.dup(self._f.fileno())

    def close(self) -> None:
        self._f.close()
