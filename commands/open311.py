"""``scada open311 add-client|list-clients|remove-client``: the client applications (citizen
apps, FixMyStreet-style platforms) allowed to POST reports to the Open311 GeoReport v2 server.

``add-client NAME`` prints a new API key once and stores only its SHA-256 in
``<state_dir>/open311/clients.json`` (0600); the running server re-reads the file on the next
request. The client then acts as ``open311:NAME`` with the ``citizen-app`` role (it may file
citizen reports and nothing else). See ``docs/open311.md``.
"""

from __future__ import annotations

import json
import os
import time

import click


def register(main: click.Group) -> None:
    main.add_command(open311)


def _clients(site_file: str):  # -> Clients
    from commands.core import load_or_exit
    from scada.open311.clients import Clients

    site = load_or_exit(site_file)
    return Clients(os.path.join(site.state_dir, "open311", "clients.json"))


_site = click.option("--site", "site_file", type=click.Path(exists=True, dir_okay=False), required=True,
                     help="Site file (its state directory holds the client list).")


@click.group("open311")
def open311() -> None:
    """Open311 GeoReport v2 client applications (API keys)."""


@open311.command("add-client")
@click.argument("name")
@_site
@click.option("--contact", default="", help="Who runs the application (e-mail of its maintainer).")
def add_client(name: str, site_file: str, contact: str) -> None:
    """Register client application NAME and print its API key (shown once)."""
    try:
        key = _clients(site_file).add(name, contact, time.time())
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"client {name} registered; its api_key (shown once, keep it secret):")
    click.echo(key)


@open311.command("list-clients")
@_site
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_clients(site_file: str, as_json: bool) -> None:
    """The registered client applications (never their keys)."""
    rows = _clients(site_file).rows()
    if as_json:
        click.echo(json.dumps(rows, indent=1, sort_keys=True))
        return
    for name, r in sorted(rows.items()):
        when = time.strftime("%Y-%m-%d", time.gmtime(r.get("created", 0)))
        click.echo(f"{name}\tregistered {when}\t{r.get('contact') or '-'}")


@open311.command("remove-client")
@click.argument("name")
@_site
def remove_client(name: str, site_file: str) -> None:
    """Remove client application NAME: its key is refused from the next request on."""
    try:
        _clients(site_file).remove(name)
    except KeyError as e:
        raise click.ClickException(str(e.args[0])) from None
    click.echo(f"client {name} removed")
