"""CLI commands: ``scada notify list`` (the notification queues and dead letters, read from the
alarms state directory) and ``scada notify replay`` (send dead letters again).

A replay changes no server state from this process: it writes a request file in
``<state_dir>/alarms/notify/replay/`` that the running server picks up (within 5 s), queues
the dead letters again at the tail of their channel and records the replay (who asked) in the
dead-letter log and its own log. Writing the request needs write access to the state
directory (the server's account), which is what authorises it. With no server running the
request waits for the next start.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from scada.clock import RealClock

_CLOCK = RealClock()


def register(main: click.Group) -> None:
    """Add this module's commands to the main group."""
    main.add_command(notify)


def _dir(site_file: str | None, directory: str | None) -> str:
    if directory:
        return directory
    from commands.core import DEMO_SITE, load_or_exit
    from scada.alarms.service import alarms_dir

    return alarms_dir(load_or_exit(site_file or str(DEMO_SITE)))


def _iso(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return ""


_site_opt = click.option("--site", "site_file", default=None,
                         help="Site file (default: the demo site).")
_dir_opt = click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
                        help="Alarms state directory (default: <state_dir>/alarms of the site).")


@click.group()
def notify() -> None:
    """Alarm notifications: queued and dead letters (list), send dead letters again (replay)."""


@notify.command("list")
@_site_opt
@_dir_opt
@click.option("--replayed", is_flag=True, help="Also list dead letters already replayed.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def list_(site_file: str | None, directory: str | None, replayed: bool, fmt: str) -> None:
    """List the notifications waiting in each channel's queue and the dead letters."""
    from scada.alarms.notify_queue import read_dead_letters, read_queues, replay_dir

    d = _dir(site_file, directory)
    if not os.path.isdir(d):
        click.echo(f"no alarms state directory {d} (has the server run with alarms enabled?)",
                   err=True)
        sys.exit(1)
    queues = read_queues(d)
    dead = read_dead_letters(d, include_replayed=replayed)
    rd = replay_dir(d)
    pending = sorted(n for n in os.listdir(rd) if n.endswith(".json")) if os.path.isdir(rd) else []
    if fmt == "json":
        click.echo(json.dumps({"queued": queues, "dead_letters": dead,
                               "replay_requests": pending}, indent=1, default=str,
                              ensure_ascii=False))
        return
    for ch, entries in queues.items():
        click.echo(f"queue {ch}: {len(entries)} waiting")
        for x in entries:
            e = x.get("event", {})
            click.echo(f"  {x.get('id')}  queued {_iso(x.get('created'))}  {x.get('kind')}  "
                       f"P{e.get('priority')} {e.get('alarm_id')}: {e.get('message') or ''}")
    click.echo(f"dead letters: {len(dead)}")
    for x in dead:
        flag = f"  (replayed {_iso(x['replayed_at'])})" if "replayed_at" in x else ""
        click.echo(f"  {x.get('id', '-')}  {_iso(x.get('ts'))}  {x.get('channel')}  "
                   f"{x.get('subject')}  [{x.get('reason')}]{flag}")
    if pending:
        click.echo(f"replay requests waiting for the server: {len(pending)}")


@notify.command()
@_site_opt
@_dir_opt
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@click.option("--channel", default=None, help="Send them through this channel instead.")
def replay(site_file: str | None, directory: str | None, ids: tuple[str, ...],
           everything: bool, channel: str | None) -> None:
    """Ask the running server to send dead letters again (IDS from `scada notify list`)."""
    from scada.alarms.notify_queue import read_dead_letters, request_replay

    d = _dir(site_file, directory)
    dead = {x["id"]: x for x in read_dead_letters(d) if "id" in x}
    if everything == bool(ids):
        raise click.UsageError("give dead-letter ids (see `scada notify list`) or --all")
    chosen = list(dead) if everything else list(ids)
    unknown = [i for i in chosen if i not in dead]
    if unknown:
        click.echo(f"no dead letter {', '.join(unknown)} in {d} (see `scada notify list`)",
                   err=True)
        sys.exit(2)
    if not chosen:
        click.echo("no dead letters to replay")
        return
    path = request_replay(d, chosen, channel=channel, user=getpass.getuser(),
                          ts=_CLOCK.time())
    click.echo(f"replay of {len(chosen)} notification(s) requested ({path}); the running "
               f"server queues them within 5 s")
