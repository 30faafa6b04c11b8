"""The console's ASGI application: routes, authentication, CSRF, limits and errors.

Routes come from route modules, each exposing ``routes(ctx) -> list[BaseRoute]``:
``scada.web.api`` (the JSON API), ``scada.web.actions`` (state-changing API calls),
``scada.web.pages`` (HTML) and every module of :data:`EXTRA_ROUTE_MODULES` that imports (the
live map adds itself there with one line). ``ctx`` (:class:`Ctx`) is what a route needs: the
runtime, the operator API, the live-update hub, :meth:`Ctx.require` (the caller's identity, or a
401/403 error) and :meth:`Ctx.check_csrf`.

Malformed or refused requests get a 4xx answer with a JSON body ``{"error": ..., "detail":
...}`` (pages: a plain page), never a traceback; each is counted (``_system/web/*``).
"""

from __future__ import annotations

import importlib
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute

from ..operations import Identity, Outcome
from .hub import Hub
from .security import COOKIE, RateLimiter, Session, SessionStore, csrf_ok

log = logging.getLogger("scada.web")

#: route modules always loaded, then the optional ones (skipped when they do not import)
ROUTE_MODULES = ["scada.web.api", "scada.web.actions", "scada.web.pages"]
EXTRA_ROUTE_MODULES = ["scada.web.map_api", "scada.web.interventions", "scada.web.open311"]

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ApiError(HTTPException):
    """An HTTP error with a machine-readable ``error`` code and a sentence for a person."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status, detail, headers)
        self.error = error


class Ctx:
    """What a route module gets: see the module docstring."""

    def __init__(self, runtime: Any, hub: Hub, sessions: SessionStore, *, tls: bool,
                 max_body: int, counters: dict[str, int], login_rate: Any):
        self.runtime = runtime
        self.operations = runtime.operations
        self.hub = hub
        self.sessions = sessions
        self.tls = tls
        self.max_body = max_body
        self.counters = counters
        clock = sessions.clock
        self.by_address = RateLimiter(clock, login_rate.per_address, login_rate.window)
        self.by_account = RateLimiter(clock, login_rate.per_account, login_rate.window)

    @property
    def clock(self) -> Any:
        return self.sessions.clock

    # ------------------------------------------------------------------ callers
    @staticmethod
    def address(request: Request) -> str:
        return request.client.host if request.client else "?"

    def session(self, request: Request, *, touch: bool = True) -> Session:
        """The caller's session or a 401 error (``expired`` says so). A request marked
        ``X-Scada-Background: 1`` (a page's periodic refresh, a reload after a live event) does
        not count as use: the idle timeout measures what the person did."""
        touch = touch and request.headers.get("x-scada-background") != "1"
        s, why = self.sessions.get(request.cookies.get(COOKIE), touch=touch)
        if s is None:
            detail = ("the session expired after "
                      f"{self.sessions.idle_timeout:g} s without use; log in again"
                      if why == "expired" else "log in first")
            raise ApiError(401, "expired" if why == "expired" else "unauthenticated", detail)
        return s

    def require(self, request: Request, action: str | None = None) -> Identity:
        """The caller's identity (``via`` = ``web <address>``); with ``action``, a 403 error
        unless the role matrix allows it (the refusal is audited by the operator API)."""
        s = self.session(request)
        who = s.identity.with_via(f"web {self.address(request)}")
        if action is not None and not self.operations.allowed(who, action):
            out = self.operations.authorize(who, action, request.url.path)
            raise ApiError(403, "forbidden", out.message if out else "not allowed")
        return who

    def check_csrf(self, request: Request, form: dict[str, Any] | None = None) -> Session:
        """The session of a state-changing request whose CSRF token matches, else 403."""
        s = self.session(request)
        given = request.headers.get("x-csrf-token") or (form or {}).get("csrf")
        if not csrf_ok(s, given):
            self.counters["csrf_refused"] += 1
            raise ApiError(403, "csrf", "missing or wrong CSRF token: send the X-CSRF-Token header "
                                        "(from /api/me) with every state-changing request")
        return s

    def area_check(self, who: Identity, path: str) -> None:
        """404 (not 403: another tenant's paths are not even confirmed to exist)."""
        if not who.sees(path):
            raise ApiError(404, "not_found", f"no such device or tag: {path}")

    async def json_body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object, or a 400 saying what is wrong with it."""
        body = await request.body()
        try:
            data = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "malformed_json", "the body must be a JSON object")
        return data


def outcome_response(out: Outcome, status_ok: int = 200) -> JSONResponse:
    """An operator-API outcome as JSON: 200 when Good, 403 for access denied, 404 for unknown
    targets, 409 for a state that does not allow it, 400 otherwise."""
    body = {"ok": out.ok, "status": out.status, "status_name": out.status_name,
            "message": out.message, **({"data": out.data} if out.data else {})}
    if out.ok:
        return JSONResponse(body, status_ok)
    name = out.status_name
    code = (403 if name in ("BadUserAccessDenied",) else
            404 if name in ("BadNodeIdUnknown", "BadNoEntryExists") else
            409 if name.startswith(("BadCondition", "BadInvalidState", "BadOutOfService")) else
            502 if name in ("BadDeviceFailure", "BadCommunicationError", "BadTimeout", "BadInternalError") else
            400)
    body["error"] = name
    body["detail"] = out.message
    return JSONResponse(body, code)


class LimitBody:
    """ASGI middleware: refuse bodies above ``max_body`` bytes with 413, by Content-Length or
    while reading a chunked body."""

    def __init__(self, app: Any, ctx: Ctx):
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.ctx.max_body
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n < 0 or n > limit:
                    self.ctx.counters["oversized" if n > limit else "malformed"] += 1
                    self.ctx.counters["refused"] += 1
                    await _refuse(send, 413 if n > limit else 400, scope.get("path", ""), self.ctx,
                                  "too_large" if n > limit else "bad_length",
                                  f"request body of {n} bytes is above the limit of {limit} bytes "
                                  "(web.max_upload_bytes)" if n > limit else "bad Content-Length")
                    return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    self.ctx.counters["oversized"] += 1
                    raise ApiError(413, "too_large", f"request body above the limit of {limit} bytes "
                                                     "(web.max_upload_bytes)")
            return msg

        await self.app(scope, limited, send)


async def _refuse(send: Any, status: int, path: str, ctx: Ctx, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    if path.startswith("/open311/"):  # the Open311 clients read the spec's error format
        from ..open311.protocol import errors_body

        body = errors_body(status, detail, "xml" if path.endswith(".xml") else "json")[0]
        o311 = ctx.runtime.services.get("open311")
        if o311 is not None:
            o311.counters["refused"] += 1
            o311.counters["malformed"] += 1
    ctype = b"text/xml; charset=utf-8" if path.startswith("/open311/") and path.endswith(".xml") else b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and request.method == "GET"


def build_app(ctx: Ctx, extra_modules: list[str] | None = None) -> Any:
    """The Starlette application with every route module's routes, wrapped in the body limit."""
    routes: list[BaseRoute] = []
    for name in ROUTE_MODULES + list(EXTRA_ROUTE_MODULES if extra_modules is None else extra_modules):
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            if name in ROUTE_MODULES or e.name != name:
                raise
            log.debug("web: optional route module %s not installed", name)
            continue
        routes.extend(mod.routes(ctx))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        error = getattr(exc, "error", None) or {400: "bad_request", 401: "unauthenticated", 403: "forbidden",
                                                404: "not_found", 405: "method_not_allowed",
                                                413: "too_large", 429: "rate_limited"}.get(status, "error")
        if status >= 400:
            ctx.counters["refused"] += 1
            if status == 400:
                ctx.counters["malformed"] += 1
        if status == 401 and _wants_html(request):
            return RedirectResponse("/login?" + urllib.parse.urlencode({"next": request.url.path}), 303)
        if _wants_html(request) and status != 401:
            return PlainTextResponse(f"{status} {error}: {exc.detail}", status, headers=exc.headers)
        return JSONResponse({"error": error, "detail": exc.detail}, status, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        ctx.counters["errors"] += 1
        log.exception("web: %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": "internal", "detail": "the server could not answer this "
                             "request; the error is in the server's log"}, 500)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.ctx = ctx
    return LimitBody(app, ctx)
