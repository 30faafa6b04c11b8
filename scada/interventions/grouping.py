"""Visits and dispatch: open orders on the same site (the parent device: cabinet, junction) or
within ``grouping_radius_m`` form one visit; inside a visit the tasks follow the trade
precedence (electrician before signal technician before civil works before carpenter before
painter, configurable), then priority, then age. Dispatch proposes, per visit, the nearest
crew on shift having the trade of the visit's first task, from the position its tablet last
reported (while recent enough, :func:`locate`) or its base position. Vectorised with numpy: 10,000 orders
x 500 crews is one distance matrix (``bench/interventions.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from .model import FIELD, WorkOrder

R_EARTH = 6_371_000.0


@dataclass(slots=True)
class Visit:
    id: str  # the site key of its first order
    site: str
    location: tuple[float, float] | None
    area: str
    tasks: list[WorkOrder] = field(default_factory=list)
    crew: str | None = None  # proposed (nearest available with the first task's trade)
    distance_m: float | None = None

    def as_dict(self, rank: Any = None) -> dict[str, Any]:
        return {"id": self.id, "site": self.site, "area": self.area,
                "location": list(self.location) if self.location else None,
                "proposed_crew": self.crew, "distance_m": None if self.distance_m is None else round(self.distance_m, 1),
                "priority": min((t.priority for t in self.tasks), default=4),
                "tasks": [t.summary() | {"checklist": t.checklist, "trade_rank": rank(t.trade) if rank else None}
                          for t in self.tasks]}


def _xy(lat: np.ndarray, lon: np.ndarray, lat0: float) -> tuple[np.ndarray, np.ndarray]:
    """Local equirectangular metres around ``lat0`` (accurate to < 0.1 % across a city)."""
    k = np.pi / 180 * R_EARTH
    return lon * k * np.cos(np.radians(lat0)), lat * k


def group(orders: list[WorkOrder], rank: Any, radius_m: float) -> list[Visit]:
    """Visits of the open field orders: same site key, then sites closer than ``radius_m``
    merged (grid buckets of the radius, neighbours in the 3x3 cells; union-find)."""
    orders = [o for o in orders if o.state in FIELD]
    by_site: dict[str, list[WorkOrder]] = {}
    for o in orders:
        by_site.setdefault(o.site or (o.devices[0] if o.devices else o.id), []).append(o)
    sites = list(by_site)
    n = len(sites)
    parent = np.arange(n)
    locs = [next((o.location for o in by_site[s] if o.location), None) for s in sites]
    have = np.array([loc is not None for loc in locs], dtype=bool)
    if radius_m > 0 and have.sum() > 1:
        idx = np.flatnonzero(have)
        lat = np.array([locs[i][0] for i in idx])
        lon = np.array([locs[i][1] for i in idx])
        x, y = _xy(lat, lon, float(lat.mean()))
        cx = np.floor(x / radius_m).astype(np.int64)
        cy = np.floor(y / radius_m).astype(np.int64)
        cells: dict[tuple[int, int], list[int]] = {}
        for k, key in enumerate(zip(cx.tolist(), cy.tolist(), strict=True)):
            cells.setdefault(key, []).append(k)

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = int(parent[a])
            return a

        r2 = radius_m * radius_m
        for (gx, gy), members in cells.items():
            near = [m for dx in (-1, 0, 1) for dy in (-1, 0, 1) for m in cells.get((gx + dx, gy + dy), ())]
            if len(near) < 2:
                continue
            a = np.asarray(members)
            b = np.asarray(near)
            d2 = (x[a, None] - x[None, b]) ** 2 + (y[a, None] - y[None, b]) ** 2
            ii, jj = np.nonzero(d2 <= r2)
            for i, j in zip(a[ii].tolist(), b[jj].tolist(), strict=True):
                if i != j:
                    ri, rj = find(int(idx[i])), find(int(idx[j]))
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
        roots = [find(i) for i in range(n)]
    else:
        roots = list(range(n))
    visits: dict[int, Visit] = {}
    for i, s in enumerate(sites):
        r = roots[i]
        v = visits.get(r)
        if v is None:
            v = visits[r] = Visit(sites[r], sites[r], locs[r] or locs[i], by_site[s][0].area)
        v.tasks.extend(by_site[s])
    out = list(visits.values())
    for v in out:
        v.tasks.sort(key=lambda t: (rank(t.trade), t.priority, t.created, t.id))
    out.sort(key=lambda v: (min(t.priority for t in v.tasks), min(t.due_repair for t in v.tasks), v.id))
    return out


def on_shift(shift: str, ts: float, tz: str) -> bool:
    a, b = shift.split("-")
    t = datetime.fromtimestamp(ts, ZoneInfo(tz))
    m = t.hour * 60 + t.minute
    ma = int(a[:2]) * 60 + int(a[3:])
    mb = int(b[:2]) * 60 + int(b[3:])
    return ma <= m < mb if ma <= mb else (m >= ma or m < mb)


def locate(crews: list[dict[str, Any]], reported: dict[str, dict[str, Any]], now: float,
           max_age: float) -> list[dict[str, Any]]:
    """Where dispatch takes each crew to be: the position its tablet reported (``reported``:
    crew -> {lat, lon, ts, ...}) while it is at most ``max_age`` seconds old, else the base
    position of the site file. Each row gets ``position_source`` (``reported``, ``base`` or
    None: unknown), ``position_note`` (why the base is used) and ``reported`` (with its age)."""
    out = []
    for c in crews:
        row = c | {"position_source": "base" if c.get("lat") is not None else None, "position_note": "",
                   "reported": None}
        rep = reported.get(c["id"])
        if rep is not None:
            age = now - float(rep["ts"])
            row["reported"] = dict(rep) | {"age_s": round(age, 1)}
            if age <= max_age:
                row |= {"lat": rep["lat"], "lon": rep["lon"], "position_source": "reported"}
            else:
                row["position_note"] = (f"reported position {age / 60:.0f} min old (older than "
                                        f"{max_age / 60:.0f} min): base position used")
        elif c.get("lat") is not None:
            row["position_note"] = "no position reported: base position used"
        out.append(row)
    return out


def propose(visits: list[Visit], crews: list[dict[str, Any]], trades: list[str]) -> None:
    """Set each visit's ``crew`` to the nearest available crew with the trade of its first task
    (``crews``: dicts with id, trades, lat, lon, available). One (visits x crews) matrix."""
    avail = [c for c in crews if c.get("available", True) and c.get("lat") is not None]
    if not visits or not avail:
        return
    tix = {t: i for i, t in enumerate(trades)}
    has = np.zeros((len(avail), len(trades) + 1), dtype=bool)
    for k, c in enumerate(avail):
        for t in c["trades"]:
            if t in tix:
                has[k, tix[t]] = True
    has[:, len(trades)] = True  # a task without a trade: any crew
    clat = np.array([c["lat"] for c in avail])
    clon = np.array([c["lon"] for c in avail])
    vl = np.array([v.location is not None for v in visits])
    vlat = np.array([v.location[0] if v.location else np.nan for v in visits])
    vlon = np.array([v.location[1] if v.location else np.nan for v in visits])
    need = np.array([tix.get(v.tasks[0].trade or "", len(trades)) for v in visits])
    lat0 = float(np.nanmean(np.concatenate([clat, vlat[vl]]))) if vl.any() else float(clat.mean())
    cx, cy = _xy(clat, clon, lat0)
    vx, vy = _xy(vlat, vlon, lat0)
    d = np.hypot(vx[:, None] - cx[None, :], vy[:, None] - cy[None, :])
    ok = has[:, need].T  # (visits, crews)
    d = np.where(ok, np.nan_to_num(d, nan=np.inf), np.inf)
    best = np.argmin(d, axis=1)
    dist = d[np.arange(len(visits)), best]
    for i, v in enumerate(visits):
        if np.isfinite(dist[i]):
            v.crew = avail[int(best[i])]["id"]
            v.distance_m = float(dist[i]) if vl[i] else None
        elif not vl[i] and ok[i].any():  # no position: any crew with the trade
            v.crew = avail[int(np.argmax(ok[i]))]["id"]


def propose_naive(visits: list[Visit], crews: list[dict[str, Any]]) -> list[str | None]:
    """The same proposal with Python loops (the bench's baseline)."""
    from .model import distance_m

    out: list[str | None] = []
    for v in visits:
        best, bd = None, float("inf")
        trade = v.tasks[0].trade
        for c in crews:
            if not c.get("available", True) or c.get("lat") is None or (trade and trade not in c["trades"]):
                continue
            dd = distance_m(v.location, (c["lat"], c["lon"])) if v.location else 0.0
            if dd < bd:
                best, bd = c["id"], dd
        out.append(best)
    return out
