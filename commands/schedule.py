"""CLI commands: ``scada schedule preview | explain | override``.

* ``preview SITE --date D [--area A]``: the night starting on D (sun events in local time),
  each profile's steps, and the night's expected energy versus the legacy baseline.
* ``explain LUMINAIRE --site SITE --at "YYYY-MM-DD HH:MM"``: which rule wins for that luminaire
  that night and why, the step in force and the resulting level (overrides included).
* ``override set|cancel``: operator actions sent to the running server as the authenticated
  ``--user`` (the server's operator API checks the role and areas and audits them);
  ``override list`` reads ``<state_dir>/schedules/overrides.json``.
"""

from __future__ import annotations

import os
from datetime import date, datetime
from zoneinfo import ZoneInfo

import click

from scada.clock import RealClock

from .core import DEMO_SITE, load_or_exit

_CLOCK = RealClock()  # the CLI's 'now' (the server's clock may be simulated)


def _state_dir(site) -> str:
    return os.path.join(site.state_dir, "schedules")


def _fleet(site):
    from scada.schedules.engine import Fleet
    from scada.schedules.planner import Scope

    fleet = Fleet(site)
    return fleet, Scope(fleet.paths, fleet.areas, fleet.groups)


def _parse_at(at: str, tz: str) -> float:
    try:
        dt = datetime.fromisoformat(at)
    except ValueError:
        raise click.BadParameter(f"expected 'YYYY-MM-DD HH:MM' (local time), got {at!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.timestamp()


def preview_text(site, night: date, area: str | None = None) -> str:
    """The text of ``scada schedule preview`` (also used by tests)."""
    import numpy as np

    from scada.schedules.planner import (
        Anchors,
        build_plan,
        day_number,
        fmt_local,
        night_energy_per_w,
    )

    cfg = site.config.schedules
    info = site.config.site
    tz = info.timezone
    fleet, scope = _fleet(site)
    sel = np.ones(len(fleet), dtype=bool) if area is None else np.asarray(fleet.areas) == area
    if area is not None and not sel.any():
        known = sorted(set(fleet.areas))
        raise click.BadParameter(f"area {area!r} has no scheduled luminaires (areas: {known})")
    anchors = Anchors.compute(info.latitude, info.longitude, tz, np.array([day_number(night)]), cfg)
    plan = build_plan(cfg, anchors, scope)
    ev = anchors.events
    lines = [
        f"{site.name} - night of {night:%a %d %b %Y} ({tz}), "
        f"{info.latitude:.4f} N {info.longitude:.4f} E" + (f", area {area}" if area else ""),
        f"  sunset {fmt_local(ev['sunset'][0], tz)}   civil dusk {fmt_local(ev['civil_dusk'][0], tz)}"
        f"   virtual midnight {fmt_local(anchors.midnight[0], tz)}"
        f"   civil dawn {fmt_local(ev['civil_dawn'][0], tz)}   sunrise {fmt_local(ev['sunrise'][0], tz)}",
        f"  switching: on at {cfg.dusk} {fmt_local(anchors.dusk[0], tz)}, "
        f"off at {cfg.dawn} {fmt_local(anchors.dawn[0], tz)} "
        f"({(anchors.dawn[0] - anchors.dusk[0]) / 3600:.2f} h dusk to dawn)",
    ]
    prof_lum = plan.profile[plan.klass, 0]
    rule_lum = plan.rule[plan.klass, 0]
    total_e = total_b = 0.0
    for p in np.unique(prof_lum[sel]):
        members = sel & (prof_lum == p)
        nw = float(fleet.nominal_w[members].sum())
        lw = float(fleet.legacy_w[members].sum())
        if p < 0:
            lines.append(f"  not scheduled: {int(members.sum())} luminaires")
            continue
        name = plan.profile_names[p]
        rules = sorted(
            {cfg.calendars[r].name if r >= 0 else "(default)" for r in rule_lum[members]}
        )
        np_ = plan.nights[name]
        lines.append(
            f"  profile {name!r} (rule {', '.join(rules)}): {int(members.sum())} luminaires, "
            f"{nw / 1000:.2f} kW LED, {lw / 1000:.2f} kW legacy"
        )
        t = np_.times[0]
        for k in range(t.size):
            if not np.isfinite(t[k]):
                break
            lv = np_.levels[0][k]
            lines.append(f"    {fmt_local(t[k], tz)}  {lv:5.0f} %   {np_.labels[0][k]}")
        e = night_energy_per_w(np_, 0) * nw
        b = lw * (anchors.dawn[0] - anchors.dusk[0]) / 3600.0
        total_e += e
        total_b += b
    lines.append(
        f"  expected energy {total_e / 1000:.1f} kWh vs legacy baseline {total_b / 1000:.1f} kWh "
        f"(legacy lamps at full power dusk to dawn): "
        + (f"{100 * (1 - total_e / total_b):.0f} % saved" if total_b > 0 else "no legacy_w attrs")
    )
    return "\n".join(lines)


def explain_text(site, luminaire: str, t: float) -> str:
    """The text of ``scada schedule explain`` (also used by tests)."""
    import numpy as np

    from scada import astro
    from scada.schedules import calendar
    from scada.schedules.overrides import OverrideStore
    from scada.schedules.planner import Anchors, build_plan, day_number, fmt_local

    cfg = site.config.schedules
    info = site.config.site
    tz = info.timezone
    fleet, scope = _fleet(site)
    if luminaire not in fleet.paths:
        close = [p for p in fleet.paths if luminaire in p][:5]
        raise click.BadParameter(
            f"{luminaire!r} is not a scheduled luminaire (a device of kind luminaire with "
            f"level_cmd); similar: {close or 'none'}"
        )
    i = fleet.paths.index(luminaire)
    night = astro.night_of(t, tz)
    anchors = Anchors.compute(info.latitude, info.longitude, tz, np.array([day_number(night)]), cfg)
    one = type(scope)([scope.paths[i]], [scope.areas[i]], [scope.groups[i]])
    plan = build_plan(cfg, anchors, one)
    when = datetime.fromtimestamp(t, ZoneInfo(tz))
    lines = [
        f"{luminaire} (area {fleet.areas[i]}, group {fleet.groups[i]}) at {when:%Y-%m-%d %H:%M %Z}",
        f"  night of {night:%a %d %b %Y}: on {fmt_local(anchors.dusk[0], tz)} ({cfg.dusk}), "
        f"virtual midnight {fmt_local(anchors.midnight[0], tz)}, off {fmt_local(anchors.dawn[0], tz)} ({cfg.dawn})",
        "  rules (highest priority first, then file order):",
    ]
    rows = calendar.explain_rules(cfg.calendars, night, fleet.areas[i], luminaire, fleet.groups[i])
    order = sorted(range(len(rows)), key=lambda r: (-rows[r][0].priority, r))
    winner = int(plan.rule[0, 0])
    for r in order:
        rule, match, why = rows[r]
        mark = "WINS " if r == winner else ("match" if match else "  -  ")
        lines.append(
            f"    [{mark}] {rule.name} (priority {rule.priority}, profile {rule.profile}): {why}"
        )
    p = int(plan.profile[0, 0])
    level = 0.0
    if p < 0:
        lines.append("  no rule matches and no default_profile: the schedule leaves it alone")
        level = float("nan")
    else:
        name = plan.profile_names[p]
        if winner < 0:
            lines.append(f"  no rule matches: default profile {name!r}")
        npl = plan.nights[name]
        tt = npl.times[0]
        k = int(np.searchsorted(tt, t, side="right")) - 1
        if k < 0 or not np.isfinite(tt[k]) or k >= tt.size:
            lines.append(f"  profile {name!r}: before switch-on, lights off")
        else:
            level = float(npl.levels[0][k])
            lines.append(
                f"  profile {name!r}: since {fmt_local(tt[k], tz)} {npl.labels[0][k]} "
                f"-> {level:g} %"
            )
    store = OverrideStore(_state_dir(site))
    store.reload_if_changed()
    from scada.sections.schedules import Rule

    for o in sorted(store.active(t), key=lambda o: o.start):
        rule = Rule(name="override", profile="-", areas=o.areas, devices=o.devices, groups=o.groups)
        if calendar.scope_mask([rule], [fleet.areas[i]], [luminaire], [fleet.groups[i]])[0, 0]:
            level = o.level
            lines.append(
                f"  OVERRIDE {o.id} by {o.user} until {fmt_local(o.expires, tz)}: {o.level:g} % "
                f"({o.reason}) - beats every calendar rule"
            )
    lines.append(f"  => level {level:g} %")
    return "\n".join(lines)


def register(main: click.Group) -> None:
    """Add this module's commands to the main group."""
    main.add_command(schedule)


@click.group()
def schedule() -> None:
    """Dimming schedules: preview a night, explain a luminaire's level, operator overrides."""


@schedule.command()
@click.argument("site_file", type=click.Path(exists=True, dir_okay=False), default=str(DEMO_SITE))
@click.option("--date", "night", required=True, help="night starting on this date (YYYY-MM-DD)")
@click.option("--area", default=None, help="only this area's luminaires")
def preview(site_file: str, night: str, area: str | None) -> None:
    """Print the night of DATE: sun events, steps, expected energy vs legacy baseline."""
    try:
        d = date.fromisoformat(night)
    except ValueError:
        raise click.BadParameter(
            f"expected YYYY-MM-DD, got {night!r}", param_hint="--date"
        ) from None
    site = load_or_exit(site_file)
    click.echo(preview_text(site, d, area))


@schedule.command()
@click.argument("luminaire")
@click.option(
    "--site",
    "site_file",
    type=click.Path(exists=True, dir_okay=False),
    default=str(DEMO_SITE),
    show_default=True,
)
@click.option("--at", "at", default=None, help="local time 'YYYY-MM-DD HH:MM' (default: now)")
def explain(luminaire: str, site_file: str, at: str | None) -> None:
    """Explain which rule sets LUMINAIRE's level at a time, and why."""
    site = load_or_exit(site_file)
    t = _parse_at(at, site.config.site.timezone) if at else _CLOCK.time()
    click.echo(explain_text(site, luminaire, t))


@schedule.group()
def override() -> None:
    """Operator overrides (engineer role): set, list, cancel."""


def _override_opts(f):
    from .client import _connection_options

    return _connection_options(f)


@override.command("set")
@click.option("--level", type=click.FloatRange(0, 100), required=True)
@click.option("--minutes", type=float, default=120.0, show_default=True)
@click.option("--reason", required=True)
@click.option("--area", "areas", multiple=True)
@click.option(
    "--device", "devices", multiple=True, help="device path (cabinet, gateway or luminaire)"
)
@click.option("--group", "groups", multiple=True, help="luminaire group attr")
@_override_opts
def override_set(level, minutes, reason, areas, devices, groups, **o) -> None:
    """Override luminaires at LEVEL for MINUTES (beats every calendar rule); engineer role,
    through the running server (--user, --site or --endpoint)."""
    from .alarms import call

    call(o, "set_override", level=level, minutes=minutes, reason=reason, areas=list(areas),
         devices=list(devices), groups=list(groups))


@override.command("list")
@click.argument("site_file", type=click.Path(exists=True, dir_okay=False))
def override_list(site_file) -> None:
    """Active overrides."""
    from scada.schedules.overrides import OverrideStore

    site = load_or_exit(site_file)
    store = OverrideStore(_state_dir(site))
    store.reload_if_changed()
    tz = ZoneInfo(site.config.site.timezone)
    act = store.active(_CLOCK.time())
    if not act:
        click.echo("no active override")
    for o in act:
        click.echo(
            f"{o.id}  {o.scope_text():<30} {o.level:5.0f} %  until "
            f"{datetime.fromtimestamp(o.expires, tz):%Y-%m-%d %H:%M}  by {o.user}: {o.reason}"
        )


@override.command("cancel")
@click.argument("override_id")
@_override_opts
def override_cancel(override_id, **o) -> None:
    """Cancel an override before it expires (engineer role, through the running server)."""
    from .alarms import call

    call(o, "cancel_override", override_id=override_id)
