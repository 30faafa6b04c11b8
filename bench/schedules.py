"""Schedule planning and command fan-out at city scale (issue 7).

1. **Year plan**: a year of dimming steps for 200,000 luminaires in 2,000 groups (astronomical
   events, French holidays, weekday/weekend/festival rules with priorities, group-scoped rules),
   vectorised (:mod:`scada.schedules.planner`). Target < 2 s. Baseline in the same run: the
   naive loop - for each luminaire and each night, match the rules in Python and plan the
   profile for that single night - timed on a bounded sample and extrapolated.
2. **Commands per step** for the 34,000-luminaire Dijon city written by ``scada gen-city``:
   the minimal command list (cabinet ``group_level`` / DALI broadcast or group commands) for a
   uniform step, an area override and a mixed DALI-group step, against the naive 34,000
   individual ``level_cmd`` writes.

    python bench/schedules.py [--luminaires 200000] [--groups 2000] [--city 34000]

Figures are noisy: the machine has 2 cores shared with other work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._util import rss_bytes, save
from scada.schedules import calendar
from scada.schedules.planner import Anchors, Scope, build_plan, day_number
from scada.sections.schedules import SchedulesConfig

LAT, LON, TZ = 47.322, 5.041, "Europe/Paris"

CFG = SchedulesConfig.model_validate(
    {
        "profiles": {
            "standard": {
                "fade": 30,
                "switch_off": "dawn+10min",
                "steps": [
                    {"at": "dusk", "level": 100},
                    {"at": "22:00", "level": 70},
                    {"at": "midnight-1h", "until": "midnight+4h", "level": 40},
                ],
            },
            "weekend": {
                "switch_off": "dawn+10min",
                "steps": [{"at": "dusk", "level": 100}, {"at": "00:30", "level": 60}],
            },
            "arterial": {
                "steps": [
                    {"at": "dusk", "level": 100},
                    {"at": "midnight", "level": 60},
                    {"at": "dawn-1h", "level": 100},
                ]
            },
            "full": {"steps": [{"at": "dusk", "level": 100}]},
        },
        "calendars": [
            {"name": "weekdays", "profile": "standard", "priority": 10},
            {"name": "weekend", "profile": "weekend", "days": ["fri", "sat"], "priority": 20},
            {
                "name": "arterials",
                "profile": "arterial",
                "groups": list(range(0, 2000, 7)),
                "priority": 30,
            },
            {"name": "holidays", "profile": "full", "holidays": "FR", "priority": 50},
            {
                "name": "summer-centre",
                "profile": "weekend",
                "areas": ["area-00", "area-01"],
                "from": "2026-07-01",
                "to": "2026-08-31",
                "priority": 60,
            },
            {
                "name": "festival",
                "profile": "full",
                "dates": ["2026-06-21"],
                "areas": ["area-00"],
                "priority": 90,
            },
        ],
    }
)


def synthetic_scope(n: int, groups: int) -> Scope:
    g = np.arange(n) % groups
    paths = [f"area-{gi % 23:02d}/cab-{gi:04d}/lum-{i:06d}" for i, gi in enumerate(g)]
    areas = [f"area-{gi % 23:02d}" for gi in g]
    return Scope(paths, areas, g.tolist())


def year_days() -> np.ndarray:
    d0 = day_number(date(2026, 1, 1))
    return np.arange(d0, d0 + 365)


def plan_year(scope: Scope, groups: int) -> tuple[float, int, np.ndarray, np.ndarray]:
    t0 = time.perf_counter()
    anchors = Anchors.compute(LAT, LON, TZ, year_days(), CFG)
    plan = build_plan(CFG, anchors, scope)
    # one representative luminaire per group -> its class -> the year's steps of the group
    first = np.zeros(groups, dtype=np.int64)
    g = np.asarray(scope.groups)
    first[g[::-1]] = np.arange(len(g))[::-1]
    times, levels = plan.steps(plan.klass[first])
    dt = time.perf_counter() - t0
    n_steps = int(np.isfinite(times).sum())
    return dt, n_steps, times, levels


def naive(scope: Scope, budget_s: float, max_lum: int) -> tuple[float, int]:
    """Per luminaire, per night, in plain Python: match every rule, keep the best, compute its
    profile's step instants (sun events looked up from a per-night table computed once, as a
    careful naive implementation would; clock times through zoneinfo)."""
    from datetime import datetime, timedelta
    from datetime import time as dtime
    from zoneinfo import ZoneInfo

    from scada.sections.schedules import parse_at

    zi = ZoneInfo(TZ)
    days = year_days()
    a = Anchors.compute(LAT, LON, TZ, days, CFG)
    sun = [
        {"dusk": float(a.dusk[k]), "dawn": float(a.dawn[k]), "midnight": float(a.midnight[k])}
        for k in range(days.size)
    ]
    dates = [date.fromordinal(int(d) + date(1970, 1, 1).toordinal()) for d in days]
    hol = {h for y in (2026, 2027) for h in calendar.french_holidays(y)}
    wd = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    t0 = time.perf_counter()
    done = 0
    for i in range(min(len(scope), max_lum)):
        area, path, grp = scope.areas[i], scope.paths[i], scope.groups[i]
        for k, d in enumerate(dates):
            best = None
            for rule in CFG.calendars:
                if rule.days is not None and wd[d.weekday()] not in rule.days:
                    continue
                if rule.holidays is not None and d not in hol:
                    continue
                if rule.dates is not None and d not in rule.dates:
                    continue
                if (rule.start and d < rule.start) or (rule.end and d > rule.end):
                    continue
                if rule.areas is not None and area not in rule.areas:
                    continue
                if rule.groups is not None and grp not in rule.groups:
                    continue
                if rule.devices is not None and not any(path.startswith(x) for x in rule.devices):
                    continue
                if best is None or rule.priority > best.priority:
                    best = rule
            prof = CFG.profiles[best.profile if best is not None else "standard"]
            steps = []
            for st in prof.steps:
                anchor, off = parse_at(st.at)
                if anchor == "clock":
                    day = d if off >= 43200 else d + timedelta(days=1)
                    h, m = divmod(int(off) // 60, 60)
                    t = datetime.combine(day, dtime(h, m), zi).timestamp()
                else:
                    t = sun[k][anchor] + off
                steps.append((t, st.level))
            steps.sort()
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    return time.perf_counter() - t0, done


def city_commands(n: int) -> dict[str, float]:
    from scada.gencity import generate
    from scada.loader import load_site
    from scada.schedules.engine import Commander, Fleet

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "city.yaml")
        generate(n, 0, out_path=path, profiles_dir=os.path.join(repo, "config", "profiles"))
        site = load_site(path)
    fleet = Fleet(site)
    cmd = Commander(fleet)
    # steady-state cost of one engine tick: wanted levels for every luminaire + the diff
    from scada.schedules.planner import Anchors as _A
    from scada.schedules.planner import Scope as _S
    from scada.schedules.planner import build_plan as _bp

    scope = _S(fleet.paths, fleet.areas, fleet.groups)
    anchors = _A.compute(LAT, LON, TZ, np.array([day_number(date(2026, 1, 15))]), CFG)
    plan = _bp(CFG, anchors, scope)
    t_mid = float(anchors.midnight[0])
    for c in cmd.plan(plan.levels(t_mid, 0)):
        cmd.mark_sent(c)
    t0 = time.perf_counter()
    n_ticks = 200
    for k in range(n_ticks):
        cmd.plan(plan.levels(t_mid + k, 0))
    tick_ms = (time.perf_counter() - t0) * 1000 / n_ticks
    cmd = Commander(fleet)
    out: dict[str, float] = {
        "luminaires": len(fleet),
        "cabinets_and_gateways": len(fleet.parent_list),
        "steady_tick_ms": tick_ms,
    }
    t0 = time.perf_counter()
    dusk = cmd.plan(np.full(len(fleet), 100.0))
    out["plan_ms"] = (time.perf_counter() - t0) * 1000
    out["dusk_commands"] = len(dusk)
    for c in dusk:
        cmd.mark_sent(c)
    step = cmd.plan(np.full(len(fleet), 70.0))
    out["step_commands"] = len(step)
    for c in step:
        cmd.mark_sent(c)
    areas = np.asarray(fleet.areas)
    w = np.full(len(fleet), 70.0)
    w[areas == areas[0]] = 100.0
    out["area_override_commands"] = len(cmd.plan(w))
    out["area_override_luminaires"] = int((areas == areas[0]).sum())
    cmd.forget()
    for c in cmd.plan(np.full(len(fleet), 70.0)):
        cmd.mark_sent(c)
    # DALI groups 0-3 at 40 %, the rest 70 %: group commands, no singles
    grp = np.array([int(g) if str(g).isdigit() else -1 for g in fleet.groups])
    dali = np.array([fleet.parent_kind[p] == "dali" for p in fleet.parent_of])
    w = np.where(dali & (grp < 4), 40.0, 70.0)
    mixed = cmd.plan(w)
    out["mixed_dali_group_commands"] = len(mixed)
    out["mixed_singles"] = sum(1 for c in mixed if c.kind == "single")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--luminaires", type=int, default=200_000)
    ap.add_argument("--groups", type=int, default=2_000)
    ap.add_argument("--city", type=int, default=34_000)
    ap.add_argument("--naive-seconds", type=float, default=3.0)
    a = ap.parse_args()

    print(f"building a synthetic scope of {a.luminaires:,} luminaires in {a.groups:,} groups ...")
    scope = synthetic_scope(a.luminaires, a.groups)
    rss0 = rss_bytes()
    dt, n_steps, times, _ = plan_year(scope, a.groups)
    print(
        f"year plan: {dt:.3f} s for {a.luminaires:,} luminaires / {a.groups:,} groups x 365 "
        f"nights = {n_steps:,} group steps ({times.nbytes / 1e6:.0f} MB of step times; "
        f"RSS +{(rss_bytes() - rss0) / 1e6:.0f} MB)  target < 2 s: "
        f"{'OK' if dt < 2 else 'MISSED'}"
    )
    dn, done = naive(scope, a.naive_seconds, 2000)
    per_lum = dn / max(done, 1)
    est = per_lum * a.luminaires
    print(
        f"naive per-luminaire loop: {done} luminaires x 365 nights in {dn:.2f} s -> "
        f"{per_lum * 1000:.2f} ms per luminaire, {est / 3600:.1f} h extrapolated for "
        f"{a.luminaires:,} ({est / dt:,.0f}x slower)"
    )
    print(f"generating the {a.city:,}-luminaire city (scada gen-city) ...")
    c = city_commands(a.city)
    print(
        f"commands per step for {int(c['luminaires']):,} luminaires behind "
        f"{int(c['cabinets_and_gateways'])} cabinets/gateways (naive: {int(c['luminaires']):,} "
        f"individual writes):"
    )
    print(f"  steady engine tick: {c['steady_tick_ms']:.2f} ms (wanted levels + diff, no change)")
    print(
        f"  dusk (contactors + levels)   {int(c['dusk_commands']):>6}   "
        f"({c['plan_ms']:.1f} ms to compute)"
    )
    print(
        f"  uniform dimming step         {int(c['step_commands']):>6}   "
        f"({c['luminaires'] / c['step_commands']:.0f}x fewer than naive)"
    )
    print(
        f"  one area overridden (diff)   {int(c['area_override_commands']):>6}   "
        f"({int(c['area_override_luminaires']):,} luminaires in that area)"
    )
    print(
        f"  DALI groups 0-3 at 40 %      {int(c['mixed_dali_group_commands']):>6}   "
        f"(individual writes among them: {int(c['mixed_singles'])})"
    )
    path = save(
        "schedules",
        {
            "year_plan_s": dt,
            "group_steps": n_steps,
            "luminaires": a.luminaires,
            "groups": a.groups,
            "naive_s_per_luminaire": per_lum,
            "naive_extrapolated_s": est,
            "city": c,
        },
    )
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
