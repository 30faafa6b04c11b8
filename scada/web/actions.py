"""State-changing requests of the console: login, logout and the operator actions.

Each action needs a session and its CSRF token, then calls one method of the operator API
(:class:`scada.operations.Operations`), which checks the role matrix and the caller's areas,
performs the action and writes the audit record with the caller's identity (``via`` =
``web <address>``). The answer is the operator API's :class:`~scada.operations.Outcome` as
JSON (:func:`scada.web.app.outcome_response`).
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .app import ApiError, Ctx, outcome_response
from .security import COOKIE


def safe_next(target: str | None) -> str:
    """Only a path of this server (never ``//host`` or ``https://...``: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _str(data: dict[str, Any], key: str, *, required: bool = True, max_len: int = 1000) -> str:
    v = data.get(key)
    if v is None or v == "":
        if required:
            raise ApiError(400, "bad_parameter", f"{key}: required")
        return ""
    if not isinstance(v, str):
        raise ApiError(400, "bad_parameter", f"{key}: expected a string, got {type(v).__name__}")
    if len(v) > max_len:
        raise ApiError(400, "bad_parameter", f"{key}: longer than {max_len} characters")
    return v


def _number(data: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    v = data.get(key)
    if v is None:
        if required:
            raise ApiError(400, "bad_parameter", f"{key}: required")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ApiError(400, "bad_parameter", f"{key}: expected a number, got {v!r}")
    return float(v)


def _list(data: dict[str, Any], key: str) -> list[str] | None:
    v = data.get(key)
    if v is None or v == []:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ApiError(400, "bad_parameter", f"{key}: expected a list of strings")
    return v


def routes(ctx: Ctx) -> list[BaseRoute]:
    ops = ctx.operations
    login_lock = asyncio.Lock()  # one scrypt check at a time (the account store's lockout state)

    async def login(request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        body = await request.body()
        is_json = ctype.startswith("application/json")
        if is_json:
            data = await ctx.json_body(request)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            try:
                data = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                                   max_num_fields=10, strict_parsing=False))
            except (UnicodeDecodeError, ValueError) as e:
                raise ApiError(400, "malformed_form", f"the login form could not be read: {e}") from None
        else:
            raise ApiError(415, "unsupported_media_type",
                           "send the login as application/json or a form (application/x-www-form-urlencoded)")
        user = _str(data, "user", max_len=200)
        password = _str(data, "password", max_len=1000)
        addr = ctx.address(request)
        wait = ctx.by_address.hit(addr) or ctx.by_account.hit(user.lower())
        if wait:
            ctx.counters["rate_limited"] += 1
            ctx.counters["login_refused"] += 1
            ops.refuse_security(f"web {addr}", "BadTooManyOperations",
                                "login rate limit (web.login_rate)", user=user)
            raise ApiError(429, "rate_limited",
                           f"too many login attempts from {addr} or for {user!r}; try again in "
                           f"{math.ceil(wait)} s", headers={"Retry-After": str(math.ceil(wait))})
        async with login_lock:
            who, res = await asyncio.to_thread(ops.authenticate, user, password, f"web {addr}")
        if who is None or who.role is None:
            ctx.counters["login_refused"] += 1
            reason = getattr(res, "reason", "") or "refused"
            locked = "lock" in reason
            raise ApiError(401, "locked" if locked else "bad_credentials",
                           "this account is locked for a while after too many failed logins"
                           if locked else "wrong user name or password")
        s = ctx.sessions.create(who, addr)
        ctx.counters["logins"] += 1
        nxt = safe_next(data.get("next") if isinstance(data.get("next"), str) else None)
        resp: Response
        if is_json:
            resp = JSONResponse({"ok": True, "user": who.user, "role": who.role, "csrf": s.csrf, "next": nxt})
        else:
            resp = RedirectResponse(nxt, 303)
        resp.set_cookie(COOKIE, s.token, httponly=True, samesite="strict", secure=ctx.tls, path="/")
        return resp

    async def logout(request: Request) -> Response:
        data = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            data = dict(urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace"),
                                               max_num_fields=10))
        s = ctx.check_csrf(request, data)
        ops.audit.record(user=s.identity.user, action="logout", target="session", outcome="Good",
                         via=f"web {ctx.address(request)}")
        ctx.sessions.close(s.token)
        resp: Response = RedirectResponse("/login", 303) if data else JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=ctx.tls)
        return resp

    async def _prepare(request: Request) -> tuple[Any, dict[str, Any]]:
        ctx.check_csrf(request)
        data = await ctx.json_body(request)
        return ctx.require(request), data

    async def ack(request: Request) -> Response:
        who, d = await _prepare(request)
        return outcome_response(await ops.acknowledge(who, _str(d, "alarm_id"), _str(d, "comment", required=False)))

    async def comment(request: Request) -> Response:
        who, d = await _prepare(request)
        return outcome_response(await ops.comment(who, _str(d, "alarm_id"), _str(d, "comment", required=False)))

    async def shelve(request: Request) -> Response:
        who, d = await _prepare(request)
        return outcome_response(await ops.shelve(who, _str(d, "alarm_id"), _str(d, "comment"),
                                                 _number(d, "duration", required=False)))

    async def unshelve(request: Request) -> Response:
        who, d = await _prepare(request)
        return outcome_response(await ops.unshelve(who, _str(d, "alarm_id"), _str(d, "comment", required=False)))

    async def oos(request: Request) -> Response:
        who, d = await _prepare(request)
        flag = d.get("oos")
        if not isinstance(flag, bool):
            raise ApiError(400, "bad_parameter", "oos: expected true or false")
        return outcome_response(await ops.set_out_of_service(who, _str(d, "device"), flag,
                                                             _str(d, "comment", required=False)))

    async def write(request: Request) -> Response:
        who, d = await _prepare(request)
        if "value" not in d:
            raise ApiError(400, "bad_parameter", "value: required")
        v = d["value"]
        if not isinstance(v, (bool, int, float, str)):
            raise ApiError(400, "bad_parameter", "value: expected a number, true/false or a string")
        tag = _str(d, "tag")
        if not who.sees(tag):  # same answer as an unknown tag: other tenants' tags do not exist
            raise ApiError(404, "not_found", f"no such tag: {tag}")
        return outcome_response(await ops.write(who, tag, v))

    async def override(request: Request) -> Response:
        who, d = await _prepare(request)
        return outcome_response(await ops.set_override(
            who, level=_number(d, "level"), minutes=_number(d, "minutes"), reason=_str(d, "reason"),
            areas=_list(d, "areas"), devices=_list(d, "devices"), groups=_list(d, "groups")), 201)

    async def cancel(request: Request) -> Response:
        who, _d = await _prepare(request)
        return outcome_response(await ops.cancel_override(who, request.path_params["id"]))

    post = ["POST"]
    return [
        Route("/login", login, methods=post),
        Route("/api/login", login, methods=post),
        Route("/logout", logout, methods=post),
        Route("/api/logout", logout, methods=post),
        Route("/api/alarms/ack", ack, methods=post),
        Route("/api/alarms/comment", comment, methods=post),
        Route("/api/alarms/shelve", shelve, methods=post),
        Route("/api/alarms/unshelve", unshelve, methods=post),
        Route("/api/devices/out-of-service", oos, methods=post),
        Route("/api/write", write, methods=post),
        Route("/api/overrides", override, methods=post),
        Route("/api/overrides/{id}/cancel", cancel, methods=post),
    ]
