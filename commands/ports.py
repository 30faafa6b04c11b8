"""Every port ``scada run``, ``scada demo`` and ``scada sim`` will listen on, checked before
anything starts.

A port already taken used to surface as a traceback from deep inside pymodbus, asyncua or
amqtt (44 lines for one taken port in the demo), or, for the OPC UA server, as a task crashing
and restarting forever behind a server that said it was running. Here each listening socket
is known in advance with the setting that chooses it, so a conflict is one line:

    cannot listen on 127.0.0.1:4840 for the OPC UA server: address already in use; another
    program holds it: stop it or choose another port with opcua.port in site.yaml (or --opcua-port)

``scada demo`` moves a listener whose port is taken to a free one instead (every peer of the
demo is in the same process, so the new address only has to be written into the in-memory
site) and prints what it chose; a port given explicitly on the command line is never moved.

What listens (knowledge of the simulators and of the MQTT driver's embedded broker lives
here, on the command side, so the server core stays free of it):

* the OPC UA server (``opcua.port``), unless ``opcua.enabled`` is off;
* the web console (``web.port``) when ``web.enabled`` is on;
* ``scada demo``/``scada sim``: each simulated device address, grouped as the simulators open
  them (``commands.sim.shard_key``: a Modbus ``connection.host``/``port``, an OPC UA
  ``connection.endpoint``), for the protocols that have a simulator installed;
* the embedded MQTT broker (``drivers.mqtt.embedded_port``) when a device uses
  ``broker: embedded``. For ``scada run`` an MQTT broker already answering there is fine: it is
  the one ``scada sim`` started in its own process;
* the demo's or simulators' fault channel (``--control``) when it names a port.

The check binds and listens on each address once and closes it: another program can still
take the port in the moment before the real server binds; that rarer case is caught where the
socket is really opened (one line too, see ``commands.core``).
"""

from __future__ import annotations

import errno
import random
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from scada.errors import CannotListen

#: ports the demo moves to are drawn here, below Linux's ephemeral range (32768-60999) where
#: the kernel picks the local port of outgoing connections
MOVE_RANGE = (20000, 32000)


@dataclass
class Listener:
    """One socket that will listen: where, what for, which setting chooses it."""

    host: str
    port: int
    what: str
    setting: str
    #: rewrites the in-memory site to listen on another port; None when the port was given
    #: explicitly by the operator (never moved)
    move: Callable[[int], None] | None = None
    #: for the embedded MQTT broker of ``scada run``: True when what holds the port is an
    #: MQTT broker (then it is shared, as designed, and not an error)
    shared_ok: Callable[[], bool] | None = None
    devices: list[str] = field(default_factory=list)
    #: the protocol whose simulator or driver opens it (None: the server itself)
    protocol: str | None = None


def probe(host: str, port: int) -> OSError | None:
    """None if ``host:port`` can be listened on now, else the error binding it gave.

    Binds like the servers do (``SO_REUSEADDR``, every address ``host`` resolves to) and also
    listens: on Linux two sockets with ``SO_REUSEADDR`` may both bind a port that neither
    listens on yet, and only ``listen`` reports the conflict.
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {e.strerror}")
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
                s.listen(1)
            except OSError as e:
                return e
    return None


def free_port(host: str, taken: set[tuple[str, int]]) -> int:
    """A port ``host`` can listen on now, not in ``taken``, below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(*MOVE_RANGE)
        if (host, p) not in taken and probe(host, p) is None:
            return p
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # let the kernel choose
        s.bind((host, 0))
        return s.getsockname()[1]


def _reason(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use; another program holds it: stop it or choose another port"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges): choose a port above 1024"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"address not available on this machine ({e.strerror}): choose a local address"
    return f"{e.strerror or e}"


def site_listeners(site: Any, *, simulate: bool, opcua_option: str | None,
                   control: tuple[str, int] | None = None, control_option: str = "--control",
                   server: bool = True) -> list[Listener]:
    """What ``scada run`` (``simulate=False``), ``scada demo`` (``simulate=True``) or
    ``scada sim`` (``server=False``) will listen on.

    ``opcua_option`` is the command-line option that set the OPC UA port (``--opcua-port``),
    or None when it comes from the site file (then the demo may move it).
    """
    cfg = site.config
    file = site.path
    out: list[Listener] = []
    if server and cfg.opcua.enabled:
        ua = cfg.opcua

        def move_opcua(p: int) -> None:
            ua.port = p

        setting = opcua_option or f"opcua.port in {file} (or --opcua-port)"
        out.append(Listener(ua.host, ua.port, "the OPC UA server", setting,
                            None if opcua_option else move_opcua))
    web = getattr(cfg, "web", None)
    if server and web is not None and web.enabled:

        def move_web(p: int) -> None:
            web.port = p

        out.append(Listener(web.host, web.port, "the web console", f"web.port in {file}", move_web))
    if simulate:
        out.extend(_device_listeners(site))
    # scada run and scada sim share an MQTT broker already answering on the embedded port (the
    # one scada sim started; several sim shards share one); the demo moves to its own
    broker = _embedded_broker(site, shared_ok=not (server and simulate))
    if broker is not None:
        out.append(broker)
    if control is not None and control[1] != 0:
        out.append(Listener(control[0], control[1], "the simulators' fault channel", control_option))
    return out


def _device_listeners(site: Any) -> list[Listener]:
    """The addresses the installed simulators open for the site's devices."""
    from commands.sim import shard_key

    simulated = {ep.name for ep in entry_points(group="scada.simulators")}
    groups: dict[tuple, list[Any]] = {}
    for d in site.all_devices():
        if d.protocol in simulated and d.enabled:
            key = shard_key(d)
            if key[0] in ("tcp", "endpoint"):
                groups.setdefault(key, []).append(d)
    out = []
    for key, devs in groups.items():
        tops = [d for d in devs if d.parent is None] or devs
        first = tops[0]
        where = site.origins.get(first.path, site.path)
        more = f" (and {len(tops) - 1} more devices)" if len(tops) > 1 else ""
        if key[0] == "tcp":
            host, port = key[1], int(key[2])
            setting = f"connection.port of device {first.path} at {where}"
            mover = _move_tcp(site, host, port)
        else:
            url = urllib.parse.urlsplit(key[1])
            if url.port is None:
                continue  # the simulator reports an endpoint without a port itself
            host, port = url.hostname or "127.0.0.1", url.port
            setting = f"connection.endpoint of device {first.path} at {where}"
            mover = _move_endpoint(site, key[1])
        out.append(Listener(host, port, f"the {first.protocol} simulator of {first.path}{more}",
                            setting, mover, devices=[d.path for d in tops], protocol=first.protocol))
    return out


def _move_tcp(site: Any, host: str, port: int) -> Callable[[int], None]:
    def move(new: int) -> None:
        for d in site.all_devices():
            c = d.connection
            if c.get("port") == port and c.get("host", "127.0.0.1") == host and not c.get("endpoint"):
                c["port"] = new  # children of a group share their dict: idempotent
    return move


def _move_endpoint(site: Any, endpoint: str) -> Callable[[int], None]:
    def move(new: int) -> None:
        u = urllib.parse.urlsplit(endpoint)
        host = u.hostname or "127.0.0.1"
        netloc = f"[{host}]:{new}" if ":" in host else f"{host}:{new}"
        url = urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
        for d in site.all_devices():
            if d.connection.get("endpoint") == endpoint:
                d.connection["endpoint"] = url
    return move


def _embedded_broker(site: Any, shared_ok: bool) -> Listener | None:
    """The embedded MQTT broker's address when an enabled device uses ``broker: embedded``."""
    if not any(d.protocol == "mqtt" and d.enabled and d.connection.get("broker", "embedded") == "embedded"
               for d in site.devices):
        return None
    from drivers.mqtt.broker import mqtt_answers
    from drivers.mqtt.mapping import MqttOptions

    opts = MqttOptions.model_validate(site.config.drivers.get("mqtt", {}) or {})

    def move(p: int) -> None:
        site.config.drivers.setdefault("mqtt", {})["embedded_port"] = p

    host, port = opts.embedded_host, opts.embedded_port
    return Listener(host, port, "the embedded MQTT broker",
                    f"drivers.mqtt.embedded_port in {site.path}", move,
                    shared_ok=(lambda: mqtt_answers(host, port)) if shared_ok else None,
                    protocol="mqtt")


def check(listeners: list[Listener], *, move: bool) -> list[str]:
    """Probe every listener. With ``move`` (the demo), a taken port that may move is moved to
    a free one; otherwise each conflict raises. Returns one line per move made.

    Raises :class:`~scada.errors.CannotListen` listing every conflict, one line each.
    """
    notes: list[str] = []
    errors: list[str] = []
    planned: dict[tuple[str, int], Listener] = {}
    for ls in listeners:
        if ls.port == 0:
            continue
        clash = planned.get((ls.host, ls.port))
        err: OSError | None
        if clash is not None:
            err = OSError(errno.EADDRINUSE, f"the one of {clash.what} ({clash.setting})")
        else:
            err = probe(ls.host, ls.port)
        if err is not None and clash is None and err.errno == errno.EADDRINUSE \
                and ls.shared_ok is not None and ls.shared_ok():
            continue  # an MQTT broker answers there: scada sim's, shared by design
        if err is not None and move and ls.move is not None and err.errno == errno.EADDRINUSE:
            new = free_port(ls.host, set(planned))
            notes.append(f"port {ls.port} for {ls.what} is in use; the demo uses {ls.host}:{new} "
                         f"instead ({ls.setting})")
            ls.move(new)
            ls.port = new
        elif err is not None:
            head = f"cannot listen on {ls.host}:{ls.port} for {ls.what}"
            if clash is not None:
                errors.append(f"{head}: the port is also {err.strerror}; change {ls.setting}")
            else:
                errors.append(f"{head}: {_reason(err)} with {ls.setting}")
            continue
        planned[(ls.host, ls.port)] = ls
    if errors:
        raise CannotListen("\n".join(errors))
    return notes
