"""CLI: ``scada historian import|export|fingerprint`` (history in and out; docs/historian.md).

Thin: options to a :class:`historian.transfer.Mapping`, a progress bar on stderr, the summary
on stdout. The work is in :mod:`historian.transfer`.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from datetime import UTC, datetime

import click

from commands.report import open_store, site_option, store_option, when


def register(main: click.Group) -> None:
    main.add_command(historian)


class ProgressBar:
    """Rows done on stderr: redrawn in place on a terminal, one line per block otherwise."""

    def __init__(self, label: str, stream=None):
        self.label, self.t0 = label, time.monotonic()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = False

    def __call__(self, done: int, total: int, msg: str) -> None:
        el = time.monotonic() - self.t0
        rate = f"{done / el:,.0f}/s" if el > 0 and done else ""
        if total:
            k = 30 * min(done, total) // total
            bar = "[" + "#" * k + "." * (30 - k) + f"] {done:,}/{total:,}"
        else:
            bar = f"{done:,} rows"
        line = f"{self.label}: {bar} {rate} {el:6.1f} s  {msg}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            self.shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _iso(t: float | None, tz: str = "UTC") -> str:
    if t is None:
        return "-"
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(timespec="seconds")


def _mapping(mapping_file, **opts):
    from historian.transfer import ImportError_, load_mapping

    try:
        return load_mapping(mapping_file, **opts)
    except (ImportError_, OSError) as e:
        raise click.UsageError(str(e)) from None


_mapping_options = [
    click.option("--mapping", "mapping_file", type=click.Path(exists=True, dir_okay=False),
                 help="YAML mapping file (ts, tag, device, point, point_name, value, status, unit, tz, ...)."),
    click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "lp"]), default=None,
                 help="File format (default: from the file name)."),
    click.option("--layout", type=click.Choice(["long", "wide"]), default=None,
                 help="long: a row per reading; wide: a column per series (default: detected)."),
    click.option("--ts-col", "ts", default=None, help="Time column (default ts)."),
    click.option("--tag-col", "tag", default=None, help="Series column (full tag path; default tag)."),
    click.option("--device-col", "device", default=None, help="Device column (with --point-col or --point)."),
    click.option("--point-col", "point", default=None, help="Point column (series = device/point)."),
    click.option("--point", "point_name", default=None,
                 help="Point name appended to the device or wide column names (e.g. energy_wh)."),
    click.option("--value-col", "value", default=None, help="Value column (default value)."),
    click.option("--status-col", "status", default=None,
                 help="OPC UA status column (code or name); without it readings are Good."),
    click.option("--unit", default=None, help="Unit of the values: Wh (default), kWh, MWh, W, kW."),
    click.option("--tz", default=None, help="Time zone of times without an offset (default UTC)."),
    click.option("--ts-unit", default=None, type=click.Choice(["iso", "s", "ms", "us", "ns"]),
                 help="iso (text dates, default) or a number of s/ms/us/ns since 1970 UTC."),
    click.option("--prefix", default=None, help="Prefix added to every series name."),
    click.option("--delimiter", default=None, help="CSV field separator (default ,)."),
    click.option("--precision", default=None, type=click.Choice(["s", "ms", "us", "ns"]),
                 help="Line protocol time unit (default ns)."),
]


def mapping_options(f):
    for opt in reversed(_mapping_options):
        f = opt(f)
    return f


@click.group()
def historian() -> None:
    """Import and export recorded history (CSV long/wide, Parquet, InfluxDB line protocol)."""


@historian.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@site_option
@store_option
@mapping_options
@click.option("--rejects", type=click.Path(dir_okay=False), help="Write every rejected row (file, line, reason, text) to this CSV.")
@click.option("--chunk-rows", default=1_000_000, show_default=True, type=click.IntRange(1000, None),
              help="Rows per stored block.")
@click.option("--dry-run", is_flag=True, help="Read and check, store nothing.")
def import_cmd(files, site_file, state_dir, store, mapping_file, fmt, layout, ts, tag, device, point, point_name,
               value, status, unit, tz, ts_unit, prefix, delimiter, precision, rejects, chunk_rows, dry_run) -> None:
    """Import readings from FILES into the historian (idempotent; bad rows reported, never stored).

    \b
    scada historian import readings.csv --store audit --unit kWh --tz Europe/Paris
    scada historian import meters.csv --device-col meter --point energy_wh --value-col kwh --unit kWh
    scada historian import export.parquet
    """
    from historian.base import HistorianError
    from historian.transfer import ImportError_, ImportResult, import_file

    m = _mapping(mapping_file, format=fmt, layout=layout, ts=ts, tag=tag, device=device, point=point,
                 point_name=point_name, value=value, status=status, unit=unit, tz=tz, ts_unit=ts_unit,
                 prefix=prefix, delimiter=delimiter, precision=precision)
    backend, _, _ = open_store(site_file, state_dir, store, write=True)
    res = ImportResult()
    bar = ProgressBar("import")
    t0 = time.monotonic()
    try:
        for f in files:
            try:
                import_file(backend, f, m, chunk_rows=chunk_rows, progress=bar, result=res, dry_run=dry_run)
            except ImportError_ as e:
                raise click.ClickException(str(e)) from None
            except HistorianError as e:
                raise click.ClickException(f"{f}: {e}") from None
        backend.flush()
    finally:
        bar.close()
        backend.close()
    el = time.monotonic() - t0
    out = click.echo
    out(f"{'checked' if dry_run else 'imported'} {len(files)} file(s) into {backend.describe()} in {el:.1f} s")
    out(f"  rows read          {res.rows:>14,}")
    out(f"  readings stored    {res.stored:>14,}" + (" (dry run: nothing written)" if dry_run else ""))
    if res.skipped_blocks:
        out(f"  already imported   {res.skipped_readings:>14,}  ({res.skipped_blocks} blocks of an earlier import "
            "of the same file: skipped)")
    out(f"  rows rejected      {res.n_rejected:>14,}")
    for reason, n in res.rejected.most_common():
        out(f"    {n:>12,}  {reason}")
    out(f"  series             {len(res.series):>14,}")
    out(f"  time range         {_iso(res.t_min, m.tz)} .. {_iso(res.t_max, m.tz)}")
    if res.examples:
        out("first rejected rows:")
        for r in res.examples[:20]:
            out(f"  {r.file}:{r.line}: {r.reason}" + (f": {r.text}" if r.text else ""))
        if res.n_rejected > 20:
            out(f"  ... {res.n_rejected - 20:,} more" + (f" in {rejects}" if rejects else " (write them all with --rejects FILE)"))
    if rejects:
        with open(rejects, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "line", "reason", "text"])
            for r in res.examples:
                w.writerow([r.file, r.line, r.reason, r.text])
        click.echo(f"wrote {rejects}", err=True)


def _keys_for(backend, tags: str | None, inventory: str | None) -> list[str]:
    if inventory:
        from historian.energy import load_inventory, used_series

        try:
            inv = load_inventory(inventory)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        have = set(backend.series())
        return [k for k in used_series(inv) if k in have]
    return backend.series(tags or "*")


@historian.command("export")
@site_option
@store_option
@click.option("--from", "t0", required=True, help="Start (ISO date/time; site or --tz time zone unless given).")
@click.option("--to", "t1", required=True, help="End (exclusive).")
@click.option("--tags", default=None, help="Shell pattern of series (default all), e.g. '*/energy_wh'.")
@click.option("--inventory", type=click.Path(exists=True, dir_okay=False),
              help="Only the series the energy KPI reads for this inventory (luminaire energy_wh and power_w, "
                   "cabinet energy_wh): what its report's data fingerprint covers.")
@click.option("--format", "fmt", type=click.Choice(["csv", "csv-wide", "parquet", "lp"]), default="csv",
              show_default=True)
@click.option("--tz", default=None, help="Time zone of --from/--to without an offset (default: the site's).")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def export_cmd(site_file, state_dir, store, t0, t1, tags, inventory, fmt, tz, out) -> None:
    """Export recorded readings (with status and source time) and print their fingerprint."""
    from historian.transfer import export

    backend, _, site = open_store(site_file, state_dir, store)
    zone = tz or (site.config.site.timezone if site else "UTC")
    a, b = when(t0, zone), when(t1, zone)
    bar = ProgressBar("export")
    try:
        keys = _keys_for(backend, tags, inventory)
        fp = export(backend, keys, a, b, out, fmt, progress=bar)
    finally:
        bar.close()
        backend.close()
    click.echo(f"wrote {out}: {fp.readings:,} readings of {len(fp.counts):,} series")
    _print_fp(fp)


def _print_fp(fp) -> None:
    d = fp.as_dict(lambda t: datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds"))
    click.echo(f"fingerprint: {d['readings']:,} readings, {d['series']:,} series, {d['from']} .. {d['to']}")
    click.echo(f"content sha256: {d['content_sha256']}")


@historian.command("fingerprint")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@mapping_options
def fingerprint_cmd(file, mapping_file, fmt, layout, ts, tag, device, point, point_name, value, status, unit, tz,
                    ts_unit, prefix, delimiter, precision) -> None:
    """Recompute the data fingerprint of an exported (or any importable) FILE, as a report states it.

    The method is in docs/historian.md ("Data fingerprint"): an auditor compares this with the
    report's data_sha256 to know the report was computed from exactly these readings.
    """
    from historian.transfer import ImportError_, fingerprint_file

    m = _mapping(mapping_file, format=fmt, layout=layout, ts=ts, tag=tag, device=device, point=point,
                 point_name=point_name, value=value, status=status, unit=unit, tz=tz, ts_unit=ts_unit,
                 prefix=prefix, delimiter=delimiter, precision=precision)
    try:
        fp = fingerprint_file(file, m)
    except ImportError_ as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{os.path.basename(file)}: {fp.readings:,} readings of {len(fp.counts):,} series")
    _print_fp(fp)
