"""Core commands: run, demo, check, schema, gen-city."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import click

from scada.errors import CannotListen, CannotStart, ConfigError, StateDirInUse

REPO = Path(__file__).resolve().parents[1]
DEMO_SITE = REPO / "config" / "demo.yaml"


def load_or_exit(path: str):  # -> Site
    """Load a site file; on errors print every one of them and exit with code 2."""
    from scada.loader import load_site

    try:
        return load_site(path)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)


def resolve_state_dir(site) -> None:
    """Make the site's state directory absolute (relative to the site file)."""
    if not os.path.isabs(site.config.site.state_dir):
        site.config.site.state_dir = os.path.normpath(os.path.join(
            os.path.dirname(os.path.abspath(site.path)), site.config.site.state_dir
        ))


def lock_or_exit(site, command: str):  # -> StateLock, held until the process ends
    """Take the site's state directory for this process (one server per state directory):
    exit 2 naming the holder's PID when another server has it."""
    from scada.statelock import lock_state_dir

    state = site.config.site.state_dir
    try:
        return lock_state_dir(state)
    except StateDirInUse as e:
        click.echo(f"scada {command}: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"scada {command}: cannot use the state directory {state} "
                   f"(site.state_dir in {site.path}): {e.strerror or e}", err=True)
        sys.exit(2)


def listen_or_exit(site, command: str, *, simulate: bool, opcua_option: str | None,
                   control: tuple[str, int] | None = None) -> None:
    """Check every port the command will listen on before anything starts: exit 2 with one
    line per taken port naming the setting that chooses it. The demo moves a taken port that
    was not given on the command line to a free one and says so (see commands/ports.py)."""
    from commands.ports import check, site_listeners

    listeners = site_listeners(site, simulate=simulate, opcua_option=opcua_option, control=control)
    try:
        for note in check(listeners, move=simulate):
            click.echo(note)
    except CannotListen as e:
        for line in str(e).splitlines():
            click.echo(f"scada {command}: {line}", err=True)
        sys.exit(2)


def node_or_exit(site, node: str | None) -> str | None:
    """This server's node name in the site's redundant pair; exit 2 when the site is a pair and
    the name is missing or not one of its nodes, or when a name is given to a single server."""
    ha = site.config.ha
    if ha is None:
        if node:
            click.echo(f"scada run: --node {node} given but {site.path} has no ha: section "
                       "(a single server)", err=True)
            sys.exit(2)
        return None
    if not node:
        click.echo(f"scada run: {site.path} describes a redundant pair (ha.nodes: "
                   f"{', '.join(ha.nodes)}); say which node this server is with --node NAME "
                   "or SCADA_NODE=NAME", err=True)
        sys.exit(2)
    if node not in ha.nodes:
        click.echo(f"scada run: --node {node}: not a node of the pair in {site.path} "
                   f"(ha.nodes: {', '.join(ha.nodes)})", err=True)
        sys.exit(2)
    return node


def summary(site) -> str:
    """Devices, tags and alarm templates per area and kind."""
    per_area: dict[str, Counter[str]] = {}
    for d in site.all_devices():
        c = per_area.setdefault(d.area, Counter())
        c[d.kind] += 1
        c["_tags"] += len(site.schemas[d.profile_name])
        c["_alarms"] += len(d.profile.alarms)
    lines = [f"site {site.name!r}: {sum(1 for _ in site.all_devices())} devices, "
             f"{site.tag_count} tags, {len(site.config.areas)} areas, "
             f"{len(site.config.profiles)} profiles"]
    sched = site.config.schedules
    lines.append(f"schedules: {len(sched.profiles)} profiles, {len(sched.calendars)} calendar rules")
    lines.append(f"{'area':<24} {'devices':>8} {'tags':>9} {'alarms':>8}  kinds")
    for area in sorted(per_area):
        c = per_area[area]
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(c.items()) if not k.startswith("_"))
        ndev = sum(n for k, n in c.items() if not k.startswith("_"))
        lines.append(f"{area:<24} {ndev:>8} {c['_tags']:>9} {c['_alarms']:>8}  {kinds}")
    return "\n".join(lines)


def register(main: click.Group) -> None:
    main.add_command(check)
    main.add_command(schema)
    main.add_command(run)
    main.add_command(demo)
    main.add_command(gen_city)


@click.command("gen-city")
@click.option("--luminaires", type=click.IntRange(min=0), required=True, help="Light points.")
@click.option("--junctions", type=click.IntRange(min=0), default=0, show_default=True,
              help="Signalised junctions.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Site file to write.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (deterministic).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Device endpoints' host.")
@click.option("--base-port", type=click.IntRange(1024, 65000), default=20000, show_default=True,
              help="First TCP port; each cabinet and junction gets the next one.")
@click.option("--dali-share", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Share of light points behind DALI/MQTT gateways (the rest: Modbus cabinets).")
@click.option("--broker", default="embedded", show_default=True,
              help="MQTT broker of the gateways: 'embedded' or HOST:PORT.")
@click.option("--junctions-per-server", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Junction controllers sharing one OPC UA endpoint (simulator server).")
@click.option("--profiles", "profiles_dir", default=str(REPO / "config" / "profiles"),
              show_default=True, type=click.Path(file_okay=False), help="Profiles to include.")
def gen_city(luminaires: int, junctions: int, out: str, seed: int, host: str, base_port: int,
             dali_share: float, broker: str, junctions_per_server: int, profiles_dir: str) -> None:
    """Write a synthetic but realistic city (around Dijon) as a site file."""
    from scada.gencity import generate

    st = generate(luminaires, junctions, out_path=out, profiles_dir=profiles_dir, seed=seed,
                  host=host, base_port=base_port, dali_share=dali_share, broker=broker,
                  junctions_per_server=junctions_per_server)
    click.echo(f"wrote {out}: {st.luminaires} luminaires in {st.cabinets} cabinets and "
               f"{st.gateways} DALI gateways ({st.lines} lines), {st.junctions} junctions "
               f"({st.signal_groups} signal groups, {st.junction_servers} OPC UA endpoints), "
               f"{st.areas} areas")


@click.command()
@click.argument("site_file", type=click.Path(dir_okay=False))
def check(site_file: str) -> None:
    """Validate SITE_FILE and print a summary (exit 2 and every error if invalid).

    Beyond the site model, the drivers are built as `scada run` builds them (no connection is
    opened), so what only a driver can refuse (a poll group its profile does not declare,
    overlapping registers, a topic a child cannot fill, a missing certificate file) is found
    here too."""
    site = load_or_exit(site_file)
    from scada.runtime import Runtime

    try:
        # a pair's site is checked as its first node would run it (both read the same file)
        node = next(iter(site.config.ha.nodes)) if site.config.ha is not None else None
        Runtime(site, node=node).load_drivers()
    except ConfigError as e:
        click.echo(f"{site.path}: {e}", err=True)
        sys.exit(2)
    click.echo(summary(site))


@click.command()
@click.option("--out", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
def schema(out: str | None) -> None:
    """Print the JSON Schema of site files (for editor autocompletion)."""
    from scada.schema import site_json_schema

    text = json.dumps(site_json_schema(), indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {out}")
    else:
        click.echo(text)


def clock_options(fn):
    """``--start`` / ``--start-ref``: the site's clock starts at a chosen local time (the
    benchmarks' ``--at``); every process of a city given the same pair reads the same time."""
    fn = click.option("--start-ref", type=float, default=None, metavar="EPOCH",
                      help="Real POSIX time at which the clock reads --start (default: when "
                           "this process starts); give the server and the simulators the same.")(fn)
    return click.option("--start", "start", default=None, metavar="WHEN",
                        help="Start the site's clock at WHEN: HH:MM (today) or "
                             "YYYY-MM-DDTHH:MM, in the site's time zone unless an offset is "
                             "given (default: the real time).")(fn)


def start_time(site, start: str | None, start_ref: float | None) -> tuple[float | None, float | None]:
    """(start, start_ref) for :func:`scada.clock.make_clock` from the command line."""
    if start is None:
        if start_ref is not None:
            raise click.BadParameter("needs --start", param_hint="--start-ref")
        return None, None
    from scada.clock import parse_start

    try:
        return parse_start(start, site.config.site.timezone), start_ref
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--start") from None


@click.command()
@click.argument("site_file", type=click.Path(dir_okay=False))
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Clock rate (simulated s per real s).")
@click.option("--opcua-port", type=int, default=None, help="Override the site's OPC UA port.")
@click.option("--node", default=None, envvar="SCADA_NODE", metavar="NAME",
              help="Which node of the site's redundant pair (ha.nodes) this server is "
                   "(env SCADA_NODE); required when the site has an ha: section.")
@clock_options
def run(site_file: str, rate: float, opcua_port: int | None, node: str | None,
        start: str | None, start_ref: float | None) -> None:
    """Run the server for SITE_FILE until SIGINT/SIGTERM."""
    site = load_or_exit(site_file)
    node = node_or_exit(site, node)
    if opcua_port is not None:
        site.config.opcua.port = opcua_port
    resolve_state_dir(site)
    t0, ref = start_time(site, start, start_ref)
    lock = lock_or_exit(site, "run")
    listen_or_exit(site, "run", simulate=False,
                   opcua_option="--opcua-port" if opcua_port is not None else None)
    serve_or_exit(site, "run", rate, simulate=False, start=t0, start_ref=ref, node=node)
    lock.release()
    exit_without_teardown()


@click.command()
@click.option("--site", "site_file", default=str(DEMO_SITE), show_default=True,
              type=click.Path(dir_okay=False), help="Site file to demonstrate.")
@click.option("--opcua-port", type=click.IntRange(0, 65535), default=4840, show_default=True,
              help="OPC UA server port (when 4840 is taken and this option is not given, the "
                   "demo chooses a free port and prints it).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Clock rate (simulated s per real s).")
@click.option("--state-dir", default=None, help="Where the demo keeps its state (default: site's).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--fault", "faults", multiple=True, metavar="NAME:PATH[:k=v,...]",
              help="Simulator fault applied at start, e.g. door_open:centre/cab-001 "
                   "(repeatable; see `scada sim --help`).")
@click.option("--control", default="127.0.0.1:0", show_default=True,
              help="HOST:PORT of the simulators' JSON-lines fault channel ('' disables it).")
@clock_options
@click.pass_context
def demo(ctx: click.Context, site_file: str, opcua_port: int, rate: float, state_dir: str | None,
         duration: float | None, faults: tuple[str, ...], control: str, start: str | None,
         start_ref: float | None) -> None:
    """Run the demo city: simulators plus server in one process, nothing else to install.

    Faults can be injected at start (--fault) or while it runs through the control channel,
    e.g. ``echo '{"op": "inject", "path": "centre/cab-001/lum-03", "fault": "lamp_failure"}' |
    nc -q1 127.0.0.1 PORT``; the red dots appear on `scada alarms` and to OPC UA clients.

    Ports: the demo's defaults (OPC UA 4840, the simulated devices' ports, the embedded MQTT
    broker's 11883) that another program holds are replaced by free ones, printed at start.

    Time: simulators, drivers, schedules, alarms and the historian all run on the demo's clock
    (--start, --rate). By day the schedules switch the lights off: a lamp failure is then
    Suppressed (a dark lamp cannot be tested), and a red dot once they are on again at dusk."""
    from simulators.faults import FaultError, parse_fault_spec

    site = load_or_exit(site_file)
    site.config.opcua.port = opcua_port
    if state_dir:
        site.config.site.state_dir = state_dir
    resolve_state_dir(site)
    try:
        parsed = [parse_fault_spec(f) for f in faults]
    except FaultError as e:
        raise click.BadParameter(str(e), param_hint="--fault") from None
    from commands.sim import hostport

    ctl = hostport(control)
    t0, ref = start_time(site, start, start_ref)
    explicit = ctx.get_parameter_source("opcua_port") == click.core.ParameterSource.COMMANDLINE
    lock = lock_or_exit(site, "demo")
    listen_or_exit(site, "demo", simulate=True, opcua_option="--opcua-port" if explicit else None,
                   control=ctl)
    serve_or_exit(site, "demo", rate, simulate=True, duration=duration, faults=parsed, control=ctl,
                  start=t0, start_ref=ref)
    lock.release()
    exit_without_teardown()


def serve_or_exit(site, command: str, rate: float, **kw) -> None:
    """Run the server; what cannot start (a port another program took since the check, a
    state directory a service cannot create) is one line and exit 2, not a traceback."""
    try:
        asyncio.run(_serve(site, rate, **kw))
    except CannotStart as e:  # a port taken, a directory it cannot create
        click.echo(f"scada {command}: {e}", err=True)
        sys.exit(2)


async def _serve(site, rate: float, simulate: bool, duration: float | None = None,
                 faults: list | None = None, control: tuple[str, int] | None = None,
                 start: float | None = None, start_ref: float | None = None,
                 node: str | None = None) -> None:
    from scada.clock import make_clock
    from scada.runtime import Runtime

    clock = make_clock(rate, start, start_ref)
    sims = None
    if simulate:
        # the demo wires simulators in from the CLI side; the server never imports them
        from simulators.city import start_simulators

        try:
            sims = await start_simulators(site, clock)
        except OSError as e:  # the simulators name the device and its address
            raise CannotListen(e.strerror or str(e)) from None
    ctl_server = None
    try:
        if sims is not None:
            from simulators.faults import FaultError, open_fault_channel

            try:
                ctl_server = await open_fault_channel(site, sims.handles, faults or [], control,
                                                      click.echo)
            except FaultError as e:
                click.echo(f"--fault: {e}", err=True)
                raise SystemExit(2) from None
            except OSError as e:
                raise CannotListen(f"cannot listen on {control[0]}:{control[1]} for the simulators' "
                                   f"fault channel: {e.strerror or e}; choose another --control") from None
            if ctl_server is not None:
                click.echo(f"simulator fault channel: {control[0]}:{ctl_server.port} (JSON lines, "
                           "see simulators/faults.py)")
        rt = Runtime(site, clock, node=node)
        try:
            # drivers check what only they can (a profile's topic templates, register overlaps...)
            rt.load_drivers()
            rt.load_services()
        except ConfigError as e:
            click.echo(f"{site.path}: {e}", err=True)
            raise SystemExit(2) from None

        def ready() -> None:
            _print_ready(rt, simulate)

        if duration is not None:
            async def stopper() -> None:
                await asyncio.sleep(duration)
                os.kill(os.getpid(), 2)

            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(stopper()))
        await rt.serve_forever(ready)
    finally:
        if ctl_server is not None:
            await ctl_server.aclose()
        if sims is not None:
            await sims.aclose()


def exit_without_teardown() -> None:
    """Leave the process right after a clean stop. The runtime has closed everything that
    writes (alarm journal, historian and its spool, audit log, sockets) and ``asyncio.run`` has
    joined the worker threads; what is left is freeing the city's millions of objects one by
    one, which took several seconds at Paris size and made a SIGTERM look slower than the
    runtime's shutdown budget. Logs and standard streams are flushed first."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _print_ready(rt, simulate: bool) -> None:
    site = rt.site
    click.echo(f"{'demo ' if simulate else ''}site {site.name!r} running: "
               f"{rt.tagdb.device_count} devices, {len(rt.tagdb)} tags, "
               f"drivers: {', '.join(rt.drivers) or 'none'}, "
               f"services: {', '.join(rt.services) or 'none'}")
    from scada.clock import RealClock

    if not isinstance(rt.clock, RealClock):
        from zoneinfo import ZoneInfo

        tz = site.config.site.timezone
        now = rt.clock.datetime().astimezone(ZoneInfo(tz))
        click.echo(f"  clock: {now:%Y-%m-%d %H:%M:%S} {tz}, {rt.clock.rate:g} simulated s per s")
    ha = site.config.ha
    if ha is not None:
        click.echo(f"  ha: node {rt.ha.node} of the pair {' + '.join(ha.nodes)}, election key "
                   f"{ha.election_key(site.name)} on etcd {', '.join(ha.etcd)}, lease "
                   f"{ha.lease_ttl:g} s; role now {rt.ha.role.value} (`scada ha status`)")
    for name, svc in rt.services.items():
        info = getattr(svc, "connect_info", None)
        if info:
            click.echo(f"  {name}: {info() if callable(info) else info}")
    demo = rt.operations.demo_users_file
    if demo is not None and demo.exists():
        from scada.operations import read_demo_users

        click.echo(f"  demo accounts (from {demo}; use --password-file {demo} with the CLI):")
        for user, role, password in read_demo_users(demo):
            click.echo(f"    {user:<9} {role:<9} password {password}")
    click.echo("Press Ctrl+C to stop.")
