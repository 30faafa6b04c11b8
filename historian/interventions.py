"""Intervention delays from the alarm journal (ISA-18.2 §16 alarm history).

For every annunciated alarm occurrence (a ``raise``), time to acknowledge (first ``ack`` of the
same ``alarm_id`` after the raise) and time to clear (first ``clear`` after it), grouped per
month (local time of the raise) and per priority, category and area: count, median and 90th
percentile in minutes, plus the occurrences still open at the end of the journal. The journal
is read with :func:`scada.alarms.journal.read_journal` (JSON lines: seq, ts, alarm_id, device,
area, name, category, priority, event, user ...).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from . import report

HIDDEN = ("Suppressed", "Shelved", "OutOfService")


def occurrences(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair each raise with its first later ack and clear (same alarm_id)."""
    open_: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for e in entries:
        ev, aid = e.get("event"), e.get("alarm_id")
        if not aid:
            continue
        if ev == "raise":
            if e.get("state") in HIDDEN:
                continue
            occ = {"alarm_id": aid, "device": e.get("device", ""), "area": e.get("area", ""),
                   "category": e.get("category", ""), "priority": e.get("priority", ""),
                   "raised": float(e["ts"]), "acked": None, "cleared": None, "ack_user": None}
            open_[aid] = occ
            out.append(occ)
        elif ev == "ack" and aid in open_ and open_[aid]["acked"] is None:
            open_[aid]["acked"] = float(e["ts"])
            open_[aid]["ack_user"] = e.get("user")
        elif ev == "clear" and aid in open_ and open_[aid]["cleared"] is None:
            open_[aid]["cleared"] = float(e["ts"])
        if aid in open_ and open_[aid]["acked"] is not None and open_[aid]["cleared"] is not None:
            del open_[aid]
    return out


def _stats(vals: list[float]) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    a = np.asarray(vals) / 60.0
    return round(float(np.median(a)), 3), round(float(np.percentile(a, 90)), 3)


def compute(journal: str, tz: str, d0: date | None = None, d1: date | None = None) -> dict[str, Any]:
    from scada.alarms.journal import read_journal

    zi = ZoneInfo(tz)
    since = datetime(d0.year, d0.month, d0.day, tzinfo=zi).timestamp() if d0 else None
    until = (datetime(d1.year, d1.month, d1.day, tzinfo=zi).timestamp() + 86400) if d1 else None
    entries = read_journal(journal)  # acks/clears after the period still close its raises
    # what the report was computed from: the journal files' bytes, in order (an auditor runs
    # `cat <files> | sha256sum` on a copy of the journal)
    import os

    from scada.alarms.journal import journal_files

    files = journal_files(journal) if os.path.isdir(journal) else [journal]
    h = hashlib.sha256()
    for fname in files:
        with open(fname, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    ts = [float(e["ts"]) for e in entries if "ts" in e]
    occ = [o for o in occurrences(entries)
           if (since is None or o["raised"] >= since) and (until is None or o["raised"] < until)]
    for o in occ:
        o["month"] = datetime.fromtimestamp(o["raised"], zi).strftime("%Y-%m")

    def table(keys: tuple[str, ...]) -> list[dict[str, Any]]:
        groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for o in occ:
            groups[tuple(o[k] for k in keys)].append(o)
        rows = []
        for g in sorted(groups, key=lambda x: tuple(str(v) for v in x)):
            os_ = groups[g]
            tta = [o["acked"] - o["raised"] for o in os_ if o["acked"] is not None]
            ttc = [o["cleared"] - o["raised"] for o in os_ if o["cleared"] is not None]
            ma, pa = _stats(tta)
            mc, pc = _stats(ttc)
            rows.append({**dict(zip(keys, g, strict=True)), "alarms": len(os_),
                         "acknowledged": len(tta), "ack_median_min": ma, "ack_p90_min": pa,
                         "cleared": len(ttc), "clear_median_min": mc, "clear_p90_min": pc})
        return rows

    fmt = lambda t: None if t is None else datetime.fromtimestamp(t, zi).isoformat(timespec="seconds")  # noqa: E731
    return {
        "inputs": {"journal": journal, "from": str(d0 or "start"), "to": str(d1 or "end"),
                   "entries": len(entries), "alarms": len(occ), "time_zone": tz,
                   "journal_first": fmt(min(ts)) if ts else None, "journal_last": fmt(max(ts)) if ts else None,
                   "journal_files": len(files), "journal_sha256": h.hexdigest(),
                   "journal_hash_method": "SHA-256 of the journal files' bytes in order (cat FILES | sha256sum)"},
        "monthly": table(("month",)),
        "by_priority": table(("month", "priority")),
        "by_category": table(("month", "category")),
        "by_area": table(("month", "area")),
        "open_at_end": [{"alarm_id": o["alarm_id"], "raised": fmt(o["raised"]), "acked": fmt(o["acked"]),
                         "cleared": fmt(o["cleared"])} for o in occ if o["acked"] is None or o["cleared"] is None],
    }


def to_doc(r: dict[str, Any]) -> report.Doc:
    """The report's page model (HTML and PDF are drawn from it: historian.report.render)."""
    m = r["monthly"]
    chart = report.bar_chart("Time to acknowledge / clear per month (minutes)", [x["month"] for x in m],
                        [("ack median", [x["ack_median_min"] for x in m]), ("ack p90", [x["ack_p90_min"] for x in m]),
                         ("clear median", [x["clear_median_min"] for x in m]),
                         ("clear p90", [x["clear_p90_min"] for x in m])], unit=" min")
    return report.generic_doc("Alarm intervention delays", r, [("Per month", chart)])
