"""Equipment availability from recorded quality and fault states (contract: 99 %).

A device is **down** while its status tag (its first recorded point) carries a Bad status
(communication lost: the driver marks the device's tags ``BadCommunicationError``), or while one
of its fault points (``lamp_failure``, ``driver_failure``, ``supply_fault``, ``breaker_tripped``)
is true with Good quality. **Planned** time - the device put out of service for works
(``BadOutOfService``) - is excluded from the denominator, as maintenance contracts usually do;
time before the first recorded point is **no data** and excluded too (and reported). Values hold
until the next recorded point, at most ``max(1 h, 2 x historian.snapshot)`` (the recorder writes
every tag at least every snapshot period); beyond that - a stopped server, a gap - the state is
unknown: no data, never counted as down.

availability = up time / (period - planned - no data), per device, device class (profile
kind), area and month; every outage behind a figure is listed.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from scada import quality as Q

from . import report
from .base import Backend
from .fingerprint import Fingerprint

FAULT_POINTS = ("lamp_failure", "driver_failure", "supply_fault", "breaker_tripped")
TARGET_PCT = 99.0


def device_states(backend: Backend, status_key: str, fault_keys: list[str], t0: float, t1: float,
                  max_hold: float = 3600.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Step function of one device: segment starts, down?, planned?, no-data?, cause per segment.

    A recorded status holds until the next one but at most ``max_hold`` seconds (the recorder
    writes every tag at least every ``historian.snapshot``): past that, and after the last
    recorded point (a server stopped), the state is unknown - *no data*, not *down*."""
    st = backend.read_raw(status_key, t0 - 86400.0, t1)  # state at t0 comes from before it
    faults = [(k, backend.read_raw(k, t0 - 86400.0, t1)) for k in fault_keys]
    times = np.unique(np.concatenate([[t0], st.t, st.t + max_hold, *[f.t for _, f in faults]]))
    times = times[(times >= t0) & (times < t1)]
    i = np.searchsorted(st.t, times, side="right") - 1
    if len(st):
        ii = np.maximum(i, 0)
        q = np.where(i >= 0, st.q[ii], Q.BadWaitingForInitialData).astype(np.uint32)
        stale = (i >= 0) & (times - st.t[ii] >= max_hold)
    else:  # never recorded: no data for the whole period
        q = np.full(len(times), Q.BadWaitingForInitialData, np.uint32)
        stale = np.zeros(len(times), bool)
    nodata = (i < 0) | (q == Q.BadWaitingForInitialData) | stale
    planned = ~nodata & (q == Q.BadOutOfService)
    comm = ~nodata & ~planned & Q.bad_mask(q)
    cause = np.where(comm, np.array([Q.name(int(x)) for x in q]) if len(q) else np.zeros(0, str), "")
    fault_any = np.zeros(len(times), bool)
    for name, f in faults:
        j = np.searchsorted(f.t, times, side="right") - 1
        on = (j >= 0) & (f.v[np.maximum(j, 0)] > 0.5) & Q.good_mask(f.q[np.maximum(j, 0)]) if len(f) else np.zeros(len(times), bool)
        cause = np.where(on & ~comm & (cause == ""), name.rsplit("/", 1)[-1], cause)
        fault_any |= on
    down = (comm | fault_any) & ~planned & ~nodata
    return times, down, planned, nodata, cause.tolist()


def _overlap(starts: np.ndarray, ends: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Seconds of the masked segments inside each [edges[k], edges[k+1])."""
    a, b = starts[mask], ends[mask]
    cum = np.array([np.clip(x - a, 0, b - a).sum() for x in edges])
    return np.diff(cum)


class _Tracked:
    """The backend as :func:`device_states` reads it, folding every raw range read into a data
    fingerprint (historian.fingerprint): the report states exactly what it was computed from."""

    def __init__(self, backend: Backend, fp: Fingerprint):
        self.backend, self.fp = backend, fp

    def read_raw(self, key: str, t0: float, t1: float) -> Any:
        raw = self.backend.read_raw(key, t0, t1)
        if len(raw):
            self.fp.add_points([key], np.zeros(len(raw), np.int64), raw.t, raw.v, raw.q)
        return raw


def compute(backend: Backend, site: Any, d0: date, d1: date, *, area: str | None = None,
            progress: Any = None, max_hold: float | None = None) -> dict[str, Any]:
    fp = Fingerprint()
    describe = backend.describe()
    backend = _Tracked(backend, fp)  # type: ignore[assignment]
    tz = site.config.site.timezone
    zi = ZoneInfo(tz)
    snap = float(site.config.historian.snapshot or 0.0)
    hold = float(max_hold) if max_hold is not None else max(3600.0, 2.0 * snap) if snap else 86400.0
    t0 = datetime(d0.year, d0.month, d0.day, tzinfo=zi).timestamp()
    end = d1 + timedelta(days=1)
    t1 = datetime(end.year, end.month, end.day, tzinfo=zi).timestamp()
    # month edges in local time
    edges, labels = [t0], []
    m = date(d0.year, d0.month, 1)
    while True:
        labels.append(m.strftime("%Y-%m"))
        m = date(m.year + (m.month == 12), m.month % 12 + 1, 1)
        e = datetime(m.year, m.month, 1, tzinfo=zi).timestamp()
        if e >= t1:
            edges.append(t1)
            break
        edges.append(e)
    E = np.array(edges)
    devices = [d for d in site.all_devices() if (area is None or d.area == area) and d.enabled]
    if progress:
        progress(f"availability of {len(devices)} devices, {labels[0]}..{labels[-1]}")
    dev_rows, outages = [], []
    acc: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros((4, len(labels))))
    for d in devices:
        pts = [p.name for p in d.profile.points if p.history]
        if not pts:
            continue
        status = f"{d.path}/{pts[0]}"
        faults = [f"{d.path}/{p}" for p in pts if p in FAULT_POINTS]
        times, down, planned, nodata, cause = device_states(backend, status, faults, t0, t1, hold)
        ends = np.append(times[1:], t1)
        span = np.diff(E)
        per = np.vstack([_overlap(times, ends, down, E), _overlap(times, ends, planned, E),
                         _overlap(times, ends, nodata, E), span])
        for key in (("device", d.path), ("class", d.kind), ("area", d.area), ("all", "all")):
            acc[key] += per
        acc[("class_month", d.kind)] += per
        counted = span.sum() - per[1].sum() - per[2].sum()
        dev_rows.append({"device": d.path, "class": d.kind, "area": d.area,
                         "available_pct": round(100.0 * (1 - per[0].sum() / counted), 4) if counted > 0 else None,
                         "down_h": round(per[0].sum() / 3600, 4), "planned_h": round(per[1].sum() / 3600, 4),
                         "no_data_h": round(per[2].sum() / 3600, 4)})
        # merge consecutive down segments into outages
        k = 0
        n = len(times)
        while k < n:
            if down[k]:
                j = k
                while j + 1 < n and down[j + 1]:
                    j += 1
                outages.append({"device": d.path, "class": d.kind, "area": d.area,
                                "from": datetime.fromtimestamp(times[k], zi).isoformat(timespec="seconds"),
                                "to": datetime.fromtimestamp(ends[j], zi).isoformat(timespec="seconds"),
                                "hours": round((ends[j] - times[k]) / 3600, 4), "cause": cause[k] or "fault"})
                k = j + 1
            else:
                k += 1
    def pct(per: np.ndarray, sl: Any = slice(None)) -> float | None:
        counted = per[3][sl].sum() - per[1][sl].sum() - per[2][sl].sum()
        return round(float(100.0 * (1 - per[0][sl].sum() / counted)), 4) if counted > 0 else None

    def rows(kind: str, name: str) -> list[dict[str, Any]]:
        return [{name: k[1], "available_pct": pct(v), "down_h": round(v[0].sum() / 3600, 3),
                 "target_pct": TARGET_PCT} for k, v in sorted(acc.items()) if k[0] == kind]

    monthly = []
    for mi, lab in enumerate(labels):
        row = {"month": lab, "available_pct": pct(acc[("all", "all")], slice(mi, mi + 1)) if acc else None}
        for k, v in sorted(acc.items()):
            if k[0] == "class_month":
                row[f"{k[1]}_pct"] = pct(v, slice(mi, mi + 1))
        row["target_pct"] = TARGET_PCT
        monthly.append(row)
    overall = pct(acc[("all", "all")]) if acc else None
    return {
        "inputs": {"site": site.name, "from": str(d0), "to": str(d1), "area": area or "all",
                   "devices": len(dev_rows), "backend": describe, "method": "historian/availability.py docstring",
                   **{f"data_{k}" if k != "content_sha256" else "data_sha256": v for k, v in fp.as_dict(
                       lambda t: datetime.fromtimestamp(t, zi).isoformat(timespec="seconds")).items()}},
        "summary": [{"available_pct": overall, "target_pct": TARGET_PCT,
                     "target_met": bool(overall is not None and overall >= TARGET_PCT), "outages": len(outages)}],
        "monthly": monthly,
        "classes": rows("class", "class"),
        "areas": rows("area", "area"),
        "devices": dev_rows,
        "outages": outages,
    }


def to_doc(r: dict[str, Any]) -> report.Doc:
    """The report's page model (HTML and PDF are drawn from it: historian.report.render)."""
    m = r["monthly"]
    chart = report.bar_chart("Availability per month (%)", [x["month"] for x in m],
                        [("all equipment", [x["available_pct"] for x in m])], unit=" %",
                        hline=TARGET_PCT, hline_label="contract 99 %", ymax=100.0)
    return report.generic_doc("Equipment availability", r, [("Per month", chart)])
