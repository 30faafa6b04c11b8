"""The console's HTML pages: one layout (nav bar, user, logout) around a page body; the data
comes from the JSON API (``/api/...``) through the page's script. Assets are served from the
package (``scada/web/static``): no CDN, no build step."""

from __future__ import annotations

import html
import string
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .app import ApiError, Ctx

#: (path, label) of the nav bar, in order
NAV = [("/alarms", "Alarms"), ("/map", "Map"), ("/alarms/history", "History"), ("/devices", "Devices"),
       ("/junctions", "Junctions"), ("/schedules", "Schedules"), ("/workorders", "Work orders"), ("/energy", "Energy"), ("/system", "System")]

#: Content-Security-Policy of every page: scripts and styles from this server only; images may
#: come from a configured tile server (the map)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: http:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


@cache
def template(name: str) -> string.Template:
    return string.Template(resources.files("scada.web").joinpath("templates").joinpath(name).read_text("utf-8"))


def static_dir() -> str:
    return str(resources.files("scada.web").joinpath("static"))


def page(ctx: Ctx, request: Request, *, title: str, body: str, script: str, active: str,
         data: dict[str, str] | None = None) -> HTMLResponse:
    s = ctx.session(request)
    who = s.identity
    nav = "".join(
        f'<a href="{p}"{" class=active" if p == active else ""}>{html.escape(label)}</a>' for p, label in NAV)
    attrs = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in (data or {}).items())
    areas = "all areas" if who.areas is None else ", ".join(sorted(who.areas))
    text = template("layout.html").substitute(
        title=html.escape(title), site=html.escape(ctx.runtime.site.name), nav=nav, body=body,
        script=html.escape(script), csrf=html.escape(s.csrf), user=html.escape(who.name),
        role=html.escape(who.role or "none"), areas=html.escape(areas), data=attrs)
    return HTMLResponse(text, headers=HEADERS)


def routes(ctx: Ctx) -> list[BaseRoute]:
    def simple(name: str, title: str, active: str, script: str):
        async def handler(request: Request) -> Response:
            return page(ctx, request, title=title, body=template(f"{name}.html").template,
                        script=script, active=active)
        return handler

    async def root(request: Request) -> Response:
        return RedirectResponse("/alarms", 303)

    async def login(request: Request) -> Response:
        from .actions import safe_next

        nxt = safe_next(request.query_params.get("next"))
        text = template("login.html").substitute(site=html.escape(ctx.runtime.site.name),
                                                 next=html.escape(nxt))
        return HTMLResponse(text, headers=HEADERS)

    async def device(request: Request) -> Response:
        path = request.path_params["path"].strip("/")
        who = ctx.require(request, "read")
        if not who.sees(path):
            raise ApiError(404, "not_found", f"no such device: {path}")
        return page(ctx, request, title=f"Device {path}", body=template("device.html").template,
                    script="device.js", active="/devices", data={"device": path})

    return [
        Route("/", root),
        Route("/login", login, methods=["GET"]),
        Route("/alarms", simple("alarms", "Alarms", "/alarms", "alarms.js")),
        Route("/alarms/history", simple("history", "Alarm history", "/alarms/history", "history.js")),
        Route("/devices", simple("devices", "Devices", "/devices", "devices.js")),
        Route("/devices/{path:path}", device),
        Route("/junctions", simple("junctions", "Junctions", "/junctions", "junctions.js")),
        Route("/schedules", simple("schedules", "Schedules", "/schedules", "schedules.js")),
        Route("/energy", simple("energy", "Energy", "/energy", "energy.js")),
        Route("/system", simple("system", "System", "/system", "system.js")),
        Route("/map", simple("map", "Map", "/map", "map.js")),
        Mount("/static", app=StaticFiles(directory=static_dir()), name="static"),
    ]


def nav_paths() -> list[str]:
    return [p for p, _ in NAV]


__all__: list[Any] = ["CSP", "NAV", "page", "routes"]
