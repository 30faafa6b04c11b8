"""Work-order KPIs for the maintenance contract (issue 20): time to acknowledge, to dispatch, to
arrive and to repair, per priority, trade and municipality, and SLA breaches.

Delays run from the order's start: the raise of its alarm when it came from one, else its
creation. *Acknowledge*: the alarm's first acknowledgement; *dispatch*: first assignment to a
crew (or the move to ``scheduled``); *arrive*: the crew reports "arrived" (``in_progress``);
*repair*: ``completed``. A respond breach is an arrival after ``due_respond`` (or none yet at
the end of the period while it is past); a repair breach the same with ``due_repair``. Columns
are numpy arrays, grouped with ``np.unique``: a city's year of orders in well under a second
(``bench/interventions.py``).
"""

from __future__ import annotations

import os
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

DELAYS = (("ack", "acked_at"), ("dispatch", "dispatched_at"), ("arrive", "arrived_at"), ("repair", "completed_at"))




def load_orders(state_dir: str) -> list[dict[str, Any]]:
    """The KPI columns of every order of ``<state_dir>/interventions`` (snapshot + journal).

    A light replay: only the timestamps and keys the KPIs need are followed (the same rules as
    :func:`scada.interventions.model.apply`), not notes, photos and history, so a year of orders
    costs little more than parsing its journal."""
    import json

    from scada.interventions.model import KPI_FIELDS as _KEEP
    from scada.interventions.model import STAMPS
    from scada.interventions.store import _records

    d = os.path.join(state_dir, "interventions")
    if not os.path.isdir(d):
        return []
    orders: dict[str, dict[str, Any]] = {}
    seq0 = 0
    snap = os.path.join(d, "snapshot.json")
    kpi = os.path.join(d, "kpi.json")
    if os.path.exists(kpi):  # the columns written with the last snapshot (or just after it)
        with open(kpi, encoding="utf-8") as f:
            k = json.load(f)
        seq0 = int(k["seq"])
        cols = k["columns"]
        for row in zip(*(cols[c] for c in _KEEP), strict=True):
            o = dict(zip(_KEEP, row, strict=True))
            orders[o["id"]] = o
    elif os.path.exists(snap):
        with open(snap, encoding="utf-8") as f:
            s = json.load(f)
        seq0 = int(s["seq"])
        for o in s["orders"]:
            orders[o["id"]] = {k: o.get(k) for k in _KEEP}
    stats = {"bad_lines": 0}
    path = os.path.join(d, "journal.jsonl")
    data = b""
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
    for r in _records(data, stats):
        if int(r.get("seq", 0)) <= seq0:
            continue
        op = r.get("op")
        if op == "create":
            o = r["order"]
            orders[o["id"]] = {k: o.get(k) for k in _KEEP}
            continue
        o = orders.get(r.get("id", ""))
        if o is None:
            continue
        ts = float(r["ts"])
        if op == "transition":
            o["state"] = r["to"]
            stamp = STAMPS.get(r["to"])
            if stamp and o.get(stamp) is None:
                o[stamp] = ts
        elif op == "assign":
            if o["dispatched_at"] is None and (r.get("crew") or r.get("assignee")):
                o["dispatched_at"] = ts
        elif op == "ack" and o["acked_at"] is None:
            o["acked_at"] = ts
    return list(orders.values())


class _Obj:
    """A dict read by attribute (orders given as dicts)."""

    def __init__(self, d: dict[str, Any]):
        self.__dict__.update({"alarm_raised": None, "trade": None, **d})

    def __getattr__(self, k: str) -> Any:
        return None


def _f(vals: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)


def compute(orders: list[Any], tz: str, municipality_of: dict[str, str], d0: date | None = None,
            d1: date | None = None, now: float | None = None) -> dict[str, Any]:
    zi = ZoneInfo(tz)
    since = datetime(d0.year, d0.month, d0.day, tzinfo=zi).timestamp() if d0 else -np.inf
    until = (datetime(d1.year, d1.month, d1.day, tzinfo=zi).timestamp() + 86400) if d1 else np.inf
    if not orders:
        return {"wo_by_priority": [], "wo_by_trade": [], "wo_by_municipality": [], "wo_sla": []}
    orders = [o if not isinstance(o, dict) else _Obj(o) for o in orders]
    start = _f([o.alarm_raised if o.alarm_raised is not None else o.created for o in orders])
    keep = (start >= since) & (start < until) & np.array([o.state != "cancelled" for o in orders])
    idx = np.flatnonzero(keep)
    orders = [orders[i] for i in idx]
    start = start[idx]
    cols = {name: _f([getattr(o, f) for o in orders]) - start for name, f in DELAYS}
    arrived = start + cols["arrive"]
    done = start + cols["repair"]
    due_r = _f([o.due_respond for o in orders])
    due_p = _f([o.due_repair for o in orders])
    end = float(now if now is not None else min(until, float(np.nanmax(
        np.concatenate([start, arrived[np.isfinite(arrived)], done[np.isfinite(done)]])))))
    late_r = np.where(np.isfinite(arrived), arrived > due_r, end > due_r)
    late_p = np.where(np.isfinite(done), done > due_p, end > due_p)
    keys = {
        "priority": np.array([int(o.priority) for o in orders]),
        "trade": np.array([o.trade or "-" for o in orders]),
        "municipality": np.array([municipality_of.get(o.area, o.area) for o in orders]),
    }

    def table(key: str) -> list[dict[str, Any]]:
        vals, inv = np.unique(keys[key], return_inverse=True)
        rows = []
        for g, v in enumerate(vals.tolist()):
            m = inv == g
            row: dict[str, Any] = {key: v, "orders": int(m.sum())}
            for name, _ in DELAYS:
                x = cols[name][m]
                x = x[np.isfinite(x)] / 60.0
                row[f"{name}_n"] = int(x.size)
                row[f"{name}_median_min"] = round(float(np.median(x)), 2) if x.size else None
                row[f"{name}_p90_min"] = round(float(np.percentile(x, 90)), 2) if x.size else None
            row["respond_breaches"] = int(late_r[m].sum())
            row["repair_breaches"] = int(late_p[m].sum())
            rows.append(row)
        return rows

    fmt = lambda t: datetime.fromtimestamp(t, zi).isoformat(timespec="seconds")  # noqa: E731
    breaches = [{"order": orders[i].id, "priority": orders[i].priority, "trade": orders[i].trade,
                 "municipality": municipality_of.get(orders[i].area, orders[i].area), "state": orders[i].state,
                 "respond_late": bool(late_r[i]), "repair_late": bool(late_p[i]),
                 "due_repair": fmt(float(due_p[i]))}
                for i in np.flatnonzero(late_r | late_p).tolist()]
    return {"wo_by_priority": table("priority"), "wo_by_trade": table("trade"),
            "wo_by_municipality": table("municipality"), "wo_sla": breaches[:10_000],
            "wo_inputs": {"orders": len(orders), "respond_breaches": int(late_r.sum()),
                          "repair_breaches": int(late_p.sum()), "evaluated_at": fmt(end)}}
