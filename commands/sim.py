"""``scada sim SITE.yaml``: run every simulated device of a site, with fault injection.

The simulators are found through the ``scada.simulators`` entry points (one per protocol) by
:func:`simulators.city.start_simulators`; this module imports them only inside the command, so
the server core never depends on them.

Faults: ``--fault NAME:DEVICE_PATH[:key=value,...]`` applied at start, and a JSON-lines control
channel (``--control HOST:PORT``, loopback, port 0 = any free port, printed at start and written
to ``--ready-file``) to inject and clear faults while running; see ``simulators/faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import click

from commands.core import clock_options, start_time
from scada.files import replace_text


def register(main: click.Group) -> None:
    """Add this module's commands to the main group."""
    main.add_command(sim)


def hostport(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT such as 127.0.0.1:0, got {value!r}")
    return host or "127.0.0.1", int(port)


@click.command()
@click.argument("site_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--rate", default=1.0, show_default=True, type=float,
              help="Clock rate (simulated seconds per real second).")
@click.option("--fault", "faults", multiple=True, metavar="NAME:PATH[:k=v,...]",
              help="Fault applied at start, e.g. lamp_failure:centre/cab-001/lum-03 "
                   "or slow:centre/cab-002:delay=1.5 (repeatable).")
@click.option("--protocol", "protocols", multiple=True,
              help="Only simulate these protocols (repeatable; default: all installed).")
@click.option("--control", default="127.0.0.1:0", show_default=True,
              help="HOST:PORT of the JSON-lines fault control channel ('' disables it).")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write {pid, control: [host, port], devices} as JSON here once serving.")
@click.option("--duration", type=float, default=None, help="Stop after this many real seconds.")
@click.option("--shard", default=None, metavar="I/N",
              help="Simulate only top-level devices number I, I+N, I+2N... (0-based; their "
                   "children follow): split a big city over N processes.")
@clock_options
def sim(site_file: str, rate: float, faults: tuple[str, ...], protocols: tuple[str, ...],
        control: str, ready_file: str | None, duration: float | None, shard: str | None,
        start: str | None, start_ref: float | None) -> None:
    """Run the simulated devices of SITE_FILE until Ctrl+C (no SCADA server)."""
    from scada.errors import ConfigError
    from scada.loader import load_site
    from simulators.faults import FaultError, parse_fault_spec

    try:
        site = load_site(site_file, validate_drivers=False)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)
    if shard is not None:
        site = _shard(site, shard)
    try:
        parsed = [parse_fault_spec(f) for f in faults]
    except FaultError as e:
        raise click.BadParameter(str(e), param_hint="--fault") from None
    if rate <= 0:
        raise click.BadParameter("must be > 0", param_hint="--rate")
    ctl = hostport(control)
    _check_ports(site, ctl, protocols)
    t0, ref = start_time(site, start, start_ref)
    try:
        asyncio.run(_run(site, rate, parsed, list(protocols) or None, ctl, ready_file, duration,
                         t0, ref))
    except (FaultError, OSError, ValueError) as e:
        click.echo(f"scada sim: {e}", err=True)
        sys.exit(1)


def _check_ports(site, ctl: tuple[str, int] | None, protocols: tuple[str, ...]) -> None:
    """Every address the simulators will listen on, checked first: a taken one is one line
    naming the device and where the site file sets its port, exit 2 (commands/ports.py)."""
    from commands.ports import check, site_listeners
    from scada.errors import CannotListen

    listeners = [ls for ls in site_listeners(site, simulate=True, opcua_option=None, control=ctl,
                                             server=False)
                 if not protocols or ls.protocol is None or ls.protocol in protocols]
    try:
        check(listeners, move=False)
    except CannotListen as e:
        for line in str(e).splitlines():
            click.echo(f"scada sim: {line}", err=True)
        sys.exit(2)


def _shard(site, spec: str):
    """The same site with only shard I of N of its top-level devices (round robin)."""
    from scada.site import Site

    i, sep, n = spec.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise click.BadParameter(f"expected I/N with 0 <= I < N, e.g. 0/4; got {spec!r}",
                                 param_hint="--shard")
    k, m = int(i), int(n)
    # devices sharing a listening address (junctions on one OPC UA endpoint, cabinets on one
    # host:port with several unit ids) must be served by the same process: shard by address
    order: dict[tuple, int] = {}
    for d in site.devices:
        order.setdefault(shard_key(d), len(order))
    keep = [d for d in site.devices if order[shard_key(d)] % m == k]
    return Site(config=site.config, path=site.path, devices=keep, schemas=site.schemas,
                origins=site.origins)


def shard_key(dev) -> tuple:
    """The listening address a simulator opens for ``dev`` (its own path when it has none)."""
    c = dev.connection
    if c.get("endpoint"):
        return ("endpoint", c["endpoint"])
    if c.get("port") is not None:
        return ("tcp", c.get("host", "127.0.0.1"), c["port"])
    return ("device", dev.path)


def _write_ready(path: str, info: dict) -> None:
    """Atomically write the ready file (another process polls for it)."""
    replace_text(path, json.dumps(info), fsync=False)


async def _run(site, rate: float, faults, protocols, ctl, ready_file, duration,
               start: float | None = None, start_ref: float | None = None) -> None:
    from scada.clock import make_clock
    from simulators.city import start_simulators
    from simulators.faults import ControlServer, open_fault_channel

    clock = make_clock(rate, start, start_ref)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sims = await start_simulators(site, clock, protocols)
    server: ControlServer | None = None
    try:
        server = await open_fault_channel(site, sims.handles, faults, ctl, click.echo)
        counts = site.by_protocol()
        desc = ", ".join(f"{p} {len(counts.get(p, []))} devices" for p in sims.handles)
        click.echo(f"simulating site {site.name!r} at rate {rate:g}: {desc or 'nothing'}")
        if server is not None:
            click.echo(f"control channel: {ctl[0]}:{server.port} (JSON lines, see simulators/faults.py)")
        if ready_file:
            info = {"pid": os.getpid(),
                    "control": [ctl[0], server.port] if server is not None else None,
                    "devices": {p: len(counts.get(p, [])) for p in sims.handles}}
            await asyncio.to_thread(_write_ready, ready_file, info)
        sys.stdout.flush()
        if duration is not None:
            loop.call_later(duration, stop.set)
        await stop.wait()
    finally:
        if server is not None:
            await server.aclose()
        await sims.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
