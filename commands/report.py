"""CLI: ``scada report energy|availability|interventions`` and ``scada history TAG``.

Reports read the historian from *another process* while the server writes: the embedded store
is a set of immutable Parquet segments, so a reader never blocks the server nor sees half a
block (points still in the server's spool - the last second or so - are not visible yet).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click

from commands.core import DEMO_SITE, load_or_exit


def register(main: click.Group) -> None:
    main.add_command(report)
    main.add_command(history)


def _site(site_file: str, state_dir: str | None = None):
    site = load_or_exit(site_file)
    if state_dir:
        site.config.site.state_dir = os.path.abspath(state_dir)
    if not os.path.isabs(site.config.site.state_dir):
        site.config.site.state_dir = os.path.join(os.path.dirname(os.path.abspath(site.path)),
                                                  site.config.site.state_dir)
    return site


def _reader(site):
    from historian.base import load_backend
    from historian.service import resolve_dir

    cfg = site.config.historian
    root = resolve_dir(site, cfg.path)
    return load_backend(cfg.backend, os.path.join(root, "data"), cfg.options)


def open_store(site_file: str, state_dir: str | None, store: str | None, write: bool = False):
    """(backend, roll-up directory or None, site or None): ``--store DIR`` is an embedded
    historian directory of its own (an auditor's copy: no site file needed; ``DIR/data`` holds the
    segments, ``DIR/rollups`` the per-night roll-ups), else the site's historian."""
    from historian.base import HistorianError

    if store:
        from historian.embedded import EmbeddedBackend

        root = os.path.abspath(store)
        os.makedirs(root, exist_ok=True)
        return EmbeddedBackend(os.path.join(root, "data"), {}), os.path.join(root, "rollups"), None
    site = _site(site_file, state_dir)
    try:
        b = _reader(site)
    except HistorianError as e:
        raise click.ClickException(str(e)) from None
    rollups = (os.path.join(os.path.dirname(b.path), "rollups")
               if site.config.historian.backend == "embedded" else None)
    return b, rollups, site


def _emit(text: str | bytes, out: str | None) -> None:
    if out:
        if isinstance(text, bytes):
            with open(out, "wb") as f:
                f.write(text)
        else:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text)
        click.echo(f"wrote {out}", err=True)
    elif isinstance(text, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(text)


def _stdout_isatty() -> bool:
    return sys.stdout.isatty()


def _check_format(fmt: str, out: str | None) -> None:
    """Before any work: a PDF needs fpdf2, and being binary it goes to --out or to a pipe or file
    (stdout is refused when it is a terminal)."""
    if fmt != "pdf":
        return
    import historian.report

    try:
        historian.report.require_pdf()
    except historian.report.PdfUnavailable as e:
        raise click.ClickException(str(e)) from None
    if not out and _stdout_isatty():
        raise click.UsageError("a PDF is binary: give --out FILE (or redirect stdout to a file)")


class _Progress:
    """Progress on stderr: step number, what is being done, elapsed seconds."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.monotonic()

    def __call__(self, msg: str) -> None:
        self.n += 1
        done = min(self.n, self.total)
        bar = "#" * (20 * done // self.total) + "." * (20 - 20 * done // self.total)
        click.echo(f"[{bar}] {time.monotonic() - self.t0:6.1f} s  {msg}", err=True)


_site_file = click.option("--site", "site_file", default=str(DEMO_SITE), show_default=True,
                          type=click.Path(dir_okay=False), help="Site file (historian settings).")
_state_dir = click.option("--state-dir", default=None, type=click.Path(file_okay=False),
                          help="State directory of the server (default: the site's state_dir).")


def site_option(f):
    return _site_file(_state_dir(f))


store_option = click.option("--store", type=click.Path(file_okay=False),
                            help="An embedded historian directory of its own instead of the site's "
                                 "(e.g. an auditor's import); no site file needed.")
fmt_option = click.option("--format", "fmt", type=click.Choice(["html", "pdf", "csv", "json"]), default="html",
                          show_default=True, help="pdf: the HTML page as PDF (needs pip install '.[pdf]').")
out_option = click.option("--out", type=click.Path(dir_okay=False),
                          help="Write to a file (default stdout; a PDF only to a pipe or file, never a terminal).")


@click.group()
def report() -> None:
    """Contract reports for auditors (energy savings, availability, interventions)."""


def provenance(extra: dict | None = None) -> dict:
    """Product version, generation time (UTC) and the command line, for every report's inputs."""
    import shlex

    from scada import __version__

    ctx = click.get_current_context()
    argv = ["scada", *ctx.command_path.split()[1:]]
    for prm in ctx.command.params:  # the command as given, options in a canonical order
        v = ctx.params.get(prm.name)
        if v is None or v is False or not isinstance(prm, click.Option) or v == prm.default:
            continue
        opt = max(prm.opts, key=len)
        if v is True:
            argv.append(opt)
        else:
            argv += [opt, v.strftime("%Y-%m-%d") if isinstance(v, datetime) else str(v)]
    return {**(extra or {}), "product": f"city-scada {__version__}",
            "generated": datetime.now(UTC).isoformat(timespec="seconds"), "command": shlex.join(argv)}


@report.command("energy")
@site_option
@store_option
@click.option("--from", "d0", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (local date).")
@click.option("--to", "d1", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--area", default=None, help="Only this area.")
@click.option("--inventory", type=click.Path(exists=True, dir_okay=False),
              help="Baseline inventory (YAML/CSV); default: luminaire attrs of the site.")
@click.option("--convention", type=click.Choice(["calendar", "night"]), default="calendar", show_default=True,
              help="calendar: local midnight to local midnight (nights cut at the period's ends); "
                   "night: local noon to local noon, each night whole on the date it starts.")
@click.option("--partial", type=click.Choice(["estimate", "exclude"]), default="estimate", show_default=True,
              help="Burning time without readings: estimated at the luminaire's own rate, or excluded from "
                   "baseline and actual.")
@click.option("--min-measured", type=click.FloatRange(0, 100), default=None,
              help="Share of burning hours measured (%) under which the data are insufficient "
                   "(default: the inventory's contract.min_measured_pct, else 90).")
@click.option("--lat", type=float, default=None, help="Latitude (default: the site's).")
@click.option("--lon", type=float, default=None, help="Longitude (default: the site's).")
@click.option("--tz", default=None, help="Time zone (default: the site's).")
@fmt_option
@out_option
def energy(site_file, state_dir, store, d0, d1, area, inventory, convention, partial, min_measured, lat, lon, tz,
           fmt, out) -> None:
    """Energy savings against the legacy baseline (IPMVP options A, B, C), docs/energy-kpi.md."""
    import historian.energy
    import historian.report

    _check_format(fmt, out)
    backend, ru_dir, site = open_store(site_file, state_dir, store)
    try:
        if site is None and (lat is None or lon is None or tz is None):
            # an auditor's store: the location must be said, never taken from the demo site
            src = click.get_current_context().get_parameter_source("site_file")
            if src == click.core.ParameterSource.DEFAULT:
                raise click.UsageError("with --store give --lat, --lon and --tz (the site's position and time "
                                       "zone: burning hours and local midnights depend on them), or --site FILE")
            site = _site(site_file, state_dir)
        if inventory:
            try:
                inv = historian.energy.load_inventory(inventory)
            except ValueError as e:
                raise click.UsageError(str(e)) from None
        elif site is not None:
            inv = historian.energy.inventory_from_site(site)
        else:
            raise click.UsageError("give --inventory (no site to take luminaire attributes from)")
        if not inv.points:
            raise click.UsageError("no luminaire with a legacy_w attribute in the site; give --inventory")
        s = site.config.site if site is not None else None
        lat = lat if lat is not None else s.latitude
        lon = lon if lon is not None else s.longitude
        tz = tz or s.timezone
        prog = _Progress(7)
        rollups = None
        if ru_dir is not None:
            # per-night summaries cached beside the store (recomputed when late data touches a night)
            from historian.rollup import Rollups

            rollups = Rollups(ru_dir)
        res = historian.energy.compute(backend, inv, lat=lat, lon=lon, tz=tz, d0=d0.date(), d1=d1.date(), area=area,
                        progress=prog, rollups=rollups, convention=convention, partial=partial,
                        min_measured_pct=min_measured)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    finally:
        backend.close()
    res.inputs.update(provenance({"site": f"lat {lat}, lon {lon}, {tz}"}))
    prog("rendering")
    _emit(historian.report.render(historian.report.energy_doc, res.as_dict(), fmt), out)


@report.command("availability")
@site_option
@click.option("--from", "d0", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "d1", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--area", default=None)
@fmt_option
@out_option
def availability_cmd(site_file, state_dir, d0, d1, area, fmt, out) -> None:
    """Equipment availability (contract: 99 %) per device, class, area and month, with outages."""
    import historian.availability
    import historian.report

    _check_format(fmt, out)
    site = _site(site_file, state_dir)
    backend = _reader(site)
    try:
        r = historian.availability.compute(backend, site, d0.date(), d1.date(), area=area, progress=_Progress(3))
    finally:
        backend.close()
    r["inputs"].update(provenance())
    _emit(historian.report.render(historian.availability.to_doc, r, fmt), out)


@report.command("interventions")
@site_option
@click.option("--journal", type=click.Path(exists=True), help="Alarm journal file or directory "
              "(default: <state_dir>/<alarms.journal>).")
@click.option("--from", "d0", type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "d1", type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@fmt_option
@out_option
def interventions_cmd(site_file, state_dir, journal, d0, d1, fmt, out) -> None:
    """Time to acknowledge and to clear alarms per priority, category, area: median, p90, month;
    work orders: time to acknowledge, dispatch, arrive, repair per priority, trade and
    municipality, and SLA breaches."""
    import historian.interventions
    import historian.report

    _check_format(fmt, out)
    site = _site(site_file, state_dir)
    path = journal or os.path.join(site.config.site.state_dir, site.config.alarms.journal)
    r = historian.interventions.compute(path, site.config.site.timezone, d0.date() if d0 else None, d1.date() if d1 else None)
    # the work orders' KPIs (issue 20): acknowledge, dispatch, arrive, repair; SLA breaches
    import historian.wo_kpi

    orders = historian.wo_kpi.load_orders(site.config.site.state_dir)
    kpi = historian.wo_kpi.compute(orders, site.config.site.timezone,
                                   {a.id: a.municipality or a.name or a.id for a in site.config.areas},
                                   d0.date() if d0 else None, d1.date() if d1 else None)
    wo_inputs = kpi.pop("wo_inputs", {})
    r["inputs"].update({f"work_orders_{k}": v for k, v in wo_inputs.items()} or {"work_orders_orders": 0})
    r.update(kpi)
    r["inputs"].update(provenance())
    _emit(historian.report.render(historian.interventions.to_doc, r, fmt), out)


def when(v: str, tz: str) -> float:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise click.BadParameter(f"{v!r}: expected an ISO date or time such as 2025-03-01 or "
                                 "2025-03-01T18:00 (site time zone unless given)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.timestamp()


@click.command()
@click.argument("tag")
@site_option
@click.option("--from", "t0", required=True, help="Start (ISO date/time, site time zone unless given).")
@click.option("--to", "t1", required=True, help="End (exclusive).")
@click.option("--agg", default=None, help="Aggregate interval (15min, 1h, 1d); raw points if omitted.")
@click.option("--fn", "fn", default="avg", show_default=True,
              type=click.Choice(["avg", "min", "max", "first", "last", "count", "time_avg", "integral"]))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@out_option
def history(tag, site_file, state_dir, t0, t1, agg, fn, fmt, out) -> None:
    """Recorded history of TAG (raw with status, or aggregated per interval), CSV or JSON."""
    import json

    from historian.query import aggregate
    from scada import quality as Q
    from scada.sections.common import parse_duration

    site = _site(site_file, state_dir)
    tz = site.config.site.timezone
    a, b = when(t0, tz), when(t1, tz)
    backend = _reader(site)
    try:
        raw = backend.read_raw(tag, a, b)
    finally:
        backend.close()
    zi = ZoneInfo(tz)

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, zi).isoformat(timespec="milliseconds")

    rows: list[dict[str, object]]
    if agg:
        try:
            interval = parse_duration(agg)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--agg") from None
        res = aggregate(raw, a, b, interval, fn)
        rows = [{"time": iso(t), fn: (None if v != v else float(v)), "good_points": int(c), "bad_points": int(n)}
                for t, v, c, n in zip(res.start.tolist(), res.value.tolist(), res.count.tolist(),
                                      res.bad.tolist(), strict=True)]
    else:
        rows = [{"time": iso(t), "value": (None if v != v else v), "status": Q.name(q)}
                for t, v, q in zip(raw.t.tolist(), raw.v.tolist(), raw.q.tolist(), strict=True)]
    if not rows:
        click.echo(f"no recorded points for {tag} in that range", err=True)
    if fmt == "json":
        _emit(json.dumps({"tag": tag, "from": iso(a), "to": iso(b), "points": rows}, indent=1) + "\n", out)
    else:
        import csv
        import io

        buf = io.StringIO()
        cols = list(rows[0].keys()) if rows else ["time", "value", "status"]
        w = csv.DictWriter(buf, cols, lineterminator="\n")
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
        _emit(buf.getvalue(), out)

