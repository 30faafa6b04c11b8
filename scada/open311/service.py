"""The citizen-report service (``runtime.services["open311"]``): jurisdictions, the devices a
report may be about, "already known?", the store and the updates the citizens see.

A report (validated by :mod:`.protocol`) is placed in its jurisdiction (an area's municipality;
its extent is the configured bounding box, else its devices' extent plus a margin), then:

1. a device of the service's kinds within ``attach_radius_m`` that has an **open work order**
   of the service's fault (or alarm) -> the report attaches to that order;
2. else such a device with an **active alarm** of the service -> the report attaches to the
   alarm (already detected by the supervision); when an order is opened for that alarm, the
   report follows it; when the alarm clears with no order, the report closes;
3. else the nearest device of the service's kinds within ``match_radius_m`` (or the one named
   by ``attribute[luminaire_number]``) -> a new work order, ``origin: citizen``;
4. else no equipment of ours is there: the report is kept, open, and says so.

Orders are created and attached **through the operator API** (:meth:`Operations.citizen_report`)
with the client application's identity ``open311:<client>`` (service role ``citizen-app``), so
the role matrix, the areas and the audit log apply as for every front end. The interventions
service's ``listeners`` tell this service about every order change; each change of an order's
state becomes one update of its requests (the FixMyStreet ``servicerequestupdates`` feed), and
closing (or cancelling) the order closes them all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from .. import quality as Q
from ..runtime import Service
from ..tags import Batch, PointDef
from .clients import Clients
from .protocol import PERSONAL, Open311Error, public_request, validate_post
from .services import catalogue
from .store import Store

log = logging.getLogger("scada.open311")

HEALTH = (
    PointDef("requests", "int", "", "citizen reports stored"),
    PointDef("received", "int", "", "reports accepted since start"),
    PointDef("orders_created", "int", "", "work orders created from reports since start"),
    PointDef("attached", "int", "", "reports attached to an open order or an active alarm since start"),
    PointDef("refused", "int", "", "Open311 requests answered with a 4xx since start"),
    PointDef("malformed", "int", "", "Open311 requests refused as malformed (400, 413, 415) since start"),
    PointDef("unauthorized", "int", "", "POSTs without a valid api_key since start"),
    PointDef("rate_limited", "int", "", "Open311 requests refused by a rate limit (429) since start"),
    PointDef("purged", "int", "", "reports whose personal data was purged since start"),
    PointDef("errors", "int", "", "Open311 requests that failed inside the server (500) since start"),
)

#: what a citizen is told for each state of the work order behind their report
STATE_NOTES = {
    "draft": "A work order was opened; the repair is being planned.",
    "approved": "A work order was opened; the repair is being planned.",
    "scheduled": "A crew is scheduled to repair it.",
    "in_progress": "A crew is on site.",
    "on_hold": "The repair is on hold (parts or access); it will resume.",
    "completed": "The repair is done; it is being checked.",
    "closed": "Repaired.",
    "cancelled": "Closed without a repair: the work order was cancelled.",
}
CLOSED_STATES = frozenset({"closed", "cancelled"})
DEG_M = 111_320.0  # metres per degree of latitude


class Open311Service(Service):
    name = "open311"

    def __init__(self, runtime: Any):
        self.runtime = runtime
        site = runtime.site
        self.cfg = site.config.open311
        self.clock = runtime.clock
        self.tz = ZoneInfo(site.config.site.timezone)
        self.services = catalogue(self.cfg.services)
        self.dir = os.path.join(runtime.state_dir, "open311")
        self.store = Store(self.dir, self.cfg.snapshot_every)
        self.store.load()
        self.clients = Clients(os.path.join(self.dir, "clients.json"))
        self.counters = {p.name: 0 for p in HEALTH}
        self._health_first = runtime.tagdb.add_tags("_system/open311", HEALTH)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._index: dict[str, Any] | None = None
        self._subsets: dict[tuple[str, tuple[str, ...] | None], tuple[np.ndarray, np.ndarray]] = {}
        self.area_of_jurisdiction: dict[str, set[str]] = {}
        for a in site.config.areas:
            self.area_of_jurisdiction.setdefault(a.municipality or a.name or a.id, set()).add(a.id)
        self.jurisdictions: dict[str, tuple[float, float, float, float] | None] = {}
        self._build_index()
        wo = runtime.services.get("interventions")
        if wo is not None:
            wo.listeners.append(self._on_change)
        eng = getattr(runtime.services.get("alarms"), "engine", None)
        if eng is not None:
            eng.listeners.append(self._on_alarms)
        ops = getattr(runtime, "operations", None)
        if ops is not None:
            ops.position_listeners.append(lambda _positions: self._build_index())

    # ------------------------------------------------------------------ places
    def _build_index(self, _: Any = None) -> None:
        """Device positions (the device's, else its parent's) as arrays, and each
        jurisdiction's extent (configured, else its devices' extent plus the margin)."""
        devs = {d.path: d for d in self.runtime.site.all_devices()}
        paths, ids, kinds, areas, lat, lon = [], [], [], [], [], []
        for d in devs.values():
            loc = d.location or (devs[d.parent].location if d.parent and d.parent in devs else None)
            if loc is None or not d.enabled:
                continue
            paths.append(d.path)
            ids.append(d.id)
            kinds.append(d.kind)
            areas.append(d.area)
            lat.append(loc.lat)
            lon.append(loc.lon)
        area_arr = np.array(areas, dtype=object)
        kind_arr = np.array(kinds, dtype=object)
        by_id: dict[str, list[int]] = {}
        for i, (p, did) in enumerate(zip(paths, ids, strict=True)):
            by_id.setdefault(did, []).append(i)
            by_id.setdefault(p, []).append(i)
        self._subsets = {}
        self._index = {"paths": paths, "ids": ids, "kinds": kind_arr, "areas": area_arr, "by_id": by_id,
                       "lat": np.array(lat, dtype=float), "lon": np.array(lon, dtype=float),
                       # masks computed once per position change, not per report (200,000 devices)
                       "in": {jid: np.isin(area_arr, list(a)) if paths else np.zeros(0, bool)
                              for jid, a in self.area_of_jurisdiction.items()},
                       "kind": {k: kind_arr == k for k in set(kinds)}}
        m = self.cfg.jurisdiction_margin_m
        for jid, area_ids in self.area_of_jurisdiction.items():
            conf = self.cfg.jurisdictions.get(jid)
            if conf is not None:
                self.jurisdictions[jid] = tuple(conf.bbox)  # type: ignore[assignment]
                continue
            sel = np.isin(self._index["areas"], list(area_ids)) if paths else np.zeros(0, bool)
            if not sel.any():
                self.jurisdictions[jid] = None
                continue
            la, lo = self._index["lat"][sel], self._index["lon"][sel]
            dlat = m / DEG_M
            dlon = m / (DEG_M * max(0.01, math.cos(math.radians(float(la.mean())))))
            self.jurisdictions[jid] = (float(la.min()) - dlat, float(lo.min()) - dlon,
                                       float(la.max()) + dlat, float(lo.max()) + dlon)
        unknown = sorted(set(self.cfg.jurisdictions) - set(self.area_of_jurisdiction))
        if unknown:
            raise ValueError(f"open311.jurisdictions: {', '.join(unknown)} is no area's municipality; "
                             f"expected one of {', '.join(self.area_of_jurisdiction)}")

    def jurisdiction(self, given: Any) -> str:
        """The jurisdiction id of a request: the one given, or the only one (400/404 otherwise)."""
        if given is None or given == "":
            if len(self.area_of_jurisdiction) == 1:
                return next(iter(self.area_of_jurisdiction))
            raise Open311Error(400, f"jurisdiction_id is required: one of {', '.join(self.area_of_jurisdiction)}")
        if not isinstance(given, str) or given not in self.area_of_jurisdiction:
            raise Open311Error(404, f"jurisdiction_id {str(given)[:60]!r} not found; expected one of "
                                    f"{', '.join(self.area_of_jurisdiction)}")
        return given

    def _inside(self, jid: str, lat: float, lon: float) -> None:
        box = self.jurisdictions.get(jid)
        if box is None:
            raise Open311Error(400, f"jurisdiction {jid} has no known extent (no device positions): "
                                    "reports cannot be placed")
        s, w, n, e = box
        if not (s <= lat <= n and w <= lon <= e):
            raise Open311Error(400, f"lat/long ({lat:.6f}, {lon:.6f}) is outside jurisdiction {jid} "
                                    f"[{s:.4f}, {w:.4f}, {n:.4f}, {e:.4f}]")

    def _subset(self, jid: str, kinds: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the jurisdiction's devices of ``kinds``, sorted by latitude, and their
        latitudes (cached until positions change): a report then looks at one latitude band."""
        key = (jid, kinds)
        got = self._subsets.get(key)
        if got is None:
            ix = self._index
            sel = ix["in"][jid].copy()
            if kinds is not None:
                km = np.zeros(len(ix["paths"]), bool)
                for k in kinds:
                    if k in ix["kind"]:
                        km |= ix["kind"][k]
                sel &= km
            idx = np.nonzero(sel)[0]
            idx = idx[np.argsort(ix["lat"][idx], kind="stable")]
            got = self._subsets[key] = (idx, ix["lat"][idx])
        return got

    def _near(self, jid: str, kinds: tuple[str, ...] | None, lat: float, lon: float,
              radius: float) -> list[tuple[float, str]]:
        """(distance m, device path) of the jurisdiction's devices of ``kinds`` within
        ``radius``, nearest first (ties by path): a binary search for the latitude band, then
        distances for that band only (200,000 devices: tens of microseconds, not a full scan)."""
        ix = self._index
        if ix is None or not ix["paths"]:
            return []
        idx, lats = self._subset(jid, kinds)
        dlat = math.degrees(radius / 6_371_000.0)
        lo = int(np.searchsorted(lats, lat - dlat, side="left"))
        hi = int(np.searchsorted(lats, lat + dlat, side="right"))
        band = idx[lo:hi]
        if not len(band):
            return []
        dy = np.radians(ix["lat"][band] - lat)
        dx = np.radians(ix["lon"][band] - lon) * math.cos(math.radians(lat))
        dist = 6_371_000.0 * np.hypot(dx, dy)
        ok = dist <= radius
        return sorted((float(d), ix["paths"][i]) for d, i in zip(dist[ok], band[ok], strict=True))

    def _named(self, jid: str, number: str | None, kinds: tuple[str, ...] | None, lat: float,
               lon: float) -> str | None:
        """The device a citizen named (``attribute[luminaire_number]``: its id or path), if it is
        of the service's kinds, in the jurisdiction and within ``match_radius_m`` of the report
        (a number misread far away is ignored: the position wins)."""
        if not number or self._index is None:
            return None
        ix = self._index
        areas = self.area_of_jurisdiction[jid]
        best: tuple[float, str] | None = None
        for i in ix["by_id"].get(number, ()):
            if ix["areas"][i] not in areas or (kinds is not None and ix["kinds"][i] not in kinds):
                continue
            dy = math.radians(ix["lat"][i] - lat)
            dx = math.radians(ix["lon"][i] - lon) * math.cos(math.radians(lat))
            d = 6_371_000.0 * math.hypot(dx, dy)
            if d <= self.cfg.match_radius_m and (best is None or d < best[0]):
                best = (d, ix["paths"][i])
        return best[1] if best else None

    # ------------------------------------------------------------------ "already known?"
    def _known(self, svc: Any, devices: list[str]) -> tuple[str, Any, str] | None:
        """("order", order, device) or ("alarm", alarm view, device) for the first device (in
        distance order) with an open order or an active alarm of the service's fault."""
        wos = self.runtime.services.get("interventions")
        eng = getattr(self.runtime.services.get("alarms"), "engine", None)
        for d in devices:
            if wos is not None:
                for fault in svc.alarms:
                    wo = wos.store.open_for(d, fault)
                    if wo is not None:
                        return "order", wo, d
        if eng is not None:
            for d in devices:
                for c in eng.by_device.get(d, ()):
                    if eng.name[c] not in svc.alarms:  # the name first: a full view costs ~20 us
                        continue
                    v = eng.view(c)
                    if v.active:
                        if wos is not None:
                            for wo in wos.store.orders.values():
                                if wo.open and v.alarm_id in wo.alarms:
                                    return "order", wo, d
                        return "alarm", v, d
        return None

    def _sla_due(self, priority: int, t0: float) -> float | None:
        wos = self.runtime.services.get("interventions")
        if wos is None:
            return None
        return t0 + wos.cfg.sla_for(int(priority)).repair

    # ------------------------------------------------------------------ submit
    async def submit(self, client: str, address: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        """File one POSTed report; the spec's answer ``[{service_request_id, token,
        service_notice}]``. :class:`Open311Error` for anything refused (nothing stored)."""
        from ..operations import Identity

        jid = self.jurisdiction(fields.get("jurisdiction_id"))
        rep = validate_post(fields, self.services, max_description=self.cfg.max_description,
                            max_media_url=self.cfg.max_media_url)
        svc = rep["service"]
        lat, lon = rep["lat"], rep["long"]
        self._inside(jid, lat, lon)
        named = self._named(jid, rep["attributes"].get("luminaire_number"), svc.kinds, lat, lon)
        around = self._near(jid, svc.kinds, lat, lon, max(self.cfg.attach_radius_m, self.cfg.match_radius_m))
        close = [p for d, p in around if d <= self.cfg.attach_radius_m]
        if named is not None:
            close = [named] + [p for p in close if p != named]
        who = Identity(f"open311:{client}", "citizen-app", frozenset(self.area_of_jurisdiction[jid]),
                       via=f"open311 {address}")
        ops = self.runtime.operations
        now = self.clock.time()
        async with self.store.lock:
            known = self._known(svc, close)  # under the lock: reports of one fault are filed in turn
            rid = self.store.new_id()
            order = alarm = device = None
            order_state = None
            expected: float | None = None
            created = False
            if known is not None and known[0] == "order":
                wo, device = known[1], known[2]
                out = await ops.citizen_report(who, request_id=rid, device=device, fault=wo.fault or svc.fault,
                                               title="", service=svc.code, order_id=wo.id)
                if not out.ok:
                    raise Open311Error(_status_of(out), f"the report could not be filed: {out.message}")
                order, order_state, expected = wo.id, wo.state, wo.due_repair
                notice = (f"Already known: this fault is being handled (work order {wo.id}, "
                          f"{STATE_NOTES.get(wo.state, wo.state)[:-1].lower()}).")
            elif known is not None:
                v, device = known[1], known[2]
                alarm = v.alarm_id
                expected = self._sla_due(v.priority, v.ts or now)
                notice = ("Already known: the supervision system detected this fault "
                          f"(alarm {v.alarm_id}); the repair is being organised.")
                out = await ops.citizen_report(who, request_id=rid, device=device, fault=v.name, title="",
                                               service=svc.code, alarm_id=v.alarm_id)
                if not out.ok:
                    raise Open311Error(_status_of(out), f"the report could not be filed: {out.message}")
            else:
                near = [p for d, p in around if d <= self.cfg.match_radius_m]
                device = named or (near[0] if near else None)
                if device is None:
                    notice = ("No lighting or traffic equipment of ours is near this place: the report was "
                              "kept for the call centre.")
                else:
                    title = f"Citizen report: {svc.name.lower()} ({device})"
                    out = await ops.citizen_report(who, request_id=rid, device=device, fault=svc.fault,
                                                   title=title, priority=svc.priority, trade=svc.trade,
                                                   service=svc.code)
                    if not out.ok:
                        raise Open311Error(_status_of(out), f"the report could not be filed: {out.message}")
                    o = out.data["order"]
                    order, order_state, expected = o["id"], o["state"], o["due_repair"]
                    created = bool(out.data.get("created"))
                    notice = (f"Thank you: work order {o['id']} was opened." if created else
                              f"Already known: this fault is being handled (work order {o['id']}).")
            token = os.urandom(12).hex()
            r = {"id": rid, "token": token, "client": client, "jurisdiction": jid, "service_code": svc.code,
                 "service_name": svc.name, "lat": lat, "long": lon, "address_string": rep["address_string"],
                 "address_id": rep["address_id"], "description": rep["description"], "media_url": rep["media_url"],
                 "attributes": rep["attributes"], "requested": now, "updated": now, "status": "open",
                 "status_notes": STATE_NOTES.get(order_state or "", None) if order else None,
                 "service_notice": notice, "expected": expected, "order": order, "order_state": order_state,
                 "alarm": alarm, "device": device, "agency": self.cfg.agency,
                 "personal": {k: rep[k] for k in PERSONAL if rep.get(k)} or None}
            upd = self.store.update_row(rid, now, "open", notice)
            await self.store.commit([{"op": "request", "ts": now, "request": r, "update": upd}])
        self.counters["received"] += 1
        if created:
            self.counters["orders_created"] += 1
        elif order or alarm:
            self.counters["attached"] += 1
        return [{"service_request_id": rid, "token": token, "service_notice": notice}]

    # ------------------------------------------------------------------ order changes
    def _on_change(self, kind: str, data: dict[str, Any], area: str | None) -> None:
        if kind != "workorder" or "id" not in data:
            return
        oid = data["id"]
        linked = oid in self.store.by_order
        via_alarm = any(a in self.store.by_alarm for a in data.get("alarms") or ())
        if not linked and not via_alarm and not self.store.lock.locked():
            return  # (while a report is being filed, its order may change before it is stored)
        self._spawn(self._follow(dict(data)))

    def _on_alarms(self, events: list[Any]) -> None:
        """An alarm that reports were attached to (no order yet) returned to normal."""
        for e in events:
            if e.event == "clear" and e.alarm_id in self.store.by_alarm:
                self._spawn(self._alarm_cleared(e.alarm_id))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)

    async def _alarm_cleared(self, alarm_id: str) -> None:
        notes = "The fault cleared: the equipment reports normal operation again."
        async with self.store.lock:
            now = self.clock.time()
            recs = [{"op": "change", "id": rid, "ts": now,
                     "fields": {"status": "closed", "status_notes": notes, "alarm_state": "cleared"},
                     "update": self.store.update_row(rid, now, "closed", notes)}
                    for rid in self.store.by_alarm.get(alarm_id, ())
                    if self.store.requests[rid]["status"] == "open" and not self.store.requests[rid].get("order")]
            if recs:
                await self.store.commit(recs)

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("open311: following a work order failed: %s", t.exception())

    async def _follow(self, wo: dict[str, Any]) -> None:
        """One change of order ``wo`` (its summary): an update per request whose visible state
        it changes, and a request attached to an alarm of the order joins the order."""
        oid, state = wo["id"], wo["state"]
        async with self.store.lock:
            ids = list(self.store.by_order.get(oid, ()))
            for a in wo.get("alarms") or ():
                ids += [i for i in self.store.by_alarm.get(a, ()) if not self.store.requests[i].get("order")]
            now = self.clock.time()
            recs = []
            for rid in dict.fromkeys(ids):
                r = self.store.requests[rid]
                if r["status"] == "closed" or (r.get("order") == oid and r.get("order_state") == state):
                    continue
                closed = state in CLOSED_STATES
                notes = STATE_NOTES.get(state, state)
                if state == "closed" and wo.get("resolution"):
                    notes = f"Repaired: {wo['resolution']}."
                fields = {"order": oid, "order_state": state, "status": "closed" if closed else "open",
                          "status_notes": notes, "expected": wo.get("due_repair")}
                recs.append({"op": "change", "id": rid, "ts": now, "fields": fields,
                             "update": self.store.update_row(rid, now, fields["status"], notes)})
            if recs:
                await self.store.commit(recs)

    async def idle(self) -> None:
        """Wait until the order changes heard so far are applied (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*tuple(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ queries
    def get_requests(self, *, jid: str | None, ids: list[str] | None = None, codes: list[str] | None = None,
                     statuses: list[str] | None = None, start: float | None = None,
                     end: float | None = None) -> list[dict[str, Any]]:
        """GET requests: the spec's filters; without ids or dates the last 90 days; newest first,
        at most ``max_results``; public fields only."""
        if ids is not None:
            rows = [self.store.requests[i] for i in ids if i in self.store.requests]
        else:
            if start is None and end is None:
                start = self.clock.time() - 90 * 86400
            rows = list(self.store.requests.values())
        out = []
        for r in rows:
            if jid is not None and r["jurisdiction"] != jid:
                continue
            if codes is not None and r["service_code"] not in codes:
                continue
            if statuses is not None and r["status"] not in statuses:
                continue
            if start is not None and r["requested"] < start:
                continue
            if end is not None and r["requested"] > end:
                continue
            out.append(r)
        out.sort(key=lambda r: (-r["requested"], -int(r["id"])))
        return [public_request(r, self.tz) for r in out[: self.cfg.max_results]]

    def get_updates(self, *, jid: str | None, start: float | None, end: float | None) -> list[dict[str, Any]]:
        from .protocol import public_update

        out = []
        for u in self.store.updates:
            r = self.store.requests.get(u["id"])
            if r is None or (jid is not None and r["jurisdiction"] != jid):
                continue
            if (start is not None and u["ts"] < start) or (end is not None and u["ts"] > end):
                continue
            out.append(u)
        return [public_update(u, self.tz) for u in out[: self.cfg.max_results]]

    # ------------------------------------------------------------------ retention
    async def purge(self, now: float | None = None) -> int:
        """Remove the personal data of requests older than ``open311.retention``; the store
        then writes a snapshot, so the journal no longer holds it either."""
        now = self.clock.time() if now is None else now
        cutoff = now - self.cfg.retention
        async with self.store.lock:
            ids = [r["id"] for r in self.store.requests.values() if r.get("personal") and r["requested"] < cutoff]
            if ids:
                await self.store.commit([{"op": "purge", "ts": now, "ids": ids}])
        self.counters["purged"] += len(ids)
        if ids:
            log.info("open311: personal data of %d reports purged (retention %g days)", len(ids),
                     self.cfg.retention / 86400)
        return len(ids)

    async def reload(self) -> None:
        """Re-read the store and the client list (a standby server taking over: the HA
        promotion awaits this before the server serves). The files are read in a thread into a
        new store, swapped in under the old one's lock."""
        fresh = Store(self.dir, self.cfg.snapshot_every)
        await asyncio.to_thread(fresh.load)
        async with self.store.lock:
            self.store = fresh
        self.clients.refresh()

    # ------------------------------------------------------------------ lifecycle
    def publish_health(self) -> None:
        c = self.counters
        c["requests"] = len(self.store)
        vals = [float(c[p.name]) for p in HEALTH]
        self.runtime.tagdb.apply(Batch.of(range(self._health_first, self._health_first + len(vals)), vals,
                                          Q.Good, self.clock.time()))

    async def run(self) -> None:
        n = 0
        while True:
            self.publish_health()
            if n % 1800 == 0:  # at start, then about every hour
                try:
                    await self.purge()
                except OSError as e:
                    log.error("open311: purge failed: %s", e)
            n += 1
            await asyncio.sleep(2.0)

    async def aclose(self) -> None:
        for t in tuple(self._tasks):
            t.cancel()


def _status_of(out: Any) -> int:
    name = out.status_name
    return 403 if name == "BadUserAccessDenied" else 503 if name == "BadNotSupported" else 400


def create(runtime: Any) -> Open311Service | None:
    if not runtime.site.config.open311.enabled:
        return None
    return Open311Service(runtime)
