"""CLI commands: ``scada alarms`` (active, history, metrics, CSV/JSON export) reading the alarm
journal directly, and ``scada ack`` / ``scada shelve`` / ``scada out-of-service`` calling the
running server's OPC UA Alarms & Conditions methods (so the role checks and the audit are the
server's, whoever calls)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

import click

from scada.clock import RealClock
from scada.sections.common import parse_duration

_CLOCK = RealClock()  # the CLI's 'now' (the server's clock may be simulated)

FIELDS = ("seq", "ts", "time", "alarm_id", "device", "area", "name", "category", "priority",
          "severity", "event", "state", "active", "acked", "shelved", "suppressed", "oos",
          "user", "comment", "value", "message")
RETAINED_HIDDEN = ("Suppressed", "Shelved", "OutOfService")


def register(main: click.Group) -> None:
    """Add this module's commands to the main group."""
    main.add_command(alarms)
    main.add_command(ack)
    main.add_command(comment)
    main.add_command(shelve)
    main.add_command(roles_cmd)
    main.add_command(out_of_service)


def _journal_dir(site_file: str | None, directory: str | None) -> tuple[str, Any]:
    """(journal directory, the site's ``alarms:`` config or None when only ``--dir`` is given)."""
    if directory and not site_file:
        return directory, None
    from commands.core import DEMO_SITE, load_or_exit
    from scada.alarms.service import alarms_dir

    site = load_or_exit(site_file or str(DEMO_SITE))
    return directory or alarms_dir(site), site.config.alarms


def parse_time(s: str | None, now: float | None = None) -> float | None:
    """``2026-01-05T18:00``, ``2026-01-05`` (UTC unless an offset is given), ``2h`` / ``3d``
    (that long ago) or POSIX seconds."""
    if s is None:
        return None
    now = _CLOCK.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", s) and float(s) > 1e8:
        return float(s)
    try:
        return now - parse_duration(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise click.BadParameter(f"expected an ISO date/time (2026-01-05T18:00) or an age "
                                 f"(2h, 3d), got {s!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _iso(ts: Any) -> str:
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds") if isinstance(
        ts, (int, float)) else ""


def _rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: e.get(k) for k in FIELDS}, "time": _iso(e.get("ts"))} for e in entries]


def _emit(rows: list[dict[str, Any]], fmt: str, out: str | None, columns: tuple[str, ...]) -> None:
    if fmt == "json":
        text = json.dumps(rows, indent=1, default=str, ensure_ascii=False) + "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    else:
        if not rows:
            text = "no alarms\n"
        else:
            rows = [{k: (f"{v:.6g}" if isinstance(v, float) and k == "value" else v)
                     for k, v in r.items()} for r in rows]
            widths = {c: max(len(c), *(len(str(r.get(c) if r.get(c) is not None else "")) for r in rows))
                      for c in columns}
            lines = ["  ".join(c.ljust(min(widths[c], 60)) for c in columns)]
            for r in rows:
                lines.append("  ".join(str(r.get(c) if r.get(c) is not None else "")[:60].ljust(
                    min(widths[c], 60)) for c in columns))
            text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        click.echo(f"wrote {len(rows)} rows to {out}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.option("--site", "site_file", default=None, help="Site file (default: the demo site).")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Alarm journal directory (default: <state_dir>/alarms of the site).")
@click.option("--history", is_flag=True, help="List journaled transitions instead of the active set.")
@click.option("--since", default=None, help="With --history/--metrics: from (ISO time or age: 2h, 7d).")
@click.option("--until", default=None, help="With --history/--metrics: until (ISO time or age).")
@click.option("--device", default=None, help="Only alarms of devices under this path prefix.")
@click.option("--all", "show_all", is_flag=True, help="Active set: include suppressed, shelved, "
              "out-of-service alarms.")
@click.option("--metrics", is_flag=True, help="ISA-18.2 performance metrics.")
@click.option("--format", "fmt", type=click.Choice(["text", "csv", "json"]), default="text",
              show_default=True)
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Write to this file (CSV/JSON export).")
def alarms(site_file: str | None, directory: str | None, history: bool, since: str | None,
           until: str | None, device: str | None, show_all: bool, metrics: bool, fmt: str,
           output: str | None) -> None:
    """Show alarms from the journal: the active set (red dots), --history, or --metrics."""
    from scada.alarms import metrics as alarm_metrics
    from scada.alarms.journal import current_states, read_journal

    d, cfg = _journal_dir(site_file, directory)
    if not os.path.isdir(d):
        click.echo(f"no alarm journal in {d} (has the server run with alarms enabled?)", err=True)
        sys.exit(1)
    pre = device.rstrip("/") if device else None

    def mine(e: dict[str, Any]) -> bool:
        dev = str(e.get("device", ""))
        return pre is None or dev == pre or dev.startswith(pre + "/")

    if not (history or metrics):
        states, _, _ = current_states(d)
        current = [e for e in states.values()
                   if mine(e) and (e.get("active") or not e.get("acked", True))
                   and (show_all or e.get("state") not in RETAINED_HIDDEN)]
        current.sort(key=lambda e: (e.get("priority", 4), -e.get("ts", 0)))
        _emit(_rows(current), fmt, output,
              ("time", "state", "priority", "alarm_id", "value", "message"))
        if fmt == "text" and not output:
            mine_all = [e for e in states.values() if mine(e)]
            retained = [e for e in mine_all if e.get("active") or not e.get("acked", True)]
            shown = [e for e in retained if e.get("state") not in RETAINED_HIDDEN]
            click.echo(
                f"{len(shown)} red dots ({sum(1 for e in shown if not e.get('acked', True))} "
                f"unacknowledged); hidden: "
                f"{sum(1 for e in retained if e.get('state') == 'Suppressed')} suppressed, "
                f"{sum(1 for e in mine_all if e.get('shelved'))} shelved, "
                f"{sum(1 for e in mine_all if e.get('oos'))} out of service", err=True)
        return
    t0, t1 = parse_time(since), parse_time(until)
    entries = [e for e in read_journal(d, since=t0, until=t1) if mine(e)]
    if metrics:
        chat = {} if cfg is None else {"chatter_count": cfg.chatter.count,
                                       "chatter_window": cfg.chatter.window}
        m = alarm_metrics.compute(entries, now=t1 or _CLOCK.time(), **chat)
        if fmt == "json":
            _emit_json(m, output)
        else:
            text = alarm_metrics.format_text(m, _iso) + "\n"
            if output:
                with open(output, "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                click.echo(text, nl=False)
        return
    _emit(_rows(entries), fmt, output,
          ("time", "event", "state", "alarm_id", "priority", "user", "comment", "message"))


def _emit_json(obj: Any, out: str | None) -> None:
    text = json.dumps(obj, indent=1, default=str) + "\n"
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)


# ----------------------------------------------------------------------------- actions over OPC UA
def _client_opts(f: Any) -> Any:
    """The connection options of the other client commands (`scada tags`, `scada write`:
    endpoint, user, password, security policy and certificates, namespace) plus a comment."""
    from commands.client import _connection_options

    f = click.option("--comment", "-m", default="", help="Comment recorded with the action.")(f)
    return _connection_options(f)


def call(o: dict[str, Any], what: str, **kw: Any) -> None:
    """Run one operator action on the server as the authenticated ``--user`` and print the
    answer (exit 1 when refused). The server's operator API checks, performs and audits it."""
    from commands.client import _connect, _ns, password_of
    from scada.opcua.client import ClientError, act

    if o.get("username"):
        password_of(o)

    async def go() -> str:
        c = await _connect(o)
        try:
            return await act(c, await _ns(c, o["namespace"]), what, **kw)
        finally:
            await c.disconnect()

    try:
        msg = asyncio.run(go())
    except ClientError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps({"result": msg}) if o.get("as_json") else msg)


@click.command()
@click.argument("alarm_id")
@_client_opts
def ack(alarm_id: str, comment: str, **o: Any) -> None:
    """Acknowledge ALARM (area/device/name) through the server (operator role)."""
    call(o, "acknowledge", alarm_id=alarm_id, comment=comment)


@click.command()
@click.argument("alarm_id")
@_client_opts
def comment(alarm_id: str, comment: str, **o: Any) -> None:
    """Add a comment to ALARM (operator role): -m "text"."""
    if not comment.strip():
        raise click.UsageError("the comment is empty: -m/--comment TEXT")
    call(o, "comment", alarm_id=alarm_id, comment=comment)


@click.command()
@click.argument("alarm_id")
@_client_opts
@click.option("--duration", "-d", default=None, help="Timed shelve (15min, 2h); default: one-shot.")
@click.option("--unshelve", is_flag=True, help="Unshelve instead.")
def shelve(alarm_id: str, comment: str, duration: str | None, unshelve: bool, **o: Any) -> None:
    """Shelve ALARM (engineer role): timed with --duration, else one-shot; --unshelve."""
    if unshelve:
        call(o, "unshelve", alarm_id=alarm_id, comment=comment)
        return
    if not comment:
        raise click.UsageError("shelving needs a reason: --comment/-m")
    secs = parse_duration(duration) if duration else None
    call(o, "shelve", alarm_id=alarm_id, comment=comment, duration=secs)


@click.command("out-of-service")
@click.argument("device")
@_client_opts
@click.option("--back", is_flag=True, help="Put the device back in service.")
def out_of_service(device: str, comment: str, back: bool, **o: Any) -> None:
    """Take DEVICE (area/device) out of service for works, or --back (engineer role)."""
    call(o, "out_of_service", device=device, oos=not back, comment=comment)


@click.command("roles")
@click.option("--markdown", is_flag=True, help="The table as in docs/opcua.md.")
def roles_cmd(markdown: bool) -> None:
    """The role matrix: which role may do what, on every front end (OPC UA, CLI, web)."""
    from scada.operations import roles

    if markdown:
        click.echo(roles.markdown(), nl=False)
        return
    width = max(len(a.name) for a in roles.ACTIONS)
    click.echo(f"{'action':<{width}}  " + "  ".join(f"{r:<8}" for r in roles.ROLES))
    for a in roles.ACTIONS:
        click.echo(f"{a.name:<{width}}  " + "  ".join(f"{'yes' if roles.allows(r, a.name) else '-':<8}" for r in roles.ROLES)
                   + f"  {a.what}")
