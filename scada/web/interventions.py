"""Work orders, visits, procedures and the field tablet on the web console (issue 20).

JSON API (every change through the operator API: role matrix, areas, audit):

* ``GET /api/wo`` (``state``, ``area``, ``crew``, ``limit``), ``GET /api/wo/{id}`` (with its
  journal records), ``POST /api/wo`` (create), ``POST /api/wo/{id}/transition``,
  ``POST /api/wo/{id}/assign`` (crew and planned day), ``POST /api/wo/{id}/record`` (note, part,
  check, photo).
* ``GET /api/visits`` (grouped by site and trade, with the proposed crew and whether its
  position is the one its tablet reported), ``GET /api/crews`` (shift, busy, position used).
* ``GET /api/procedures`` (the active alarms' checklists), ``GET /api/procedures/{alarm_id}``,
  ``POST /api/procedures/step``.
* ``GET /api/tablet`` (the agent's visits of the day: planned today, overdue first),
  ``POST /api/tablet/action`` (arrived, done, cannot complete, check (a checklist step); the
  client's idempotency ``key`` makes replays harmless), ``POST /api/tablet/position`` (the
  crew's last known position, for dispatch and the console's map).

Pages: ``/workorders``, ``/workorders/{id}``, ``/visits``, ``/procedures`` in the console
layout; ``/tablet`` (mobile, installable: ``/tablet.webmanifest`` and the service worker
``/tablet-sw.js``). Changes go live to the console through the hub (``workorder``,
``procedure`` and ``crew`` events).
"""

from __future__ import annotations

import asyncio
import html
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .app import ApiError, Ctx, outcome_response
from .pages import HEADERS, page, static_dir, template

_KEY_MAX = 100


def _s(d: dict[str, Any], k: str, *, required: bool = False, max_len: int = 2000) -> str:
    v = d.get(k)
    if v is None or v == "":
        if required:
            raise ApiError(400, "bad_parameter", f"{k}: required")
        return ""
    if not isinstance(v, str) or len(v) > max_len:
        raise ApiError(400, "bad_parameter", f"{k}: expected a string of at most {max_len} characters")
    return v


def _key(d: dict[str, Any]) -> str | None:
    return _s(d, "key", max_len=_KEY_MAX) or None


def _int(d: dict[str, Any], k: str, default: int) -> int:
    v = d.get(k, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, "bad_parameter", f"{k}: expected a whole number")
    return v


def _num(d: dict[str, Any], k: str, *, required: bool = False) -> float | None:
    v = d.get(k)
    if v is None:
        if required:
            raise ApiError(400, "bad_parameter", f"{k}: required")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ApiError(400, "bad_parameter", f"{k}: expected a number")
    return float(v)


def routes(ctx: Ctx) -> list[BaseRoute]:
    rt = ctx.runtime
    ops = ctx.operations

    def svc() -> Any:
        s = rt.services.get("interventions")
        if s is None:
            raise ApiError(404, "not_available", "this server has no interventions service")
        return s

    s0 = rt.services.get("interventions")
    if s0 is not None:
        s0.listeners.append(lambda kind, data, area: ctx.hub.publish(kind, data, area))

    def order_or_404(who: Any, order_id: str) -> Any:
        wo = svc().store.orders.get(order_id)
        if wo is None or not who.sees_area(wo.area):
            raise ApiError(404, "not_found", f"no work order {order_id}")
        return wo

    async def body(request: Request) -> tuple[Any, dict[str, Any]]:
        ctx.check_csrf(request)
        data = await ctx.json_body(request)
        return ctx.require(request), data

    # ------------------------------------------------------------------ work orders
    def absent(**empty: Any) -> JSONResponse | None:
        """The list pages' answer on a server without the service (no error in the console)."""
        if rt.services.get("interventions") is not None:
            return None
        return JSONResponse({"available": False, "total": 0, **empty, "detail": "this server has no interventions service"})

    async def wo_list(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        if (a := absent(orders=[])) is not None:
            return a
        qp = request.query_params
        rows = [wo for wo in svc().store.orders.values() if who.sees_area(wo.area)]
        if qp.get("state") == "open":
            rows = [w for w in rows if w.open]
        elif qp.get("state"):
            rows = [w for w in rows if w.state == qp["state"]]
        if qp.get("area"):
            rows = [w for w in rows if w.area == qp["area"]]
        if qp.get("crew"):
            rows = [w for w in rows if w.crew == qp["crew"]]
        if qp.get("device"):  # the faceplate's orders: on the device or on one of its children
            d = qp["device"]
            rows = [w for w in rows if any(x == d or x.startswith(d + "/") for x in w.devices)]
        rows.sort(key=lambda w: (w.priority, w.created))
        try:
            limit = max(1, min(20000, int(qp.get("limit", "1000"))))
        except ValueError:
            raise ApiError(400, "bad_parameter", "limit: expected a whole number") from None
        return JSONResponse({"total": len(rows), "orders": [w.summary() for w in rows[:limit]],
                             "server_time": rt.clock.time()})

    async def wo_show(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        wo = order_or_404(who, request.path_params["id"])
        recs = await asyncio.to_thread(svc().store.journal, wo.id)
        return JSONResponse(wo.as_dict() | {"journal": recs, "close_blocked_by": svc().check_close(wo),
                                            "today": svc().today()})

    async def wo_create(request: Request) -> Response:
        who, d = await body(request)
        devices = d.get("devices") or ([d["device"]] if isinstance(d.get("device"), str) else None)
        if not isinstance(devices, list) or not devices or not all(isinstance(x, str) for x in devices):
            raise ApiError(400, "bad_parameter", "devices: expected a non-empty list of device paths")
        for dev in devices:
            ctx.area_check(who, dev)
        out = await ops.wo_create(who, devices=devices, priority=_int(d, "priority", 3),
                                  trade=_s(d, "trade", max_len=100) or None, origin=_s(d, "origin", max_len=20) or "manual",
                                  fault=_s(d, "fault", max_len=100), title=_s(d, "title", max_len=300),
                                  alarm_id=_s(d, "alarm_id", max_len=500) or None, key=_key(d))
        return outcome_response(out, 201)

    async def wo_transition(request: Request) -> Response:
        who, d = await body(request)
        oid = request.path_params["id"]
        order_or_404(who, oid)
        ov = d.get("override", False)
        if not isinstance(ov, bool):
            raise ApiError(400, "bad_parameter", "override: expected true or false")
        return outcome_response(await ops.wo_transition(
            who, oid, _s(d, "to", required=True, max_len=30), comment=_s(d, "comment"),
            resolution=_s(d, "resolution", max_len=100) or None, override=ov, key=_key(d),
            planned=_s(d, "planned", max_len=10) or None))

    async def wo_assign(request: Request) -> Response:
        who, d = await body(request)
        oid = request.path_params["id"]
        order_or_404(who, oid)
        return outcome_response(await ops.wo_assign(who, oid, crew=_s(d, "crew", max_len=100) or None,
                                                    assignee=_s(d, "assignee", max_len=200) or None, key=_key(d),
                                                    planned=_s(d, "planned", max_len=10) or None))

    async def wo_record(request: Request) -> Response:
        who, d = await body(request)
        oid = request.path_params["id"]
        order_or_404(who, oid)
        op = _s(d, "op", required=True, max_len=20)
        fields: dict[str, Any]
        if op == "note":
            fields = {"text": _s(d, "text", required=True)}
        elif op == "part":
            fields = {"ref": _s(d, "ref", required=True, max_len=100), "qty": _int(d, "qty", 1)}
        elif op == "check":
            done = d.get("done", True)
            if not isinstance(done, bool):
                raise ApiError(400, "bad_parameter", "done: expected true or false")
            fields = {"step": _s(d, "step", required=True, max_len=50), "done": done}
        elif op == "photo":
            from ..interventions.service import decode_photo

            try:
                fields = {"data": decode_photo(_s(d, "photo", required=True, max_len=ctx.max_body))}
            except ValueError as e:
                raise ApiError(400, "bad_parameter", str(e)) from None
        else:
            raise ApiError(400, "bad_parameter", f"op={op!r}: expected note, part, check or photo")
        return outcome_response(await ops.wo_record(who, oid, op, key=_key(d), **fields))

    async def photo(request: Request) -> Response:
        who = ctx.require(request, "read")
        name = request.path_params["name"]
        wo = order_or_404(who, name.rsplit("-", 1)[0])
        if not any(p["file"] == name for p in wo.photos):  # only files the journal names
            raise ApiError(404, "not_found", "no such photo")
        return FileResponse(os.path.join(svc().store.photos_dir, name), headers={"Cache-Control": "private, max-age=3600"})

    # ------------------------------------------------------------------ visits, crews
    async def visits(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        if (a := absent(visits=[])) is not None:
            return a
        s = svc()
        crew = request.query_params.get("crew") or None
        day = request.query_params.get("day") or None
        if day is not None:
            from ..interventions.model import check_day

            try:
                day = check_day(day)
            except ValueError as e:
                raise ApiError(400, "bad_parameter", f"day: {e}") from None
            if day < s.today():
                raise ApiError(400, "bad_parameter", f"day {day}: in the past (today is {s.today()})")
        vs = s.visits(crew=crew, area_ok=who.sees_area, day=day)
        rows = {c["id"]: c for c in s.crew_rows(rt.clock.time(), day)}

        def where(v: Any) -> dict[str, Any]:
            c = rows.get(v.crew) if v.crew else None
            return {"proposed_position": c["position_source"], "proposed_note": c["position_note"]} if c else {}

        return JSONResponse({"total": len(vs), "visits": [v.as_dict(s.cfg.rank) | where(v) for v in vs],
                             "trades": s.cfg.trades, "today": s.today(), "server_time": rt.clock.time()})

    async def crews(request: Request) -> JSONResponse:
        ctx.require(request, "read")
        if (a := absent(crews=[])) is not None:
            return a
        return JSONResponse({"crews": svc().crew_rows(rt.clock.time()), "server_time": rt.clock.time()})

    # ------------------------------------------------------------------ procedures
    def alarm_view(who: Any, alarm_id: str) -> Any:
        eng = ops.alarms
        c = eng.by_id.get(alarm_id) if eng is not None else None
        if c is None or not who.sees(alarm_id):
            raise ApiError(404, "not_found", f"no alarm {alarm_id}")
        return eng.view(c)

    async def procedures(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        if (a := absent(procedures=[])) is not None:
            return a
        eng = ops.alarms
        s = svc()
        works = s.works_index()
        rows = [s.procedures.steps(v, works) for v in (eng.active(include_hidden=True) if eng is not None else [])
                if who.sees(v.alarm_id)]
        return JSONResponse({"total": len(rows), "procedures": rows})

    async def procedure(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        return JSONResponse(svc().procedures.steps(alarm_view(who, request.path_params["alarm_id"])))

    async def procedure_step(request: Request) -> Response:
        who, d = await body(request)
        aid = _s(d, "alarm_id", required=True, max_len=500)
        alarm_view(who, aid)
        done = d.get("done", True)
        if not isinstance(done, bool):
            raise ApiError(400, "bad_parameter", "done: expected true or false")
        return outcome_response(await ops.procedure_step(who, aid, _s(d, "step", required=True, max_len=50),
                                                         done=done, key=_key(d)))

    # ------------------------------------------------------------------ tablet
    async def tablet_data(request: Request) -> JSONResponse:
        who = ctx.require(request, "read")
        s = svc()
        mine = s.crews_of(who.user)
        crew = request.query_params.get("crew")
        if crew and who.role == "agent" and crew not in mine:
            raise ApiError(403, "forbidden", f"{who.name} is not in crew {crew}")
        chosen = [crew] if crew else mine
        day = s.today()
        out = []
        for c in chosen:
            for v, overdue in s.day_visits(c, area_ok=who.sees_area, day=day):
                out.append(v.as_dict(s.cfg.rank) | {"crew": c, "overdue": overdue,
                                                     "planned": min(t.planned for t in v.tasks)})
        return JSONResponse({"user": who.user, "crews": chosen, "day": day, "visits": out,
                             "server_time": rt.clock.time()})

    async def tablet_position(request: Request) -> Response:
        """Where the tablet is (browser geolocation, throttled by the page): the crew's last
        known position for dispatch and the console's map."""
        who, d = await body(request)
        return outcome_response(await ops.crew_position(
            who, lat=_num(d, "lat", required=True), lon=_num(d, "lon", required=True),  # type: ignore[arg-type]
            accuracy=_num(d, "accuracy"), crew=_s(d, "crew", max_len=100) or None, key=_key(d)))

    async def tablet_action(request: Request) -> Response:
        who, d = await body(request)
        oid = _s(d, "order", required=True, max_len=50)
        order_or_404(who, oid)
        photo_b = None
        if d.get("photo"):
            from ..interventions.service import decode_photo

            try:
                photo_b = decode_photo(_s(d, "photo", max_len=ctx.max_body))
            except ValueError as e:
                raise ApiError(400, "bad_parameter", str(e)) from None
        what = _s(d, "what", required=True, max_len=30)
        if what == "check":  # a checklist step ticked on the tablet
            done = d.get("done", True)
            if not isinstance(done, bool):
                raise ApiError(400, "bad_parameter", "done: expected true or false")
            return outcome_response(await ops.wo_record(who, oid, "check", key=_key(d),
                                                        step=_s(d, "step", required=True, max_len=50), done=done))
        return outcome_response(await ops.wo_field(who, oid, what, note=_s(d, "note"), photo=photo_b, key=_key(d)))

    # ------------------------------------------------------------------ pages
    def simple(name: str, title: str, script: str):
        async def handler(request: Request) -> Response:
            ctx.require(request, "read")
            return page(ctx, request, title=title, body=template(f"{name}.html").template, script=script,
                        active="/workorders")
        return handler

    async def wo_page(request: Request) -> Response:
        who = ctx.require(request, "read")
        wo = order_or_404(who, request.path_params["id"])
        return page(ctx, request, title=f"Work order {wo.id}", body=template("workorder.html").template,
                    script="workorder.js", active="/workorders", data={"order": wo.id})

    async def tablet_page(request: Request) -> Response:
        s = ctx.session(request)
        text = template("tablet.html").substitute(site=html.escape(rt.site.name), csrf=html.escape(s.csrf),
                                                  user=html.escape(s.identity.name))
        return HTMLResponse(text, headers=HEADERS)

    async def manifest(request: Request) -> Response:
        return FileResponse(os.path.join(static_dir(), "tablet.webmanifest"), media_type="application/manifest+json")

    async def sw(request: Request) -> Response:
        return FileResponse(os.path.join(static_dir(), "tablet-sw.js"), media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})

    post = ["POST"]
    return [
        Route("/api/wo", wo_list),
        Route("/api/wo", wo_create, methods=post),
        Route("/api/wo/photos/{name}", photo),
        Route("/api/wo/{id}", wo_show),
        Route("/api/wo/{id}/transition", wo_transition, methods=post),
        Route("/api/wo/{id}/assign", wo_assign, methods=post),
        Route("/api/wo/{id}/record", wo_record, methods=post),
        Route("/api/visits", visits),
        Route("/api/crews", crews),
        Route("/api/procedures", procedures),
        Route("/api/procedures/step", procedure_step, methods=post),
        Route("/api/procedures/{alarm_id:path}", procedure),
        Route("/api/tablet", tablet_data),
        Route("/api/tablet/action", tablet_action, methods=post),
        Route("/api/tablet/position", tablet_position, methods=post),
        Route("/workorders", simple("workorders", "Work orders", "workorders.js")),
        Route("/workorders/{id}", wo_page),
        Route("/visits", simple("visits", "Visits of the day", "visits.js")),
        Route("/procedures", simple("procedures", "Procedures", "procedures.js")),
        Route("/tablet", tablet_page),
        Route("/tablet.webmanifest", manifest),
        Route("/tablet-sw.js", sw),
    ]
