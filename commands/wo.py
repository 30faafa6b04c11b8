"""``scada wo list|show|create|assign|transition``: work orders through the running server.

Every command logs in to the server's web console as ``--user`` (password from
``--password-file``, else ``SCADA_OPCUA_PASSWORD``, else a prompt, as every other CLI command;
the server's own certificate is pinned when the site file is given) and calls the JSON API, so
the operator API checks the role matrix and the areas and audits each change with ``via`` =
``web <address>``. Nothing is changed locally.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from typing import Any

import click


def register(main: click.Group) -> None:
    main.add_command(wo)


class WoError(click.ClickException):
    pass


def _options(f):
    opts = [
        click.option("--site", "site_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Site file: the console's address and pinned certificate."),
        click.option("--url", default=None, help="The web console [default: from the site file's web: section]."),
        click.option("--user", "username", required=True, help="User to log in as."),
        click.option("--password-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the password (one line, or 'user role password' lines); else env "
                          "SCADA_OPCUA_PASSWORD; else a prompt."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


class Session:
    def __init__(self, o: dict[str, Any]):
        from commands.client import password_of
        from commands.gis import Console, _web_url

        url, pinned = o.get("url"), None
        if o.get("site_file"):
            from commands.core import load_or_exit

            site_url, pinned = _web_url(load_or_exit(o["site_file"]))
            url = url or site_url
        if not url:
            raise WoError("give --site (the site file) or --url (the web console)")
        self.c = Console(url, pinned)
        pw = password_of({"username": o["username"], "password_file": o.get("password_file")})
        try:
            st, body = self.c.request("POST", "/api/login", json.dumps({"user": o["username"], "password": pw}).encode(),
                                      {"Content-Type": "application/json"})
        except OSError as e:
            raise WoError(f"cannot reach the web console at {url}: {e} (is `scada run` running with web.enabled?)") from None
        if st != 200:
            raise WoError(f"login as {o['username']} refused ({st}): {(body or {}).get('detail', body)}")
        self.csrf = body["csrf"]

    def get(self, path: str) -> Any:
        st, body = self.c.request("GET", path)
        if st != 200:
            raise WoError(f"{path}: {st} {(body or {}).get('detail', body)}")
        return body

    def post(self, path: str, data: dict[str, Any]) -> Any:
        st, body = self.c.request("POST", path, json.dumps(data).encode(),
                                  {"Content-Type": "application/json", "X-CSRF-Token": self.csrf})
        if st not in (200, 201):
            raise WoError(f"refused ({st} {(body or {}).get('error', '')}): {(body or {}).get('detail', body)}")
        return body


def _t(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).isoformat(timespec="minutes")


def _row(o: dict[str, Any]) -> str:
    return (f"{o['id']:<10} {o['state']:<11} P{o['priority']} {o.get('trade') or '-'!s:<18} "
            f"{o.get('crew') or '-'!s:<10} {o.get('planned') or '-'!s:<10} {_t(o['due_repair']):<16} "
            f"{', '.join(o['devices'])}  {o['title']}")


def _day(ctx: Any, param: Any, value: str | None) -> str | None:
    """--planned: a calendar day of the site (YYYY-MM-DD)."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise click.BadParameter(f"{value!r}: expected a date YYYY-MM-DD")


@click.group()
def wo() -> None:
    """Work orders (interventions) through the running server's operator API."""


@wo.command("list")
@_options
@click.option("--state", default="open", show_default=True, help="open, a state name, or '' for all.")
@click.option("--area", default=None)
@click.option("--crew", default=None)
def wo_list(state: str, area: str | None, crew: str | None, **o: Any) -> None:
    """List work orders (highest priority first)."""
    from urllib.parse import urlencode

    q = urlencode({k: v for k, v in {"state": state, "area": area, "crew": crew}.items() if v})
    body = Session(o).get("/api/wo?" + q)
    if o["as_json"]:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{'order':<10} {'state':<11} P  {'trade':<18} {'crew':<10} {'planned':<10} {'repair due':<16} "
               "devices  title")
    for r in body["orders"]:
        click.echo(_row(r))
    click.echo(f"{body['total']} orders")


@wo.command("show")
@_options
@click.argument("order_id")
def wo_show(order_id: str, **o: Any) -> None:
    """One order with its checklist, notes and journal."""
    d = Session(o).get(f"/api/wo/{order_id}")
    if o["as_json"]:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(_row(d))
    click.echo(f"origin {d['origin']} · area {d['area']} · site {d['site']} · alarms {', '.join(d['alarms']) or '-'}"
               f" · respond by {_t(d['due_respond'])}")
    for s in d["checklist"]:
        click.echo(f"  [{'x' if s['done'] else ' '}] {s['text']}")
    for n in d["notes"]:
        click.echo(f"  note {_t(n['ts'])} {n['user']}: {n['text']}")
    if d["close_blocked_by"]:
        click.echo(f"  closing refused while active: {', '.join(d['close_blocked_by'])}")
    for r in d["journal"]:
        click.echo(f"  #{r['seq']} {_t(r['ts'])} {r['op']}{' -> ' + r['to'] if r.get('to') else ''} "
                   f"{r.get('user')} ({r.get('via')})")


@wo.command("create")
@_options
@click.argument("devices", nargs=-1, required=True)
@click.option("--priority", type=click.IntRange(1, 4), default=3, show_default=True)
@click.option("--trade", default=None, help="Trade (interventions.trades of the site).")
@click.option("--title", default="")
@click.option("--fault", default="", help="Fault class (an alarm name): one open order per device and fault.")
@click.option("--origin", type=click.Choice(["manual", "citizen", "alarm"]), default="manual", show_default=True)
def wo_create(devices: tuple[str, ...], priority: int, trade: str | None, title: str, fault: str, origin: str,
              **o: Any) -> None:
    """Create a work order on DEVICES."""
    body = Session(o).post("/api/wo", {"devices": list(devices), "priority": priority, "trade": trade, "title": title,
                                       "fault": fault, "origin": origin, "key": uuid.uuid4().hex})
    click.echo(json.dumps(body, indent=2) if o["as_json"] else body["message"])


@wo.command("assign")
@_options
@click.argument("order_id")
@click.option("--crew", required=True)
@click.option("--planned", callback=_day, default=None,
              help="Day of the visit, YYYY-MM-DD (site's calendar) [default: the order's, else today].")
def wo_assign(order_id: str, crew: str, planned: str | None, **o: Any) -> None:
    """Assign ORDER_ID to a crew for a day."""
    body = Session(o).post(f"/api/wo/{order_id}/assign", {"crew": crew, "planned": planned, "key": uuid.uuid4().hex})
    click.echo(json.dumps(body, indent=2) if o["as_json"] else body["message"])


@wo.command("transition")
@_options
@click.argument("order_id")
@click.argument("to", type=click.Choice(["approved", "scheduled", "in_progress", "on_hold", "completed", "closed",
                                         "cancelled"]))
@click.option("-m", "--comment", default="")
@click.option("--resolution", default=None, help="Resolution code (closing).")
@click.option("--override", is_flag=True, help="Close although the fault is still active (needs a comment; audited).")
@click.option("--planned", callback=_day, default=None,
              help="With 'scheduled': day of the visit, YYYY-MM-DD [default: the order's, else today].")
def wo_transition(order_id: str, to: str, comment: str, resolution: str | None, override: bool, planned: str | None,
                  **o: Any) -> None:
    """Move ORDER_ID to state TO (the lifecycle refuses illegal moves)."""
    body = Session(o).post(f"/api/wo/{order_id}/transition", {"to": to, "comment": comment, "resolution": resolution,
                                                             "override": override, "planned": planned,
                                                             "key": uuid.uuid4().hex})
    click.echo(json.dumps(body, indent=2) if o["as_json"] else body["message"])
