"""The console's read-only JSON API (``/api/...``) and its live-update stream.

Every endpoint needs a session (401 otherwise) and answers only with what the caller's areas
allow; see ``docs/cockpit.md`` for each endpoint's parameters and answer.
"""

from __future__ import annotations

import asyncio
import math
import os
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..errors import UnknownTagError
from ..operations import ACTIONS
from . import views
from .app import ApiError, Ctx
from .hub import sse

#: points a trend answers at most, and raw values read before switching to min/max buckets
MAX_POINTS = 5000
KEEPALIVE_S = 15.0


def _float(request: Request, name: str, default: float | None = None) -> float | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        f = float(v)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name}={v!r}: expected a number") from None
    if not math.isfinite(f):
        raise ApiError(400, "bad_parameter", f"{name}={v!r}: expected a finite number")
    return f


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name}={v!r}: expected a whole number") from None
    if not lo <= n <= hi:
        raise ApiError(400, "bad_parameter", f"{name}={n}: expected {lo}..{hi}")
    return n


def routes(ctx: Ctx) -> list[BaseRoute]:
    rt = ctx.runtime

    async def me(request: Request) -> JSONResponse:
        s = ctx.session(request)
        who = s.identity
        return JSONResponse({
            "user": who.user, "role": who.role,
            "areas": sorted(who.areas) if who.areas is not None else None,
            "csrf": s.csrf, "idle_timeout": ctx.sessions.idle_timeout,
            "allowed": {a.name: ctx.operations.allowed(who, a.name) for a in ACTIONS},
            "site": rt.site.name,
            "site_areas": [{"id": a.id, "name": a.name or a.id} for a in rt.site.config.areas
                           if who.sees_area(a.id)],
            "server_time": rt.clock.time(),
        })

    async def ha(request: Request) -> JSONResponse:
        """This server's role in its redundant pair (docs/redundancy.md "Web console"), for the
        console's pages and for a load balancer's health check, so no session is needed (it
        names the pair's servers and their console URLs, nothing else): 200 on the active (or a
        single server), 503 on a standby, starting or fenced server."""
        h = rt.ha
        cfg = rt.site.config.ha
        nodes = {n: {"web": c.web} for n, c in cfg.nodes.items()} if cfg is not None else {}
        holder_web = (h.holder_info or {}).get("web") or nodes.get(h.holder or "", {}).get("web")
        return JSONResponse({"node": h.node, "role": h.role.value, "active": h.is_active(),
                             "pair": h.pair, "holder": h.holder, "holder_web": holder_web,
                             "nodes": nodes}, 200 if h.is_active() else 503)

    async def alarms(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        qp = request.query_params
        view = qp.get("view", "active")
        if view not in views.VIEWS:
            raise ApiError(400, "bad_parameter", f"view={view!r}: expected one of {', '.join(views.VIEWS)}")
        order = qp.get("order")
        if order not in (None, "asc", "desc"):
            raise ApiError(400, "bad_parameter", f"order={order!r}: expected asc or desc")
        limit = _int(request, "limit", 1000, 1, 20000)
        try:
            rows = views.filter_sort(views.alarm_rows(rt, who, view), state=qp.get("state"),
                                     area=qp.get("area"), priority=qp.get("priority"), text=qp.get("q"),
                                     sort=qp.get("sort", "priority"),
                                     desc=None if order is None else order == "desc")
        except ValueError as e:
            raise ApiError(400, "bad_parameter", str(e)) from None
        engine = views.engine_of(rt)
        out = rows[:limit]
        interventions = rt.services.get("interventions")
        if interventions is not None and engine is not None:
            # the procedure shown with each alarm (issue 20): its class's steps, done by whom, when
            works = interventions.works_index()
            for r in out:
                c = engine.by_id.get(r["alarm_id"])
                if c is not None:
                    r["procedure"] = interventions.procedures.steps(engine.view(c), works)
        return JSONResponse({"available": engine is not None, "view": view, "total": len(rows),
                             "alarms": out, "server_time": rt.clock.time()})

    async def history(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        svc = rt.services.get("alarms")
        if svc is None:
            return JSONResponse({"available": False, "detail": "this server has no alarm service",
                                 "entries": [], "total": 0})
        qp = request.query_params
        now = rt.clock.time()
        start = _float(request, "start", now - 7 * 86400)
        end = _float(request, "end", now + 1)
        offset = _int(request, "offset", 0, 0, 10_000_000)
        limit = _int(request, "limit", 100, 1, 1000)
        text = (qp.get("q") or "").lower()
        device = qp.get("device")
        event = qp.get("event")
        area = qp.get("area")
        if device:
            ctx.area_check(who, device)
        from ..alarms.journal import read_journal

        directory = getattr(svc, "directory", None)
        entries = await asyncio.to_thread(_journal, read_journal, directory, start, end)
        out = []
        for e in reversed(entries):
            a = str(e.get("area", ""))
            if not who.sees_area(a) or (area and a != area):
                continue
            aid = str(e.get("alarm_id", ""))
            if device and not (aid == device or aid.startswith(device + "/")):
                continue
            if event and e.get("event") != event:
                continue
            if text and text not in aid.lower() and text not in str(e.get("message", "")).lower() \
                    and text not in str(e.get("comment") or "").lower() and text not in str(e.get("user") or "").lower():
                continue
            out.append(e)
        page = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in e.items()}
                for e in out[offset:offset + limit]]
        return JSONResponse({"available": True, "total": len(out), "offset": offset, "limit": limit,
                             "start": start, "end": end, "entries": page})

    async def devices(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        qp = request.query_params
        rows = views.visible_devices(rt, who, kind=qp.get("kind"), area=qp.get("area"), text=qp.get("q"))
        limit = _int(request, "limit", 500, 1, 100_000)
        offset = _int(request, "offset", 0, 0, 10_000_000)
        return JSONResponse({"total": len(rows), "devices": rows[offset:offset + limit]})

    async def device(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        path = request.path_params["path"].strip("/")
        ctx.area_check(who, path)
        db = rt.tagdb
        try:
            tags = db.device_tags(path)
        except (KeyError, UnknownTagError):
            raise ApiError(404, "not_found", f"no such device: {path}") from None
        out = views.device_summary(rt, path)
        out["tags"] = [views.tag_row(db, i) for i in tags]
        out["alarms"] = views.device_alarms(rt, path)
        out["children"] = [d.path for d in _children(rt, path)]
        out["server_time"] = rt.clock.time()
        return JSONResponse(out)

    async def trend(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        tag = request.query_params.get("tag")
        if not tag:
            raise ApiError(400, "bad_parameter", "tag=: the tag path is required")
        ctx.area_check(who, tag)
        db = rt.tagdb
        i = db.find(tag)
        if i is None:
            raise ApiError(404, "not_found", f"no such tag: {tag}")
        now = rt.clock.time()
        end = _float(request, "end", now)
        start = _float(request, "start", end - 86400)
        points = _int(request, "points", 600, 10, MAX_POINTS)
        if start >= end:
            raise ApiError(400, "bad_parameter", f"start={start} must be before end={end}")
        historian = rt.services.get("historian")
        if historian is None or not hasattr(historian, "read_raw"):
            return JSONResponse({"available": False, "tag": tag, "detail": "this server has no historian"})
        t, v, q = await historian.read_raw(i, start, end, points + 1)
        base = {"available": True, "tag": tag, "start": start, "end": end, "unit": db.point(i).unit}
        if len(t) <= points:
            return JSONResponse({**base, "mode": "raw", "t": [float(x) for x in t],
                                 "v": [_f(x) for x in v], "q": [int(x) for x in q]})
        interval = (end - start) / points
        t0, vmin, qmin = await historian.read_processed(i, start, end, interval, "min")
        _, vmax, _ = await historian.read_processed(i, start, end, interval, "max")
        return JSONResponse({**base, "mode": "minmax", "interval": interval,
                             "t": [float(x) for x in t0], "min": [_f(x) for x in vmin],
                             "max": [_f(x) for x in vmax], "q": [int(x) for x in qmin]})

    async def schedules(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        return JSONResponse(_schedules(rt, who))

    async def energy(request: Request) -> JSONResponse:
        """The 65 % savings KPI of a year (``year``, default the server clock's) by month and area,
        from the historian service's ``energy_kpi`` (the computation of ``scada report energy``);
        ``available: false`` with the reason when the server has no historian or no data."""
        who = ctx.require(request, "read")
        tz = ZoneInfo(rt.site.config.site.timezone)
        today = datetime.fromtimestamp(rt.clock.time(), tz).date()
        year = _int(request, "year", today.year, 2000, 2100)
        area = request.query_params.get("area") or None
        areas = {a.id for a in rt.site.config.areas}
        if area is not None and area not in areas:
            raise ApiError(404, "not_found", f"no such area: {area}")
        if who.areas is not None:  # a restricted account sees its own areas' figures only
            if area is None:
                area = sorted(who.areas)[0]
            elif area not in who.areas:
                raise ApiError(404, "not_found", f"no such area: {area}")
        d0 = date(year, 1, 1)
        d1 = min(date(year, 12, 31), today - timedelta(days=1))  # whole days only: not today's night
        base = {"year": year, "area": area or "all", "target_pct": 65.0,
                "areas_allowed": sorted(areas if who.areas is None else set(who.areas) & areas)}
        historian = rt.services.get("historian")
        fn = getattr(historian, "energy_kpi", None)
        if fn is None:
            return JSONResponse({**base, "available": False,
                                 "detail": "the server runs no historian service: the energy KPI is computed "
                                           "from its counter readings (`scada report energy`)"})
        if d1 < d0:
            return JSONResponse({**base, "available": False, "detail": f"no whole day of {year} has passed yet"})
        return JSONResponse({**base, **(await fn(d0, d1, area))})

    system_paths: list[str] = []

    async def junctions(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        limit = _int(request, "limit", 500, 1, 10_000)
        offset = _int(request, "offset", 0, 0, 10_000_000)
        rows = views.visible_devices(rt, who, kind="junction", area=request.query_params.get("area"))
        page = [views.junction_row(rt, d["path"]) for d in rows[offset:offset + limit]]
        return JSONResponse({"total": len(rows), "junctions": page, "server_time": rt.clock.time()})

    async def system(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        db = rt.tagdb
        if not system_paths:  # server health devices are registered before the server starts
            system_paths.extend(p for _d, p in db.devices() if p.startswith("_system/"))
        groups: dict[str, dict[str, Any]] = {}
        for path in system_paths:
            if not who.sees(path):
                continue
            groups[path.removeprefix("_system/")] = {
                db.point(i).name: views.tag_row(db, i)["value"] for i in db.device_tags(path)}
        engine = views.engine_of(rt)
        web = rt.services.get("web")
        return JSONResponse({
            "visible": who.areas is None,
            "detail": "" if who.areas is None else "server health is shown to unrestricted users only",
            "drivers": {k: v for k, v in groups.items() if k in rt.drivers} if who.areas is None else {},
            "historian": groups.get("historian", {}),
            "server": groups.get("server", {}),
            "web": groups.get("web", {}),
            "alarms": engine.counts() if engine is not None and who.areas is None else {},
            "other": {k: v for k, v in groups.items()
                      if k not in rt.drivers and k not in ("historian", "server", "web")},
            "services": sorted(rt.services), "web_counters": dict(web.counters) if web and who.areas is None else {},
        })

    async def stream(request: Request) -> StreamingResponse:
        s = ctx.session(request)
        who = s.identity
        if not ctx.operations.allowed(who, "read"):
            raise ApiError(403, "forbidden", "this account may not read")
        watch = request.query_params.get("watch")
        indices: list[int] = []
        if watch:
            ctx.area_check(who, watch)
            try:
                indices = list(rt.tagdb.device_tags(watch.strip("/")))
            except (KeyError, UnknownTagError):
                raise ApiError(404, "not_found", f"no such device: {watch}") from None
        client = ctx.hub.connect(who)
        if client is None:
            raise ApiError(503, "busy", f"{ctx.hub.max_clients} live-update clients already "
                                        "connected (web.max_stream_clients)")
        ctx.hub.watch(client, indices)
        s.streams.add(client)

        async def events():
            try:
                yield sse("hello", {"user": who.user, "server_time": rt.clock.time()})
                while True:
                    try:
                        item = await client.next(KEEPALIVE_S)
                    except EOFError as e:
                        yield sse("bye", {"reason": str(e)})
                        return
                    if item is None:
                        # keep-alive; end the stream when the session is gone or idle too long
                        if ctx.sessions.get(s.token, touch=False)[0] is None:
                            yield sse("bye", {"reason": "session closed"})
                            return
                        yield ": keep-alive\n\n"
                        continue
                    yield item
            finally:
                client.close()
                s.streams.discard(client)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return [
        Route("/api/me", me),
        Route("/api/ha", ha),
        Route("/api/alarms", alarms),
        Route("/api/alarms/history", history),
        Route("/api/devices", devices),
        Route("/api/devices/{path:path}", device),
        Route("/api/trend", trend),
        Route("/api/junctions", junctions),
        Route("/api/schedules", schedules),
        Route("/api/energy", energy),
        Route("/api/system", system),
        Route("/api/stream", stream),
    ]


def _journal(read: Any, directory: str | None, start: float, end: float) -> list[dict[str, Any]]:
    return read(directory, start, end) if directory and os.path.isdir(directory) else []


def _f(x: Any) -> float | None:
    f = float(x)
    return f if math.isfinite(f) else None


def _children(rt: Any, path: str) -> list[Any]:
    for d in rt.site.devices:
        if d.path == path:
            return list(d.children)
    return []


def _schedules(rt: Any, who: Any) -> dict[str, Any]:
    """Tonight's dimming steps per area (the level most of the area's luminaires get at each
    step) and the active overrides, from the schedule service."""
    import numpy as np

    sched = rt.services.get("schedules")
    if sched is None:
        return {"available": False, "detail": "this server runs no schedules", "areas": [], "overrides": []}
    now = rt.clock.time()
    plan, row = sched.plan_for(now)
    times = [float(t) for t in plan.step_times(row)][:48]
    areas = np.asarray(sched.fleet.areas, dtype=object)
    out_areas = []
    for a in sorted(set(sched.fleet.areas)):
        if not who.sees_area(a):
            continue
        m = areas == a
        steps = []
        last = None
        for t in times:
            lv = plan.levels(t + 0.001, row)[m]
            lv = lv[~np.isnan(lv)]
            level = float(np.median(lv)) if lv.size else None
            if level != last:
                steps.append({"at": t, "level": level})
                last = level
        out_areas.append({"area": a, "luminaires": int(m.sum()), "steps": steps})
    sched.store.reload_if_changed()
    overrides = []
    for o in sched.store.active(now):
        scope = list(o.areas or ()) + [d.split("/", 1)[0] for d in o.devices or ()]
        if who.areas is not None and (not scope or not all(who.sees_area(a) for a in scope)):
            continue
        overrides.append({"id": o.id, "level": o.level, "start": o.start, "expires": o.expires,
                          "reason": o.reason, "user": o.user, "scope": o.scope_text(),
                          "areas": o.areas, "devices": o.devices, "groups": o.groups, "source": o.source})
    return {"available": True, "server_time": now, "areas": out_areas, "overrides": overrides,
            "site_areas": [a.id for a in rt.site.config.areas if who.sees_area(a.id)]}
