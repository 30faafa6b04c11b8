"""CLI: ``scada ha status SITE_FILE``: the redundant pair as etcd sees it (issue 22,
docs/redundancy.md "Watching the pair").

Read from etcd only (no server is asked, so it works when one of them is dead): the lease holder
with its fencing token and the time left on its lease, and each node's last published status
(role, token, writes refused, replication lag, published every second under
``<key>/nodes/<node>`` on the node's own lease: a node dead or cut off for longer than the lease
has no status any more and is shown as such).

Exit code: 0 when a server holds the lease, 3 when none does (a failover in progress, or both
servers down), 2 when etcd cannot be reached or the site file is wrong.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click


def register(main: click.Group) -> None:
    main.add_command(ha)


@click.group()
def ha() -> None:
    """Redundant pair (ha: section): roles, lease holder, replication lag."""


def _lag(st: dict[str, Any]) -> str:
    r = st.get("replication")
    if not isinstance(r, dict):
        return "n/a"
    recs, secs = r.get("lag_records"), r.get("lag_s")
    if recs is None and secs is None:
        return "n/a"
    out = f"{recs if recs is not None else '?'} records"
    if isinstance(secs, (int, float)):
        out += f", {secs:.2f} s"
    if r.get("connected") is False and st.get("role") != "active":
        out += " (not connected)"
    return out


def render(site_name: str, pair: dict[str, Any], nodes: list[str], now: float) -> str:
    h = pair.get("holder")
    lines = [f"pair {site_name!r}: election key {pair['key']} (etcd {pair['endpoint']})"]
    if h:
        lines.append(f"lease holder: {h.get('node')}  fencing token {h.get('token')}  lease "
                     f"{h.get('ttl_left')} s left of {h.get('granted_ttl')} s  (host "
                     f"{h.get('host')}, pid {h.get('pid')})")
    else:
        lines.append("lease holder: NONE (no server is active: failover in progress, or both "
                     "servers down or cut off from etcd)")
    lines.append(f"{'node':<10} {'role':<9} {'token':>8}  {'seen':>7}  {'refused':>7}  "
                 "replication lag          opcua")
    for n in nodes:
        st = pair["nodes"].get(n)
        if st is None:
            lines.append(f"{n:<10} {'down':<9} {'-':>8}  {'-':>7}  {'-':>7}  "
                         "n/a                      (no status in etcd: stopped, or cut off "
                         "for longer than the lease)")
            continue
        seen = now - float(st.get("time") or now)
        lines.append(f"{n:<10} {st.get('role', '?'):<9} {st.get('token') or '-':>8}  "
                     f"{seen:>5.1f} s  {st.get('writes_refused', 0):>7}  {_lag(st):<24} "
                     f"{st.get('opcua') or ''}")
    return "\n".join(lines)


@ha.command("status")
@click.argument("site_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print what etcd holds as JSON.")
def status(site_file: str, as_json: bool) -> None:
    """Roles of both servers, the lease holder, its fencing token and lease time left, and the
    replication lag, read from etcd (works while a server is down)."""
    from commands.core import load_or_exit
    from scada.ha.lease import read_pair

    site = load_or_exit(site_file)
    cfg = site.config.ha
    if cfg is None:
        click.echo(f"scada ha status: {site.path} has no ha: section (a single server, always "
                   "active)", err=True)
        sys.exit(2)
    try:
        pair = asyncio.run(read_pair(cfg.etcd, cfg.election_key(site.name)))
    except ConnectionError as e:
        click.echo(f"scada ha status: {e}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(pair, indent=2, default=str))
    else:
        click.echo(render(site.name, pair, list(cfg.nodes), time.time()))
    sys.exit(0 if pair.get("holder") else 3)
