"""The live map's API: device positions, device states, and their live updates (issue 19).

* ``GET /api/map/devices``: every device the caller may see, columnar and compact (a Paris of
  202,000 devices is ~5 MB of JSON, ~1 MB gzipped): area, kind and id as indices into small
  tables, the number of children (a child's path is its parent's plus its id: the page rebuilds
  the paths), and latitude / longitude in microdegrees delta-encoded along that order
  (luminaires along a street differ by a few hundred). The encoded, gzipped body is cached per
  area set and rebuilt after a GIS import; an ``ETag`` spares a reload of the page its download.
* ``GET /api/map/states``: sparse, only devices not normal: ``[path, state, priority]``.
* ``GET /api/map/config``: base map (tile URL template or the server's tile directory), centre,
  state names. ``GET /map/tiles/{z}/{x}/{y}.png``: a local tile directory, when configured.
* ``POST /api/gis/import``: a GIS file (multipart, CSRF) for
  :meth:`scada.operations.Operations.import_positions` (``scada gis import`` posts here).
* Live: every alarm transition, out-of-service change and GIS import is turned into a
  ``map.state`` (``{"ts": server transition time, "d": [[path, state, priority], ...]}``) or
  ``map.reload`` event on the hub, per area.

A device's state is the worst of its alarms', with the ISA-18.2 distinctions (:data:`STATES`,
worst last); its priority is the most urgent of the alarms in that state. It is computed
incrementally: a transition re-evaluates only the devices of the alarms it carries (their few
alarm rows, vectorised), never every alarm. Alarms suppressed by design change level silently
(no event, by the engine's design), so such a device shows "suppressed" until the suppression
ends or another transition of the device arrives.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import gis

log = logging.getLogger("scada.web.map")

#: device states, least severe first (the index is the state code the API and the page use)
STATES = ("normal", "suppressed", "shelved", "out_of_service", "unack_rtn", "ack_active",
          "comm_lost", "unack_active")
NORMAL, SUPPRESSED, SHELVED, OOS, UNACK_RTN, ACK_ACTIVE, COMM_LOST, UNACK_ACTIVE = range(len(STATES))
#: alarm condition kind "quality" (the device's communication) - scada.alarms.model.K_QUALITY
K_QUALITY = 3


class DeviceStates:
    """Device states from the alarm engine, kept up to date per transition (see the module
    docstring). ``publish(kind, data, area)`` is the hub's."""

    def __init__(self, runtime: Any, publish: Any):
        self.rt = runtime
        self.publish = publish
        svc = runtime.services.get("alarms")
        self.engine = getattr(svc, "engine", None)
        self.states: dict[str, tuple[int, int]] = {}
        self.oos: set[str] = set()
        self._prio = np.zeros(0, dtype=np.int8)
        self._ready = False
        self.closed = False
        self.moved: Any = None  # the console's GIS-import listener (removed with this object)
        self.stats = {"updates": 0, "devices_evaluated": 0}
        if self.engine is not None:
            self.engine.listeners.append(self._on_alarms)
        runtime.tagdb.on_out_of_service(self._on_oos)

    def close(self) -> None:
        self.closed = True
        if self.engine is not None and self._on_alarms in self.engine.listeners:
            self.engine.listeners.remove(self._on_alarms)

    # ------------------------------------------------------------------ evaluation
    def _ranks(self, rows: np.ndarray) -> np.ndarray:
        e = self.engine
        st = e.st  # the engine's columnar state store
        lvl = st.level[rows] != 0
        acked = st.acked[rows]
        quality = e.cond.kind[rows] == K_QUALITY
        r = np.zeros(len(rows), dtype=np.int8)
        r[~lvl & ~acked] = UNACK_RTN
        r[lvl & acked] = ACK_ACTIVE
        r[lvl & acked & quality] = COMM_LOST
        r[lvl & ~acked] = UNACK_ACTIVE
        sup = st.suppressed[rows]
        r[sup] = np.where(lvl[sup] | ~acked[sup], SUPPRESSED, NORMAL)
        r[st.shelved[rows] != 0] = SHELVED
        r[st.oos[rows]] = OOS
        return r

    def _priorities(self, rows: np.ndarray) -> np.ndarray:
        pr = self.engine.priority
        if len(self._prio) < len(pr):  # rows are only ever appended
            self._prio = np.concatenate([self._prio, np.asarray(pr[len(self._prio):], dtype=np.int8)])
        return self._prio[rows]

    def evaluate(self, devices: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(state, priority) of each device, from its alarm rows and its out-of-service flag."""
        devs = list(devices)
        self.stats["devices_evaluated"] += len(devs)
        out = {d: ((OOS, 4) if d in self.oos else (NORMAL, 0)) for d in devs}
        e = self.engine
        if e is None or not devs:
            return out
        lists = [e.by_device.get(d, ()) for d in devs]
        lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        if not lens.sum():
            return out
        rows = np.fromiter((c for x in lists for c in x), dtype=np.int64, count=int(lens.sum()))
        owner = np.repeat(np.arange(len(devs)), lens)
        rank = self._ranks(rows)
        worst = np.zeros(len(devs), dtype=np.int8)
        np.maximum.at(worst, owner, rank)
        top = (rank == worst[owner]) & (rank > 0)
        prio = np.full(len(devs), 9, dtype=np.int8)
        np.minimum.at(prio, owner[top], self._priorities(rows[top]))
        for k in np.flatnonzero(worst).tolist():
            d = devs[k]
            if int(worst[k]) > out[d][0]:
                out[d] = (int(worst[k]), int(prio[k]))
        return out

    def ensure(self) -> None:
        """The first full evaluation: rows not normal (one vectorised pass), their devices, and
        the devices out of service."""
        if self._ready:
            return
        self._ready = True
        self.oos = set(self.rt.tagdb.out_of_service_devices())
        devs = set(self.oos)
        e = self.engine
        if e is not None and e.n:
            rows = np.arange(e.n, dtype=np.int64)
            hot = np.flatnonzero(self._ranks(rows))
            devs.update(e.device[c] for c in hot.tolist())
        self.states = {d: s for d, s in self.evaluate(devs).items() if s[0] != NORMAL}

    def snapshot(self, who: Any) -> list[list[Any]]:
        self.ensure()
        return [[d, s, p] for d, (s, p) in self.states.items() if who.sees(d)]

    # ------------------------------------------------------------------ live
    def _on_alarms(self, events: list[Any]) -> None:
        if self.closed or not self._ready or not events:
            return
        self.update({ev.device for ev in events}, max(ev.ts for ev in events))

    def _on_oos(self, device: str, oos: bool, user: Any, comment: Any) -> None:
        if oos:
            self.oos.add(device)
        else:
            self.oos.discard(device)
        if not self.closed and self._ready:
            self.update({device}, self.rt.clock.time())

    def update(self, devices: set[str], ts: float) -> None:
        """Re-evaluate ``devices``; publish the ones whose state changed, one event per area."""
        new = self.evaluate(devices)
        by_area: dict[str, list[list[Any]]] = {}
        for d, s in new.items():
            old = self.states.get(d, (NORMAL, 0))
            if s == old:
                continue
            if s[0] == NORMAL:
                self.states.pop(d, None)
            else:
                self.states[d] = s
            by_area.setdefault(d.split("/", 1)[0], []).append([d, s[0], s[1]])
        for area, items in by_area.items():
            self.stats["updates"] += len(items)
            self.publish("map.state", {"ts": ts, "d": items}, area)


class DeviceTable:
    """Positions of every device, encoded once per area set (see the module docstring)."""

    def __init__(self, site: Any):
        self.site = site
        self.rev = 0
        self._cache: dict[Any, tuple[str, bytes, bytes]] = {}
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self.rev += 1
        self._cache.clear()

    def encode(self, areas: frozenset[str] | None) -> bytes:
        """The JSON body for a caller seeing ``areas`` (None: all)."""
        gis.apply_saved(self.site)
        area_ids = [a.id for a in self.site.config.areas]
        a_ix = {a: k for k, a in enumerate(area_ids)}
        kinds: dict[str, int] = {}
        names: dict[str, int] = {}
        area_col: list[int] = []
        kind_col: list[int] = []
        name_col: list[int] = []
        nchild: list[int] = []
        lat: list[float] = []
        lon: list[float] = []
        for d in self.site.devices:
            if areas is not None and d.area not in areas:
                continue
            for x in (d, *d.children):
                area_col.append(a_ix.get(x.area, 0))
                kind_col.append(kinds.setdefault(x.kind, len(kinds)))
                name_col.append(names.setdefault(x.id, len(names)))
                nchild.append(len(x.children))
                loc = x.location
                lat.append(loc.lat if loc is not None else np.nan)
                lon.append(loc.lon if loc is not None else np.nan)
        la, lo = np.asarray(lat), np.asarray(lon)
        missing = np.isnan(la) | np.isnan(lo)
        la = np.where(missing, 0.0, la)
        lo = np.where(missing, 0.0, lo)
        ila = np.rint(la * 1e6).astype(np.int64)
        ilo = np.rint(lo * 1e6).astype(np.int64)
        if missing.any():  # keep the previous value: a zero delta, listed in "nopos"
            idx = np.where(~missing, np.arange(len(ila)), 0)
            np.maximum.accumulate(idx, out=idx)
            ila, ilo = ila[idx], ilo[idx]

        def ints(a: Any) -> str:
            return "[" + ",".join(map(str, a.tolist() if hasattr(a, "tolist") else a)) + "]"

        dla = np.diff(ila, prepend=0) if len(ila) else ila
        dlo = np.diff(ilo, prepend=0) if len(ilo) else ilo
        head = {"rev": self.rev, "n": len(area_col), "scale": 1e6, "areas": area_ids,
                "kinds": list(kinds), "names": list(names)}
        body = (json.dumps(head, separators=(",", ":"))[:-1]
                + ',"area":' + ints(area_col) + ',"kind":' + ints(kind_col) + ',"name":' + ints(name_col)
                + ',"nchild":' + ints(nchild) + ',"lat":' + ints(dla) + ',"lon":' + ints(dlo)
                + ',"nopos":' + ints(np.flatnonzero(missing)) + "}")
        return body.encode()

    async def body(self, areas: frozenset[str] | None) -> tuple[str, bytes, bytes]:
        """(etag, json, gzipped json), built in a worker thread on first use per area set."""
        key = areas
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        async with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            rev = self.rev
            raw = await asyncio.to_thread(self.encode, areas)
            gz = await asyncio.to_thread(gzip.compress, raw, 6)
            tag = f'"m{rev}-{len(raw)}-{abs(hash(key)) % 10**8}"'
            if rev == self.rev:
                self._cache[key] = (tag, raw, gz)
            return tag, raw, gz


def map_config(site: Any) -> dict[str, Any]:
    """The ``web.map`` settings, whatever their shape (a model or a mapping), with defaults."""
    web = getattr(site.config, "web", None)
    m = getattr(web, "map", None) if web is not None else None
    if m is None:
        m = {}
    get = m.get if isinstance(m, dict) else (lambda k, default=None: getattr(m, k, default))
    return {"tiles": get("tiles", None) or None, "attribution": get("attribution", "") or "",
            "max_zoom": int(get("max_zoom", 19) or 19)}


def tile_dir(site: Any, tiles: str | None) -> str | None:
    """A local tile directory (a template that is not an http(s) URL), absolute."""
    if not tiles or tiles.startswith(("http://", "https://")):
        return None
    d = tiles.split("{", 1)[0].rstrip("/") or "."
    return d if os.path.isabs(d) else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(site.path)), d))


def split_multipart(ctype: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body; ``ValueError`` if malformed."""
    m = re.search(r'boundary="?([^";,]{1,200})"?', ctype)
    if not ctype.startswith("multipart/form-data") or m is None:
        raise ValueError("expected multipart/form-data with a boundary")
    sep = b"--" + m.group(1).encode("latin-1")
    out: dict[str, tuple[str | None, bytes]] = {}
    chunks = body.split(sep)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ValueError("the multipart body is cut short (no closing boundary)")
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise ValueError("a multipart part is not delimited by CRLF")
        head, blank, content = chunk[2:-2].partition(b"\r\n\r\n")
        if not blank:
            raise ValueError("a multipart part has no header end")
        disp = next((ln for ln in head.decode("utf-8", "replace").split("\r\n")
                     if ln.lower().startswith("content-disposition:")), "")
        nm = re.search(r'\bname="([^"]{1,100})"', disp)
        fn = re.search(r'\bfilename="([^"]{0,255})"', disp)
        if nm is None:
            raise ValueError("a multipart part has no name")
        out[nm.group(1)] = (fn.group(1) if fn else None, content)
    return out


def routes(ctx: Any) -> list[BaseRoute]:
    from .app import ApiError, outcome_response

    rt = ctx.runtime
    site = rt.site
    old = getattr(ctx, "map_states", None)
    if old is not None:  # the console restarted (its app is rebuilt): one listener only
        old.close()
        if old.moved in ctx.operations.position_listeners:
            ctx.operations.position_listeners.remove(old.moved)
    table = DeviceTable(site)
    states = DeviceStates(rt, ctx.hub.publish)
    ctx.map_states = states  # for the console's other parts and the tests
    ctx.map_table = table
    cfg = map_config(site)
    tdir = tile_dir(site, cfg["tiles"])

    def moved(_positions: dict[str, tuple[float, float]]) -> None:
        table.invalidate()
        ctx.hub.publish("map.reload", {"rev": table.rev}, None)

    ctx.operations.position_listeners.append(moved)
    states.moved = moved

    async def prewarm() -> None:
        """The whole city's table encoded at start, not on the first operator's request (a
        Paris takes seconds to encode on a busy machine)."""
        try:
            t0 = rt.clock.time()
            await table.body(None)
            log.info("map: device table of %s encoded in %.1f s", site.name, rt.clock.time() - t0)
        except Exception:
            log.exception("map: the device table could not be prepared; it is built on first request")

    try:
        ctx.map_prewarm = asyncio.get_running_loop().create_task(prewarm(), name="web:map-prewarm")
    except RuntimeError:  # no running loop (an app built outside the server): built on demand
        ctx.map_prewarm = None

    async def devices(request: Request) -> Response:
        who = ctx.require(request, "read")
        tag, raw, gz = await table.body(who.areas)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding, Cookie"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(gz, media_type="application/json", headers={**headers, "Content-Encoding": "gzip"})
        return Response(raw, media_type="application/json", headers=headers)

    async def device_states(request: Request) -> Response:
        who = ctx.require(request, "read")
        return JSONResponse({"ts": rt.clock.time(), "states": list(STATES), "d": states.snapshot(who)},
                            headers={"Cache-Control": "no-store"})

    async def config(request: Request) -> Response:
        ctx.require(request, "read")
        tiles = "/map/tiles/{z}/{x}/{y}.png" if tdir else cfg["tiles"]
        s = site.config.site
        return JSONResponse({"tiles": tiles, "attribution": cfg["attribution"], "max_zoom": cfg["max_zoom"],
                             "center": [s.latitude, s.longitude], "states": list(STATES), "rev": table.rev})

    async def tile(request: Request) -> Response:
        ctx.require(request, "read")
        p = request.path_params
        if tdir is None:
            raise ApiError(404, "not_found", "no local tile directory is configured (web.map.tiles)")
        z, x, y = p["z"], p["x"], p["y"].removesuffix(".png")
        if not (z.isdigit() and x.isdigit() and y.isdigit() and int(z) <= 22):
            raise ApiError(400, "bad_tile", "tile coordinates are /map/tiles/<z>/<x>/<y>.png, integers")
        f = os.path.join(tdir, str(int(z)), str(int(x)), f"{int(y)}.png")
        if not await asyncio.to_thread(os.path.isfile, f):
            return Response(status_code=204)
        return FileResponse(f, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    async def gis_import(request: Request) -> Response:
        who = ctx.require(request)
        ctx.check_csrf(request)
        body = await request.body()
        try:
            parts = split_multipart(request.headers.get("content-type", ""), body)
        except ValueError as e:
            raise ApiError(400, "malformed_upload", f"POST the file as multipart/form-data (field 'file'): {e}") from None
        if "file" not in parts or not parts["file"][1]:
            raise ApiError(400, "malformed_upload", "no file: send it in the multipart field 'file'")
        name = os.path.basename(parts["file"][0] or "upload")[:200] or "upload"
        fields = {k: v.decode("utf-8", "replace")[:100] for k, (fn, v) in parts.items() if k != "file" and fn is None}
        dry = fields.pop("dry_run", "").lower() in ("1", "true", "yes")
        out = await ctx.operations.import_positions(who, name, parts["file"][1], fields, dry_run=dry)
        return outcome_response(out)

    return [
        Route("/api/map/devices", devices),
        Route("/api/map/states", device_states),
        Route("/api/map/config", config),
        Route("/map/tiles/{z}/{x}/{y}", tile),
        Route("/api/gis/import", gis_import, methods=["POST"]),
    ]
