"""Read models of the console: alarms, devices, tags as plain JSON-ready dicts, filtered by
the caller's areas. Shared by the JSON API and the pages; no HTTP here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import quality as Q
from ..operations import Identity
from .hub import alarm_json

#: ISA-18.2 state names of the console, by the engine's state names
ISA_STATE = {
    "UnackActive": "unacknowledged",
    "AckActive": "acknowledged",
    "UnackRTN": "returned-unacknowledged",
    "Normal": "normal",
    "Shelved": "shelved",
    "Suppressed": "suppressed",
    "OutOfService": "out-of-service",
}
VIEWS = ("active", "shelved", "suppressed", "out-of-service", "all")
SORTS = ("priority", "time", "area")


def engine_of(runtime: Any) -> Any:
    return getattr(runtime.services.get("alarms"), "engine", None)


def alarm_row(ev: Any) -> dict[str, Any]:
    d = alarm_json(ev)
    d["isa_state"] = ISA_STATE.get(d["state"], d["state"].lower())
    return d


def alarm_rows(runtime: Any, who: Identity, view: str = "active") -> list[dict[str, Any]]:
    """Alarms of ``view`` the caller sees: ``active`` (annunciated: retained and not hidden),
    ``shelved``, ``suppressed``, ``out-of-service`` or ``all`` retained ones."""
    engine = engine_of(runtime)
    if engine is None:
        return []
    if view == "active":
        evs = engine.active()
    else:
        evs = engine.active(include_hidden=True)
        shelved = getattr(getattr(engine, "st", engine), "shelved", None)
        if view == "shelved" and shelved is not None:
            # shelved alarms that returned to normal and were acknowledged are not retained,
            # but the operator still needs to find them to unshelve them
            seen = {e.cond for e in evs}
            extra = np.nonzero(np.asarray(shelved[: engine.n]) != 0)[0].tolist()
            evs = evs + [engine.view(c) for c in extra if c not in seen]
        want = {"shelved": "Shelved", "suppressed": "Suppressed", "out-of-service": "OutOfService"}.get(view)
        if want is not None:
            evs = [e for e in evs if e.state == want]
    return [alarm_row(e) for e in evs if who.sees_area(e.area)]


def filter_sort(rows: list[dict[str, Any]], *, state: str | None = None, area: str | None = None,
                priority: str | None = None, text: str | None = None, sort: str = "priority",
                desc: bool | None = None) -> list[dict[str, Any]]:
    """Filter by ISA state names (comma list), areas (comma list), priorities (``1`` or
    ``1,2`` or ``<=2``) and a case-insensitive text; sort by priority (1 first, then newest),
    time (newest first) or area. Raises ValueError for a malformed filter."""
    if state:
        states = {s.strip() for s in state.split(",") if s.strip()}
        unknown = states - set(ISA_STATE.values())
        if unknown:
            raise ValueError(f"unknown state {', '.join(sorted(unknown))}; expected "
                             f"{', '.join(ISA_STATE.values())}")
        rows = [r for r in rows if r["isa_state"] in states]
    if area:
        areas = {a.strip() for a in area.split(",")}
        rows = [r for r in rows if r["area"] in areas]
    if priority:
        p = priority.strip()
        try:
            if p.startswith("<="):
                hi = int(p[2:])
                rows = [r for r in rows if r["priority"] <= hi]
            else:
                ps = {int(x) for x in p.split(",")}
                rows = [r for r in rows if r["priority"] in ps]
        except ValueError:
            raise ValueError(f"priority {priority!r}: expected a number, a comma list or <=N") from None
    if text:
        t = text.lower()
        rows = [r for r in rows if t in r["alarm_id"].lower() or t in (r["message"] or "").lower()
                or t in r["category"].lower()]
    if sort not in SORTS:
        raise ValueError(f"sort {sort!r}: expected one of {', '.join(SORTS)}")
    if sort == "priority":
        rows.sort(key=lambda r: (r["priority"], -(r["ts"] or 0)), reverse=bool(desc))
    elif sort == "time":
        rows.sort(key=lambda r: r["ts"] or 0, reverse=True if desc is None else desc)
    else:
        rows.sort(key=lambda r: (r["area"], r["priority"], -(r["ts"] or 0)), reverse=bool(desc))
    return rows


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def tag_row(db: Any, i: int) -> dict[str, Any]:
    info = db.info(i)
    p = info.point
    s = db.read(i)
    return {
        "tag": info.path, "name": p.name, "value": _num(s.value), "status": s.quality,
        "status_name": Q.name(s.quality), "good": Q.is_good(s.quality),
        "source_ts": _num(s.source_ts), "server_ts": _num(s.server_ts), "unit": p.unit,
        "type": p.dtype, "writable": p.writable, "description": p.description,
        "eu_range": [p.eu_low, p.eu_high] if p.eu_low is not None or p.eu_high is not None else None,
    }


def device_summary(runtime: Any, path: str) -> dict[str, Any]:
    site = runtime.site
    try:
        d = site.device(path)
    except (KeyError, ValueError):
        d = None
    out: dict[str, Any] = {"path": path, "area": path.split("/", 1)[0]}
    if d is not None:
        loc = getattr(d, "location", None)
        out.update({"area": d.area, "kind": d.kind, "profile": d.profile_name,
                    "description": _descr(d), "parent": d.parent,
                    "location": {"lat": loc.lat, "lon": loc.lon} if loc is not None else None})
    out["out_of_service"] = bool(runtime.tagdb.is_out_of_service(path))
    return out


def device_alarms(runtime: Any, path: str) -> list[dict[str, Any]]:
    engine = engine_of(runtime)
    if engine is None:
        return []
    rows = getattr(engine, "by_device", {}).get(path, [])
    return [alarm_row(engine.view(c)) for c in rows]


def visible_devices(runtime: Any, who: Identity, *, kind: str | None = None, area: str | None = None,
                    text: str | None = None) -> list[dict[str, Any]]:
    out = []
    t = (text or "").lower()
    for d in runtime.site.all_devices():
        if not who.sees_area(d.area):
            continue
        if kind and d.kind != kind:
            continue
        if area and d.area != area:
            continue
        if t and t not in d.path.lower() and t not in _descr(d).lower():
            continue
        out.append({"path": d.path, "area": d.area, "kind": d.kind, "profile": d.profile_name,
                    "description": _descr(d)})
    return out


def _descr(d: Any) -> str:
    return str((d.attrs or {}).get("description") or d.profile.description or "")


#: junction points the junctions view shows (besides the signal groups' states)
JUNCTION_FAULTS = ("conflict", "door_open", "mains_failure", "detector_fault", "coordination_loss", "flashing")


def junction_row(runtime: Any, path: str) -> dict[str, Any]:
    """One junction for the junctions view: mode, plan, signal-group states, faults, active
    alarms, each value with its status code."""
    db = runtime.tagdb
    tags = {db.point(i).name: i for i in db.device_tags(path)}

    def val(name: str) -> dict[str, Any] | None:
        i = tags.get(name)
        if i is None:
            return None
        s = db.read(i)
        return {"value": _num(s.value), "status": s.quality, "status_name": Q.name(s.quality),
                "source_ts": _num(s.source_ts)}

    groups = sorted(n for n in tags if n.startswith("sg") and n.endswith("_state"))
    faults = [n for n in JUNCTION_FAULTS if (v := val(n)) is not None and v["value"] is True]
    faults += [n for n in sorted(tags) if n.endswith("_lamp_failure") and db.read(tags[n]).value is True]
    alarms = [a for a in device_alarms(runtime, path) if a["state"] != "Normal" or not a["acked"]]
    return {"path": path, "area": path.split("/", 1)[0], "mode": val("mode"), "plan": val("plan"),
            "signal_groups": [{"name": n.removesuffix("_state"), **(val(n) or {})} for n in groups],
            "faults": faults, "alarms": alarms}
