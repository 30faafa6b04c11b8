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
    """Every order of ``<state_dir>/interventions`` (snapshot + journal), as dicts."""
    from scada.interventions.store import Store

    d = os.path.join(state_dir, "interventions")
    if not os.path.isdir(d):
        return []
    st = Store(d)
    st.load()
    return [wo.as_dict() for wo in st.orders.values()]


def _f(vals: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)


def compute(orders: list[dict[str, Any]], tz: str, municipality_of: dict[str, str], d0: date | None = None,
            d1: date | None = None, now: float | None = None) -> dict[str, Any]:
    zi = ZoneInfo(tz)
    since = datetime(d0.year, d0.month, d0.day, tzinfo=zi).timestamp() if d0 else -np.inf
    until = (datetime(d1.year, d1.month, d1.day, tzinfo=zi).timestamp() + 86400) if d1 else np.inf
    if not orders:
        return {"wo_by_priority": [], "wo_by_trade": [], "wo_by_municipality": [], "wo_sla": []}
    start = _f([o.get("alarm_raised") if o.get("alarm_raised") is not None else o["created"] for o in orders])
    keep = (start >= since) & (start < until) & np.array([o["state"] != "cancelled" for o in orders])
    idx = np.flatnonzero(keep)
    orders = [orders[i] for i in idx]
    start = start[idx]
    cols = {name: _f([o.get(f) for o in orders]) - start for name, f in DELAYS}
    arrived = start + cols["arrive"]
    done = start + cols["repair"]
    due_r = _f([o["due_respond"] for o in orders])
    due_p = _f([o["due_repair"] for o in orders])
    end = float(now if now is not None else min(until, float(np.nanmax(
        np.concatenate([start, arrived[np.isfinite(arrived)], done[np.isfinite(done)]])))))
    late_r = np.where(np.isfinite(arrived), arrived > due_r, end > due_r)
    late_p = np.where(np.isfinite(done), done > due_p, end > due_p)
    keys = {
        "priority": np.array([int(o["priority"]) for o in orders]),
        "trade": np.array([o.get("trade") or "-" for o in orders]),
        "municipality": np.array([municipality_of.get(o["area"], o["area"]) for o in orders]),
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
    breaches = [{"order": o["id"], "priority": o["priority"], "trade": o.get("trade"),
                 "municipality": municipality_of.get(o["area"], o["area"]), "state": o["state"],
                 "respond_late": bool(late_r[i]), "repair_late": bool(late_p[i]),
                 "due_repair": fmt(due_p[i])}
                for i, o in enumerate(orders) if late_r[i] or late_p[i]]
    return {"wo_by_priority": table("priority"), "wo_by_trade": table("trade"),
            "wo_by_municipality": table("municipality"), "wo_sla": breaches[:10_000],
            "wo_inputs": {"orders": len(orders), "respond_breaches": int(late_r.sum()),
                          "repair_breaches": int(late_p.sum()), "evaluated_at": fmt(end)}}
