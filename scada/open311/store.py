"""The citizen-report store: an append-only JSON-lines journal plus a snapshot, in
``<state_dir>/open311/``, replayed into memory at start (the work-order store's design, see
:mod:`scada.interventions.store`, kept separate so the two evolve independently).

Records:

* ``request``: a new service request (the whole record, personal data under ``personal``);
* ``change``: fields of a request set (status, notes, order, expected time ...) and, when the
  change is visible to the citizen, one *update* of the FixMyStreet feed (``update_id``);
* ``purge``: personal data removed from requests older than the retention period. A purge
  writes a snapshot at once, so the journal holding the removed data is emptied too.

A change is applied in memory only after it is on disk (write + fsync off the event loop, one
lock). :meth:`Store.reload` re-reads the files (a standby server taking over after a failover).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from ..files import replace_text

log = logging.getLogger("scada.open311")


class Store:
    def __init__(self, directory: str, snapshot_every: int = 2000, fsync: bool = True):
        self.directory = directory
        self.journal_path = os.path.join(directory, "journal.jsonl")
        self.snapshot_path = os.path.join(directory, "snapshot.json")
        self.snapshot_every = snapshot_every
        self.fsync = fsync
        self.lock = asyncio.Lock()
        self.stats = {"records": 0, "bad_lines": 0, "snapshots": 0}
        self._clear()

    def _clear(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}
        self.updates: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}
        self.by_order: dict[str, list[str]] = {}
        self.by_alarm: dict[str, list[str]] = {}
        self.seq = 0
        self.next_id = 1
        self.next_update = 1
        self._since = 0

    def __len__(self) -> int:
        return len(self.requests)

    # ------------------------------------------------------------------ load
    def load(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if os.path.exists(self.snapshot_path):
            with open(self.snapshot_path, encoding="utf-8") as f:
                snap = json.load(f)
            self.seq, self.next_id, self.next_update = int(snap["seq"]), int(snap["next_id"]), int(snap["next_update"])
            for r in snap["requests"]:
                self._put(r)
            self.updates = list(snap["updates"])
        if os.path.exists(self.journal_path):
            with open(self.journal_path, "rb") as f:
                lines = f.read().split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    self.stats["bad_lines"] += 1  # a torn last line after a crash
                    continue
                if int(rec.get("seq", 0)) > self.seq:
                    self._apply(rec)
                    self._since += 1

    def reload(self) -> None:
        """Forget the memory and read the files again (after a failover to this server)."""
        self._clear()
        self.load()

    # ------------------------------------------------------------------ apply
    def _put(self, r: dict[str, Any]) -> None:
        self.requests[r["id"]] = r
        self.tokens[r["token"]] = r["id"]
        if r.get("order"):
            self.by_order.setdefault(r["order"], []).append(r["id"])
        if r.get("alarm"):
            self.by_alarm.setdefault(r["alarm"], []).append(r["id"])

    def _apply(self, rec: dict[str, Any]) -> None:
        op = rec["op"]
        self.seq = max(self.seq, int(rec["seq"]))
        if op == "request":
            r = dict(rec["request"])
            self._put(r)
            self.next_id = max(self.next_id, int(r["id"]) + 1)
        elif op == "change":
            r = self.requests.get(rec["id"])
            if r is None:
                return
            fields = rec.get("fields", {})
            if fields.get("order") and fields["order"] != r.get("order"):
                self.by_order.setdefault(fields["order"], []).append(r["id"])
            r.update(fields)
            r["updated"] = rec["ts"]
        elif op == "purge":
            for rid in rec["ids"]:
                r = self.requests.get(rid)
                if r is not None:
                    r["personal"] = None
        else:
            log.warning("open311 store: unknown record %r skipped", op)
            return
        upd = rec.get("update")
        if upd is not None:
            self.updates.append(upd)
            self.next_update = max(self.next_update, int(upd["update_id"]) + 1)

    # ------------------------------------------------------------------ write
    def new_id(self) -> str:
        """A new request id (numbers are not reused, even when the record then fails to be written)."""
        self.next_id += 1
        return str(self.next_id - 1)

    def update_row(self, rid: str, ts: float, status: str, description: str) -> dict[str, Any]:
        """One update of the citizens' feed, numbered now."""
        self.next_update += 1
        return {"update_id": self.next_update - 1, "id": rid, "ts": ts, "status": status, "description": description}

    async def commit(self, recs: list[dict[str, Any]]) -> None:
        """Journal ``recs`` (numbered here) then apply them. Call under :attr:`lock`."""
        lines = []
        for rec in recs:
            self.seq += 1
            rec["seq"] = self.seq
            lines.append(json.dumps(rec, separators=(",", ":"), ensure_ascii=False))
        data = ("\n".join(lines) + "\n").encode()
        await asyncio.to_thread(self._append, data)
        for rec in recs:
            self._apply(rec)
            self.stats["records"] += 1
            self._since += 1
        if self._since >= self.snapshot_every or any(r["op"] == "purge" for r in recs):
            await asyncio.to_thread(self._snapshot, self._snapshot_text())

    def _append(self, data: bytes) -> None:
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _snapshot_text(self) -> str:
        """Serialised on the event loop (the memory changes only there), written in a thread."""
        snap = {"seq": self.seq, "next_id": self.next_id, "next_update": self.next_update,
                "requests": list(self.requests.values()), "updates": self.updates}
        return json.dumps(snap, separators=(",", ":"), ensure_ascii=False)

    def _snapshot(self, text: str) -> None:
        replace_text(self.snapshot_path, text, fsync=self.fsync)
        replace_text(self.journal_path, "", fsync=self.fsync)
        self._since = 0
        self.stats["snapshots"] += 1
