"""The interventions service (``runtime.services["interventions"]``): work orders, procedures
per alarm class, maintenance mode and visits, on the store's journal.

It changes state only when called by the operator API (:mod:`scada.operations.workorders`,
which checks roles and areas and audits) or, for the server's own actions (automatic orders,
repeat alarms attaching, acknowledgement times), under the server's identity, audited the
same way. Listeners (``listeners``: ``fn(kind, data, area)``) hear every change: the web
console forwards them to its live stream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..runtime import Service
from . import model as M
from .grouping import Visit, group, locate, on_shift, propose
from .procedures import Procedures
from .store import Store

log = logging.getLogger("scada.interventions")

#: maintenance-mode shelving comment prefix (recognised again after a restart)
MAINT = "maintenance: "
#: longest maintenance shelve (a forgotten order does not hide a device's alarms for ever)
MAINT_MAX_S = 7 * 86400.0
#: image types accepted for photos, by their first bytes
IMAGE_MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png", b"RIFF": "image/webp"}


class CloseRefused(M.TransitionError):
    """Closing refused while the device's fault is still active (override with a comment)."""


class InterventionService(Service):
    name = "interventions"

    def __init__(self, runtime: Any):
        self.runtime = runtime
        site = runtime.site
        self.cfg = site.config.interventions
        self.clock = runtime.clock
        self.tz = site.config.site.timezone
        self.store = Store(os.path.join(runtime.state_dir, "interventions"), self.cfg.snapshot_every)
        self.store.load()
        self.devices = {d.path: d for d in site.all_devices()}
        self.municipality = {a.id: a.municipality or a.name or a.id for a in site.config.areas}
        self.listeners: list[Any] = []
        self.procedures = Procedures(self)
        self.crews = {c.id: {"id": c.id, "name": c.name or c.id, "trades": list(c.trades), "shift": c.shift,
                             "lat": c.position.lat if c.position else None,
                             "lon": c.position.lon if c.position else None, "agents": list(c.agents)}
                      for c in self.cfg.crews}
        self._tasks: set[asyncio.Task[Any]] = set()
        eng = self.engine
        if eng is not None:
            eng.listeners.append(self._on_alarms)

    # ------------------------------------------------------------------ handles
    @property
    def engine(self) -> Any:
        return getattr(self.runtime.services.get("alarms"), "engine", None)

    @property
    def notifier(self) -> Any:
        return getattr(self.runtime.services.get("alarms"), "notifier", None)

    def get(self, order_id: str) -> M.WorkOrder:
        wo = self.store.orders.get(order_id)
        if wo is None:
            raise KeyError(f"no work order {order_id!r}")
        return wo

    def emit(self, kind: str, data: dict[str, Any], area: str | None) -> None:
        for fn in tuple(self.listeners):
            try:
                fn(kind, data, area)
            except Exception:
                log.exception("interventions listener %r failed", fn)

    # ------------------------------------------------------------------ site helpers
    def site_of(self, device: str) -> str:
        d = self.devices.get(device)
        return (d.parent or d.path) if d is not None else device

    def location_of(self, device: str) -> tuple[float, float] | None:
        d = self.devices.get(device)
        if d is None:
            return None
        p = self.devices.get(d.parent) if d.parent else None
        loc = d.location or (p.location if p is not None else None)
        return (loc.lat, loc.lon) if loc is not None else None

    def under_works(self, device: str) -> M.WorkOrder | None:
        for wo in self.store.orders.values():
            if wo.state == "in_progress" and device in wo.devices:
                return wo
        return None

    def works_index(self) -> dict[str, M.WorkOrder]:
        """device -> its order in progress (one pass: the alarm list's checklists)."""
        return {d: wo for wo in self.store.orders.values() if wo.state == "in_progress" for d in wo.devices}

    def today(self, ts: float | None = None) -> str:
        """The site's local calendar day (``YYYY-MM-DD``) at ``ts`` (default: the clock's now)."""
        t = self.clock.time() if ts is None else ts
        return datetime.fromtimestamp(t, ZoneInfo(self.tz)).date().isoformat()

    def checklist_for(self, fault: str) -> list[dict[str, Any]]:
        p = self.cfg.procedures.get(fault)
        return [{"id": f"s{i + 1}", "text": t, "done": False, "user": None, "ts": None}
                for i, t in enumerate(p.steps if p else [])]

    # ------------------------------------------------------------------ changes
    async def create(self, *, user: str, via: str, devices: list[str], title: str = "", priority: int = 3,
                     trade: str | None = None, origin: str = "manual", fault: str = "",
                     alarm_id: str | None = None, alarm_ts: float | None = None,
                     key: str | None = None) -> tuple[M.WorkOrder, bool]:
        """A new order, or the open order of (device, fault) the alarm attaches to (second
        value False). ``ValueError`` for bad arguments."""
        if not devices:
            raise ValueError("devices: at least one device")
        unknown = [d for d in devices if d not in self.devices]
        if unknown:
            raise KeyError(f"unknown device: {', '.join(unknown)}")
        if not 1 <= int(priority) <= 4:
            raise ValueError(f"priority {priority}: expected 1..4")
        if origin not in M.ORIGINS:
            raise ValueError(f"origin {origin!r}: expected one of {', '.join(M.ORIGINS)}")
        proc = self.cfg.procedures.get(fault) if fault else None
        trade = trade or (proc.trade if proc else None) or self.cfg.default_trade
        if trade is not None and trade not in self.cfg.trades:
            raise ValueError(f"trade {trade!r}: expected one of {', '.join(self.cfg.trades)}")
        async with self.store.lock:
            done = self.store.seen(key)
            if done:
                return self.get(done["id"]), False
            now = self.clock.time()
            if fault:
                for d in devices:
                    wo = self.store.open_for(d, fault)
                    if wo is not None:
                        if alarm_id:
                            await self.store.commit([{"op": "attach", "id": wo.id, "ts": now, "alarm": alarm_id,
                                                      "user": user, "via": via, "key": key}])
                        self.emit("workorder", wo.summary(), wo.area)
                        return wo, False
            sla = self.cfg.sla_for(int(priority))
            t0 = alarm_ts if alarm_ts is not None else now
            wo = M.WorkOrder(
                id=self.store.new_id(), title=title or (f"{fault} on {devices[0]}" if fault else devices[0]),
                state="draft", priority=int(priority), origin=origin, devices=list(devices),
                area=self.devices[devices[0]].area, trade=trade, created=now, created_by=user,
                due_respond=t0 + sla.respond, due_repair=t0 + sla.repair, fault=fault,
                location=self.location_of(devices[0]), site=self.site_of(devices[0]),
                alarms=[alarm_id] if alarm_id else [], alarm_raised=alarm_ts,
                checklist=self.checklist_for(fault))
            await self.store.commit([{"op": "create", "id": wo.id, "ts": now, "user": user, "via": via,
                                      "order": wo.as_dict(), "key": key}])
        wo = self.get(wo.id)
        self.emit("workorder", wo.summary(), wo.area)
        return wo, True

    def check_close(self, wo: M.WorkOrder) -> list[str]:
        """Alarms of the order's devices still active (the repair is not verified)."""
        eng = self.engine
        if eng is None:
            return []
        out = []
        for d in wo.devices:
            for c in eng.by_device.get(d, ()):
                v = eng.view(c)
                if v.active and (not wo.fault or v.name == wo.fault or v.alarm_id in wo.alarms):
                    out.append(v.alarm_id)
        return out

    async def transition(self, order_id: str, to: str, *, user: str, via: str, comment: str = "",
                         resolution: str | None = None, override: bool = False, field: str | None = None,
                         key: str | None = None, note: str = "", photo: bytes | None = None,
                         planned: str | None = None) -> tuple[M.WorkOrder, bool]:
        """Move an order; False when ``key`` was seen (nothing done again). Scheduling sets the
        planned day (``planned``, else the one the order has, else today)."""
        if planned is not None:
            planned = M.check_day(planned)
            if to != "scheduled":
                raise ValueError(f"planned: a date is given when scheduling, not when moving to {to}")
        async with self.store.lock:
            if self.store.seen(key):
                return self.get(order_id), False
            wo = self.get(order_id)
            M.check_transition(wo.state, to)
            if to == "scheduled":
                planned = planned or wo.planned or self.today()
            if to == "closed":
                active = self.check_close(wo)
                if active and not override:
                    raise CloseRefused(f"{wo.id} cannot close: the fault is still active ({', '.join(active)}); "
                                       "clear it, or override with a comment")
                if active and not comment.strip():
                    raise ValueError("closing over an active fault needs a comment")
            now = self.clock.time()
            recs: list[dict[str, Any]] = []
            if note:
                recs.append({"op": "note", "id": wo.id, "ts": now, "user": user, "via": via, "text": note})
            if photo is not None:
                recs.append(await self._photo_rec(wo, photo, user, via, now))
            recs.append({"op": "transition", "id": wo.id, "ts": now, "to": to, "user": user, "via": via,
                         "comment": comment, "resolution": resolution, "override": override, "field": field,
                         "key": key} | ({"planned": planned} if planned else {}))
            await self.store.commit(recs)
        wo = self.get(order_id)
        await self._maintenance(wo, user)
        self.emit("workorder", wo.summary() | {"event": field or to, "user": user}, wo.area)
        return wo, True

    async def assign(self, order_id: str, *, crew: str | None, assignee: str | None, user: str, via: str,
                     key: str | None = None, planned: str | None = None) -> M.WorkOrder:
        """Dispatch to a crew (or an agent) for the day ``planned`` (default: the order's planned
        day, else today: an order handed to a crew is planned)."""
        if crew is not None and crew not in self.crews:
            raise KeyError(f"unknown crew {crew!r}; expected one of {', '.join(self.crews) or 'none configured'}")
        if planned is not None:
            planned = M.check_day(planned)
        async with self.store.lock:
            if self.store.seen(key):
                return self.get(order_id)
            wo = self.get(order_id)
            if not wo.open:
                raise M.TransitionError(f"{wo.id} is {wo.state}: it cannot be assigned")
            if planned is None and (crew or assignee):
                planned = wo.planned or self.today()
            await self.store.commit([{"op": "assign", "id": wo.id, "ts": self.clock.time(), "crew": crew,
                                      "assignee": assignee, "user": user, "via": via, "key": key,
                                      "planned": planned}])
        wo = self.get(order_id)
        self.emit("workorder", wo.summary(), wo.area)
        return wo

    async def record(self, order_id: str, op: str, *, user: str, via: str, key: str | None = None,
                     **fields: Any) -> M.WorkOrder:
        """A note, a part used, a checklist step, a photo (``data`` bytes)."""
        async with self.store.lock:
            if self.store.seen(key):
                return self.get(order_id)
            wo = self.get(order_id)
            now = self.clock.time()
            if op == "photo":
                rec = await self._photo_rec(wo, fields["data"], user, via, now)
            elif op == "check":
                if not any(s["id"] == fields["step"] for s in wo.checklist):
                    raise KeyError(f"{wo.id} has no checklist step {fields['step']!r}")
                rec = {"op": "check", "id": wo.id, "ts": now, "step": fields["step"], "done": fields.get("done", True)}
            elif op == "note":
                rec = {"op": "note", "id": wo.id, "ts": now, "text": fields["text"]}
            elif op == "part":
                rec = {"op": "part", "id": wo.id, "ts": now, "ref": fields["ref"], "qty": fields["qty"]}
            else:
                raise ValueError(f"unknown record {op!r}")
            rec.update(user=user, via=via, key=key, id=wo.id)
            await self.store.commit([rec])
        wo = self.get(order_id)
        self.emit("workorder", wo.summary() | {"event": op, "user": user}, wo.area)
        return wo

    async def _photo_rec(self, wo: M.WorkOrder, data: bytes, user: str, via: str, now: float) -> dict[str, Any]:
        if len(data) > self.cfg.photo_max_bytes:
            raise ValueError(f"photo of {len(data)} bytes is above interventions.photo_max_bytes "
                             f"({self.cfg.photo_max_bytes})")
        kind = next((t for m, t in IMAGE_MAGIC.items() if data.startswith(m)), None)
        if kind is None:
            raise ValueError("photo: expected a JPEG, PNG or WebP image")
        name = f"{wo.id}-{hashlib.sha256(data).hexdigest()[:16]}.{kind.split('/')[1]}"
        path = os.path.join(self.store.photos_dir, name)

        def write() -> None:
            os.makedirs(self.store.photos_dir, exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)

        await asyncio.to_thread(write)
        return {"op": "photo", "id": wo.id, "ts": now, "file": name, "bytes": len(data), "type": kind,
                "user": user, "via": via}

    # ------------------------------------------------------------------ maintenance mode
    async def _maintenance(self, wo: M.WorkOrder, user: str) -> None:
        """Shelve the order's devices' alarms while it is in progress; unshelve them when it
        leaves that state (journaled by the alarm engine, shown as Shelved with the order)."""
        eng = self.engine
        if eng is None:
            return
        tag = f"{MAINT}{wo.id}"
        for d in wo.devices:
            for c in eng.by_device.get(d, ()):
                v = eng.view(c)
                info = eng.shelve_info.get(c)
                mine = info is not None and info[1].startswith(tag + " ")
                if wo.state == "in_progress" and not v.shelved:
                    eng.shelve(v.alarm_id, user=user, comment=f"{tag} in progress ({wo.title})",
                               duration=MAINT_MAX_S)
                elif wo.state != "in_progress" and v.shelved and mine:
                    eng.unshelve(v.alarm_id, user=user, comment=f"{tag} {wo.state}")

    # ------------------------------------------------------------------ alarms
    def _on_alarms(self, events: list[Any]) -> None:
        for e in events:
            if e.event == "raise":
                self._spawn(self.procedures.on_raise(e))
            elif e.event == "ack":
                for wo in self.store.orders.values():
                    if wo.open and e.alarm_id in wo.alarms and wo.acked_at is None:
                        self._spawn(self._ack(wo.id, e.ts, e.user))

    async def _ack(self, order_id: str, ts: float, user: str | None) -> None:
        async with self.store.lock:
            await self.store.commit([{"op": "ack", "id": order_id, "ts": ts, "user": user or "server",
                                      "via": "server"}])

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("interventions: alarm handling failed: %s", t.exception())

    async def idle(self) -> None:
        """Wait until the alarm-driven work started so far is done (tests)."""
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ visits
    def crew_rows(self, now: float, day: str | None = None) -> list[dict[str, Any]]:
        """Crews as dispatch sees them: on shift now (the site's time zone), busy on an order in
        progress, and where they are: the position their tablet reported if it is younger than
        ``position_max_age``, else the base position of the site file (``position_source``
        says which, ``position_note`` why). For a later ``day`` (planning ahead) every crew is
        available: shifts are daily and today's work is over by then."""
        ahead = day is not None and day > self.today(now)
        busy = {wo.crew for wo in self.store.orders.values() if wo.state == "in_progress" and wo.crew}
        rows = []
        for c in self.crews.values():
            shift = on_shift(c["shift"], now, self.tz)
            rows.append(c | {"available": ahead or (shift and c["id"] not in busy), "on_shift": shift,
                             "busy": c["id"] in busy})
        return locate(rows, self.store.positions, now, self.cfg.position_max_age)

    async def report_position(self, crew: str, *, lat: float, lon: float, accuracy: float | None, user: str,
                              via: str, key: str | None = None) -> dict[str, Any] | None:
        """Keep a crew's last known position (journaled: it survives a restart); None when
        ``key`` was seen. ``ValueError`` for coordinates out of range."""
        if crew not in self.crews:
            raise KeyError(f"unknown crew {crew!r}")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"position {lat}, {lon}: latitude -90..90 and longitude -180..180")
        if accuracy is not None and not 0 <= accuracy <= 1e6:
            raise ValueError(f"accuracy {accuracy}: metres, 0..1000000")
        async with self.store.lock:
            if self.store.seen(key):
                return None
            await self.store.commit([{"op": "position", "crew": crew, "ts": self.clock.time(), "lat": lat, "lon": lon,
                                      "accuracy": accuracy, "user": user, "via": via, "key": key}])
        row = next(r for r in self.crew_rows(self.clock.time()) if r["id"] == crew)
        self.emit("crew", row, None)
        return row

    def day_visits(self, crew: str, *, area_ok: Any = None, day: str | None = None) -> list[tuple[Visit, bool]]:
        """The crew's visits of ``day`` (default: today, the site's calendar): its open field
        orders planned that day, and those planned before and not done (overdue) first; each
        visit's tasks in trade order. Second value: the visit is overdue."""
        day = day or self.today()
        orders = [o for o in self.store.orders.values()
                  if o.crew == crew and o.state in M.FIELD and o.planned is not None and o.planned <= day
                  and (area_ok is None or area_ok(o.area))]
        vs = group(orders, self.cfg.rank, self.cfg.grouping_radius_m)
        out = [(v, any(t.planned < day for t in v.tasks)) for v in vs]
        out.sort(key=lambda x: not x[1])  # stable: overdue first, each part in the visits' order
        return out

    def visits(self, *, crew: str | None = None, area_ok: Any = None, dispatch: bool = True,
               day: str | None = None) -> list[Visit]:
        """Open orders as visits, each with the crew dispatch proposes for ``day`` (default
        today: a crew on shift now and not busy; a later day: any crew with the trade)."""
        orders = [o for o in self.store.orders.values() if o.open and (area_ok is None or area_ok(o.area))]
        if crew is not None:
            orders = [o for o in orders if o.crew == crew]
        vs = group(orders, self.cfg.rank, self.cfg.grouping_radius_m)
        if dispatch and crew is None:
            propose(vs, self.crew_rows(self.clock.time(), day), self.cfg.trades)
        return vs

    def crews_of(self, user: str | None) -> list[str]:
        return [c["id"] for c in self.crews.values() if user in c["agents"]]

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        await asyncio.Event().wait()

    async def reload_store(self) -> None:
        """Open the store again from its files: a standby being promoted, whose files the
        active's replication filled (scada.ha.replication)."""
        async with self.store.lock:
            new = Store(self.store.directory, self.store.snapshot_every, self.store.fsync)
            await asyncio.to_thread(new.load)
            old, self.store = self.store, new
            old.close()

    async def aclose(self) -> None:
        for t in tuple(self._tasks):
            t.cancel()
        self.store.close()


def decode_photo(text: str) -> bytes:
    """A photo sent as base64 or a ``data:`` URL (what the tablet's offline queue keeps)."""
    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError("photo: expected base64 or a data: URL") from None


def new_key() -> str:
    return uuid.uuid4().hex


def create(runtime: Any) -> InterventionService | None:
    if not runtime.site.config.interventions.enabled:
        return None
    return InterventionService(runtime)
