"""Open311 GeoReport v2 routes of the console's web server (transport only), issue 21.

::

    GET  /open311/discovery.{json,xml}
    GET  /open311/v2/services.{json,xml}
    GET  /open311/v2/services/{service_code}.{json,xml}
    POST /open311/v2/requests.{json,xml}                 (api_key)
    GET  /open311/v2/requests.{json,xml}                 service_request_id, service_code, start_date, end_date, status
    GET  /open311/v2/requests/{service_request_id}.{json,xml}
    GET  /open311/v2/tokens/{token}.{json,xml}
    GET  /open311/v2/servicerequestupdates.{json,xml}    start_date, end_date (FixMyStreet extension)

Every answer, refusals included, is in the format the path asks for; errors are the spec's
(``[{"code", "description"}]`` / ``<errors>``), never a traceback. Limits: requests per
client address and per api_key (sliding windows on the server's clock, the console's
:class:`~scada.web.security.RateLimiter`), ``open311.max_body_bytes`` per body. The logic (what
a report attaches to, the store) is :mod:`scada.open311`; state changes go through the
operator API with the client application's identity.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..open311.protocol import (
    FORMATS,
    Open311Error,
    errors_body,
    fields_from_body,
    parse_datetime,
    query_list,
    render,
)
from .security import RateLimiter

log = logging.getLogger("scada.web.open311")

SPEC = "http://wiki.open311.org/GeoReport_v2"
MAX_QUERY = 2000  # characters of a query string


def _split(rest: str) -> tuple[list[str], str]:
    """``v2/requests/12.json`` -> (["v2", "requests", "12"], "json")."""
    head, dot, fmt = rest.rpartition(".")
    if not dot or "/" in fmt:
        raise Open311Error(404, "unknown resource: paths end in .json or .xml")
    if fmt not in FORMATS:
        raise Open311Error(400, f"format {fmt[:10]!r}: expected json or xml")
    return head.split("/"), fmt


def routes(ctx: Any) -> list[BaseRoute]:
    svc = ctx.runtime.services.get("open311")
    if svc is None:
        return []
    cfg = svc.cfg
    by_address = RateLimiter(ctx.clock, cfg.rate.per_address, cfg.rate.window)
    by_key = RateLimiter(ctx.clock, cfg.rate.per_key, cfg.rate.window)
    c = svc.counters

    def refuse(status: int, description: str, fmt: str, headers: dict[str, str] | None = None) -> Response:
        c["refused"] += 1
        if status in (400, 413, 415):
            c["malformed"] += 1
        elif status == 429:
            c["rate_limited"] += 1
        body, ctype = errors_body(status, description, fmt)
        return Response(body, status, headers=headers, media_type=ctype)

    def limited(limiter: RateLimiter, key: str, what: str) -> None:
        wait = limiter.hit(key)
        if wait:
            raise Open311Error(429, f"too many requests from this {what}: at most {limiter.limit} per "
                                    f"{limiter.window:g} s (open311.rate); retry in {math.ceil(wait)} s",
                               {"Retry-After": str(math.ceil(wait))})

    async def read_body(request: Request) -> bytes:
        limit = cfg.max_body_bytes
        n = request.headers.get("content-length")
        if n is not None and (not n.isdigit() or int(n) > limit):
            raise Open311Error(413 if n.isdigit() else 400, f"request body of {n[:20]} bytes is above the limit "
                                                            f"of {limit} bytes (open311.max_body_bytes)")
        chunks, seen = [], 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise Open311Error(413, f"request body above the limit of {limit} bytes (open311.max_body_bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    def one(q: Any, name: str) -> str | None:
        vs = q.getlist(name)
        if len(vs) > 1:
            raise Open311Error(400, f"{name} given {len(vs)} times")
        return vs[0] if vs else None

    def dates(q: Any) -> tuple[float | None, float | None]:
        s, e = one(q, "start_date"), one(q, "end_date")
        start = parse_datetime(s, "start_date") if s else None
        end = parse_datetime(e, "end_date") if e else None
        if start is not None and end is not None and end < start:
            raise Open311Error(400, "end_date is before start_date")
        return start, end

    async def get(parts: list[str], q: Any, fmt: str, base: str) -> tuple[str, Any]:
        jid_given = one(q, "jurisdiction_id")
        if parts == ["discovery"]:
            return "discovery", {"changeset": "2026-12-03T00:00:00Z", "contact": cfg.agency,
                                 "key_service": "Ask the city for an api_key (scada open311 add-client)",
                                 "endpoints": [{"specification": SPEC, "url": f"{base}/open311/v2",
                                                "changeset": "2026-12-03T00:00:00Z", "type": "production",
                                                "formats": ["application/json", "text/xml"]}]}
        if parts[0] != "v2":
            raise Open311Error(404, "unknown resource; see /open311/discovery.json")
        jid = svc.jurisdiction(jid_given) if jid_given or len(svc.area_of_jurisdiction) == 1 else None
        rest = parts[1:]
        if rest == ["services"]:
            return "services", [s.summary() for s in svc.services.values()]
        if len(rest) == 2 and rest[0] == "services":
            s = svc.services.get(rest[1])
            if s is None:
                raise Open311Error(404, f"service_code {rest[1][:60]!r} not found")
            return "definition", s.definition()
        if rest == ["requests"]:
            ids = query_list(one(q, "service_request_id"), "service_request_id")
            codes = query_list(one(q, "service_code"), "service_code")
            statuses = query_list(one(q, "status"), "status")
            if statuses and not set(statuses) <= {"open", "closed"}:
                raise Open311Error(400, "status: open, closed or both (comma-separated)")
            start, end = dates(q)
            return "requests", svc.get_requests(jid=jid, ids=ids, codes=codes, statuses=statuses, start=start,
                                                end=end)
        if len(rest) == 2 and rest[0] == "requests":
            rows = svc.get_requests(jid=jid, ids=[rest[1]])
            if not rows:
                raise Open311Error(404, f"service_request_id {rest[1][:60]!r} not found")
            return "requests", rows
        if len(rest) == 2 and rest[0] == "tokens":
            rid = svc.store.tokens.get(rest[1])
            if rid is None:
                raise Open311Error(404, "token not found")
            return "requests", [{"service_request_id": rid, "token": rest[1]}]
        if rest == ["servicerequestupdates"]:
            start, end = dates(q)
            return "updates", svc.get_updates(jid=jid, start=start, end=end)
        raise Open311Error(404, "unknown resource; see /open311/discovery.json")

    async def handle(request: Request) -> Response:
        fmt = "xml" if request.url.path.endswith(".xml") else "json"
        try:
            limited(by_address, ctx.address(request), "address")
            parts, fmt = _split(request.path_params["rest"])
            if len(request.url.query) > MAX_QUERY:
                raise Open311Error(400, f"query string above {MAX_QUERY} characters")
            q = request.query_params
            if request.method == "POST":
                if parts != ["v2", "requests"]:
                    raise Open311Error(405, "POST is accepted on /open311/v2/requests.{json,xml} only")
                body = await read_body(request)
                fields = fields_from_body(body, request.headers.get("content-type", ""))
                key = fields.pop("api_key", None) or one(q, "api_key")
                if key is None or key == "":
                    c["unauthorized"] += 1
                    raise Open311Error(400, "api_key is required: ask the city to register your application")
                if not isinstance(key, str):
                    c["unauthorized"] += 1
                    raise Open311Error(400, "api_key: expected text")
                client = svc.clients.authenticate(key)
                if client is None:
                    c["unauthorized"] += 1
                    raise Open311Error(403, "invalid api_key")
                limited(by_key, client, "api_key")
                if "jurisdiction_id" not in fields and one(q, "jurisdiction_id"):
                    fields["jurisdiction_id"] = one(q, "jurisdiction_id")
                answer = await svc.submit(client, ctx.address(request), fields)
                data, ctype = render("requests", answer, fmt)
                return Response(data, 201, media_type=ctype)
            if request.method not in ("GET", "HEAD"):
                raise Open311Error(405, f"{request.method} is not accepted: GET, or POST on requests")
            base = f"{request.url.scheme}://{request.url.netloc}"
            kind, data = await get(parts, q, fmt, base)
            body, ctype = render(kind, data, fmt)
            return Response(body, 200, media_type=ctype)
        except Open311Error as e:
            return refuse(e.status, e.description, fmt, e.headers)
        except HTTPException as e:  # the console's body limit while streaming (web.max_upload_bytes)
            return refuse(e.status_code, str(e.detail), fmt)
        except Exception:
            c["errors"] += 1
            log.exception("open311: %s %s failed", request.method, request.url.path)
            body, ctype = errors_body(500, "the server could not answer this request; the error is in "
                                           "the server's log", fmt)
            return Response(body, 500, media_type=ctype)

    return [Route("/open311/{rest:path}", handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
