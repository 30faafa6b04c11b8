"""The live-update hub: one subscription to the alarm engine and one to the tag database,
fanned out to every browser's event stream (``/api/stream``), filtered by the session's areas.

* Alarm transitions arrive as lists of :class:`~scada.alarms.model.AlarmEvent` (the engine's
  listener). Each goes, as one small JSON dict, to the clients whose identity sees its area. A
  flood (more than :data:`FLOOD` events in one batch) becomes one ``alarms.reload`` event per
  client instead: the console then re-reads ``/api/alarms``.
* Tag changes: a client watches a few tags (the faceplate's device); the hub keeps a reference
  count per watched tag and one boolean mask, so a change batch costs one gather whatever the
  city size, and only watched rows are turned into JSON.
* :meth:`Hub.publish` lets other parts (the map's device states) send their own events.
* Every client has a bounded queue: a client that does not read fast enough is dropped (its
  stream ends with an ``overflow`` event; the page reconnects and re-reads), so a slow browser
  cannot make the server's memory grow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

import numpy as np

from .. import quality as Q
from ..operations import Identity

log = logging.getLogger("scada.web")

#: alarm events in one engine batch above which clients are told to reload instead
FLOOD = 200
_CLOSE = object()


class Client:
    """One browser's event stream."""

    def __init__(self, hub: Hub, identity: Identity, maxsize: int):
        self.hub = hub
        self.identity = identity
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.watch: set[int] = set()
        self.closed = False
        self.reason = ""

    def put(self, item: str) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.hub.stats["dropped_clients"] += 1
            log.info("web: live-update client of %s dropped: %d events not read",
                     self.identity.name, self.queue.maxsize)
            self.close("overflow")

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.hub._remove(self)
        # make room for the end marker so the reader wakes
        while True:
            try:
                self.queue.put_nowait(_CLOSE)
                break
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def next(self, wait_s: float) -> str | None:
        """The next event (SSE text), None on timeout; raises EOFError once closed."""
        try:
            item = await asyncio.wait_for(self.queue.get(), wait_s)
        except TimeoutError:
            return None
        if item is _CLOSE:
            raise EOFError(self.reason)
        return item


def sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


def alarm_json(ev: Any) -> dict[str, Any]:
    """One alarm (an engine view or event) as the API shapes it."""
    d = ev.as_dict()
    for k in ("value", "ts", "shelve_until"):
        v = d.get(k)
        if isinstance(v, float) and not math.isfinite(v):
            d[k] = None
    return d


class Hub:
    """See the module docstring. ``runtime`` gives the tag database and the alarm engine."""

    def __init__(self, runtime: Any, *, max_clients: int = 200, queue_size: int = 500):
        self.runtime = runtime
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        self._refs: dict[int, int] = {}
        self._mask = np.zeros(0, dtype=np.bool_)
        self._tag_sub: object | None = None
        self._engine: Any = None
        self.stats = {"events": 0, "dropped_clients": 0, "refused_clients": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Subscribe once to the tag database and the alarm engine."""
        if self._tag_sub is None:
            self._tag_sub = self.runtime.tagdb.subscribe(self._on_changes, name="web.hub")
        svc = self.runtime.services.get("alarms")
        engine = getattr(svc, "engine", None)
        if engine is not None and self._engine is None:
            engine.listeners.append(self._on_alarms)
            self._engine = engine

    def close(self) -> None:
        for c in list(self.clients):
            c.close("server stopping")
        if self._tag_sub is not None:
            self.runtime.tagdb.unsubscribe(self._tag_sub)
            self._tag_sub = None
        if self._engine is not None:
            try:
                self._engine.listeners.remove(self._on_alarms)
            except ValueError:
                pass
            self._engine = None

    # ------------------------------------------------------------------ clients
    def connect(self, identity: Identity) -> Client | None:
        """A new stream client, or None when :attr:`max_clients` are connected."""
        if len(self.clients) >= self.max_clients:
            self.stats["refused_clients"] += 1
            return None
        c = Client(self, identity, self.queue_size)
        self.clients.add(c)
        return c

    def watch(self, client: Client, indices: list[int]) -> None:
        n = len(self.runtime.tagdb.value)
        if len(self._mask) < n:
            m = np.zeros(n, dtype=np.bool_)
            m[: len(self._mask)] = self._mask
            self._mask = m
        for i in indices:
            if i in client.watch:
                continue
            client.watch.add(i)
            self._refs[i] = self._refs.get(i, 0) + 1
            self._mask[i] = True

    def _remove(self, client: Client) -> None:
        self.clients.discard(client)
        for i in client.watch:
            k = self._refs.get(i, 0) - 1
            if k <= 0:
                self._refs.pop(i, None)
                if i < len(self._mask):
                    self._mask[i] = False
            else:
                self._refs[i] = k
        client.watch = set()

    # ------------------------------------------------------------------ fan-out
    def publish(self, kind: str, data: dict[str, Any], area: str | None = None) -> int:
        """Send one event to every client that sees ``area`` (None: every client). Returns
        how many clients it was queued for."""
        if not self.clients:
            return 0
        text = sse(kind, data)
        n = 0
        for c in list(self.clients):
            if area is None or c.identity.sees_area(area):
                c.put(text)
                n += 1
        self.stats["events"] += 1
        return n

    def _on_alarms(self, events: list[Any]) -> None:
        if not self.clients:
            return
        if len(events) > FLOOD:
            areas = {ev.area for ev in events}
            for c in list(self.clients):
                if any(c.identity.sees_area(a) for a in areas):
                    c.put(sse("alarms.reload", {"events": len(events)}))
            return
        for ev in events:
            self.publish("alarm", alarm_json(ev), ev.area)

    def _on_changes(self, ch: Any) -> None:
        if not self._refs:
            return
        idx = ch.indices
        ok = idx < len(self._mask)
        m = np.zeros(len(idx), dtype=np.bool_)
        m[ok] = self._mask[idx[ok]]
        if not m.any():
            return
        db = self.runtime.tagdb
        rows = []
        for k in np.nonzero(m)[0].tolist():
            i = int(idx[k])
            q = int(ch.quality[k])
            if ch.strings and i in ch.strings:
                v: Any = ch.strings[i]
            else:
                v = db.value_of(i)
            rows.append((i, {"tag": db.path(i), "value": _plain(v), "status": q,
                              "status_name": Q.name(q), "source_ts": _num(ch.source_ts[k]),
                              "server_ts": _num(ch.server_ts)}))
        for c in list(self.clients):
            if not c.watch:
                continue
            mine = [d for i, d in rows if i in c.watch]
            if mine:
                c.put(sse("tags", {"tags": mine}))


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
