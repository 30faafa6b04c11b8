"""ISA-18.2 alarm-system performance metrics (ISA-18.2 clause 16, monitoring and assessment / EEMUA 191 targets), from the
journal.

* alarms per 10 minutes (annunciated raises only: suppressed, shelved and out-of-service raises
  are not shown to the operator and are not counted), average and peak;
* flood periods: runs of 10-minute intervals with more than 10 alarms (ISA-18.2 alarm floods), and
  the share of time in flood (target < 1 %);
* top-10 most frequent alarms (target: they make < 20 % of the load);
* stale alarms: active for more than 24 h;
* chattering alarms: ``count`` raises within ``window`` seconds (ISA-18.2 nuisance alarms).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from .journal import replay

INTERVAL = 600.0
FLOOD = 10
STALE_AFTER = 24 * 3600.0
_HIDDEN = ("Suppressed", "Shelved", "OutOfService")


def compute(entries: Iterable[dict[str, Any]], now: float, *, chatter_count: int = 5,
            chatter_window: float = 600.0) -> dict[str, Any]:
    entries = list(entries)
    raises = [e for e in entries if e.get("event") == "raise" and e.get("state") not in _HIDDEN]
    buckets: Counter[int] = Counter(int(e["ts"] // INTERVAL) for e in raises)
    if entries:
        first = int(min(e["ts"] for e in entries) // INTERVAL)
        last = int(max(now, max(e["ts"] for e in entries)) // INTERVAL)
    else:
        first = last = int(now // INTERVAL)
    n_int = last - first + 1
    floods: list[dict[str, Any]] = []
    run: list[int] = []
    for b in range(first, last + 1):
        if buckets.get(b, 0) > FLOOD:
            run.append(b)
        elif run:
            floods.append(_flood(run, buckets))
            run = []
    if run:
        floods.append(_flood(run, buckets))
    flood_intervals = sum(f["intervals"] for f in floods)
    top = Counter(e["alarm_id"] for e in raises).most_common(10)
    total = len(raises)
    alarms, _ = replay(entries)
    raised_at: dict[str, float] = {}
    for e in raises:
        raised_at[e["alarm_id"]] = e["ts"]
    stale = sorted(
        ({"alarm_id": a, "since": raised_at.get(a, e["ts"]), "hours": (now - raised_at.get(a, e["ts"])) / 3600}
         for a, e in alarms.items()
         if e.get("active") and now - raised_at.get(a, e["ts"]) > STALE_AFTER),
        key=lambda x: x["since"],
    )
    times: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if e.get("event") == "raise":
            times[e["alarm_id"]].append(e["ts"])
    chattering = []
    for a, ts in times.items():
        ts.sort()
        best = 0
        j = 0
        for i in range(len(ts)):
            while ts[i] - ts[j] > chatter_window:
                j += 1
            best = max(best, i - j + 1)
        if best >= chatter_count:
            chattering.append({"alarm_id": a, "raises_in_window": best, "raises": len(ts)})
    chattering.sort(key=lambda x: -x["raises_in_window"])
    return {
        "period": {"start": first * INTERVAL, "end": (last + 1) * INTERVAL, "intervals": n_int},
        "alarms": total,
        "per_10min_avg": total / n_int if n_int else 0.0,
        "per_10min_max": max(buckets.values(), default=0),
        "flood_periods": floods,
        "flood_time_pct": 100.0 * flood_intervals / n_int if n_int else 0.0,
        "top10": [{"alarm_id": a, "count": c, "pct": 100.0 * c / total if total else 0.0}
                  for a, c in top],
        "top10_pct": 100.0 * sum(c for _, c in top) / total if total else 0.0,
        "stale": stale,
        "chattering": chattering,
    }


def _flood(run: list[int], buckets: Counter[int]) -> dict[str, Any]:
    return {"start": run[0] * INTERVAL, "end": (run[-1] + 1) * INTERVAL, "intervals": len(run),
            "alarms": sum(buckets[b] for b in run), "peak": max(buckets[b] for b in run)}


def format_text(m: dict[str, Any], fmt_ts: Any = None) -> str:
    """Human-readable summary for ``scada alarms --metrics``."""
    f = fmt_ts or (lambda t: f"{t:.0f}")
    lines = [
        f"period            {f(m['period']['start'])} .. {f(m['period']['end'])} "
        f"({m['period']['intervals']} x 10 min)",
        f"alarms            {m['alarms']} annunciated",
        f"per 10 min        avg {m['per_10min_avg']:.2f}  max {m['per_10min_max']}"
        "   (ISA-18.2: ~1 acceptable, <= 2 manageable, max <= 10)",
        f"flood time        {m['flood_time_pct']:.2f} %   (target < 1 %)",
    ]
    for fl in m["flood_periods"]:
        lines.append(f"  flood           {f(fl['start'])} .. {f(fl['end'])}: {fl['alarms']} alarms, "
                     f"peak {fl['peak']}/10 min")
    lines.append(f"top 10 share      {m['top10_pct']:.1f} %   (target < 20 %)")
    for t in m["top10"]:
        lines.append(f"  {t['count']:>6}  {t['pct']:5.1f} %  {t['alarm_id']}")
    lines.append(f"stale (> 24 h)    {len(m['stale'])}")
    for s in m["stale"][:20]:
        lines.append(f"  {s['alarm_id']}  active {s['hours']:.1f} h")
    lines.append(f"chattering        {len(m['chattering'])}")
    for c in m["chattering"][:20]:
        lines.append(f"  {c['alarm_id']}  {c['raises_in_window']} raises in window, {c['raises']} total")
    return "\n".join(lines)
