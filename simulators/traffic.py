# One module (over ~600 lines): the simulator of one device class (OPC UA information model, phases, faults, reboots).
"""Traffic-controller simulator: junction controllers served over OPC UA (asyncua servers).

Information model: ``docs/devices/traffic-controller.md``. In short, each junction is an Object
under ``Objects/<name>`` in namespace :data:`NAMESPACE` with string NodeIds equal to its dotted
browse path (``J1.Status.Mode``, ``J1.SignalGroups.SG03.State`` ...).

The controller (:class:`JunctionModel`, pure, no I/O) runs a fixed-time plan on the injectable
:class:`~scada.clock.Clock`: 4-12 signal groups in 2-4 phases, amber 3 s and all-red 2 s between
phases, plan changes taking effect at the end of the running cycle (the synchronisation point
of a coordinated plan). Its alarm status follows NTCIP 1202 ``unitAlarmStatus1`` /
``shortAlarmStatus`` and French DIASER feedback: a conflict (two conflicting groups green) or a
red lamp failure is critical and latches fail-safe flashing amber until an operator resets it
after repair; door open, mains failure (lamps dark, controller on its UPS), detector fault,
coordination loss and clock drift are reported.

Commands: writable variables ``Commands.PlanRequest`` (Int32), ``Commands.ForceFlashing``
(Boolean), ``Commands.Reset`` (Boolean) and methods ``SelectPlan``, ``SetFlashing``,
``ResetFaults`` on the junction object. The controller refuses what it cannot do with the OPC UA
status a real one would return: unknown plan -> ``BadOutOfRange``, reset while the cause of a
critical fault is still present -> ``BadInvalidState``, wrong type -> ``BadTypeMismatch``.

Scale: an asyncua ``Server`` costs ~1.1 s and ~40 MB to start (measured, see the doc), a
junction inside a shared server ~9 ms and ~330 KB. So junctions are grouped by endpoint: every
device whose ``connection.endpoint`` names the same URL is served by ONE server under its own
object (``connection.object``, default its id). A city puts e.g. 100 junctions per port.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService, AttributeValue, NodeData
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from scada import quality as Q
from scada.clock import Clock
from scada.opcua import _asyncua
from scada.site import DeviceInstance, Site

from .faults import FaultError

log = logging.getLogger("simulators.traffic")

NAMESPACE = "urn:city-scada:traffic-controller"

# Signal group states (Int32 enumeration, see the doc)
SG_DARK, SG_RED, SG_AMBER, SG_GREEN, SG_FLASHING_AMBER = 0, 1, 2, 3, 4
# Operating modes
MODE_NORMAL, MODE_FLASHING, MODE_DARK, MODE_MANUAL = 0, 1, 2, 3

AMBER_S = 3
ALL_RED_S = 2

#: Faults shared in name with the other simulators, then the controller's own.
FAULTS = (
    "offline", "silent", "door_open", "mains_failure", "conflict", "red_lamp_failure",
    "amber_lamp_failure", "green_lamp_failure", "detector_fault", "coordination_loss",
    "clock_drift", "manual", "server_kill", "server_restart",
)



@dataclass(frozen=True, slots=True)
class Plan:
    """A fixed-time plan: cycle length and, per phase, when its green starts and how long."""

    number: int
    cycle_s: int
    greens: tuple[tuple[int, int], ...]  # (green start in cycle, green duration) per phase


def phase_count(groups: int) -> int:
    return 2 if groups <= 4 else 3 if groups <= 8 else 4


def fixed_time_plans(groups: int) -> dict[int, Plan]:
    """Plans 1-4 (day 90 s, off-peak 72 s, peak 120 s, night 48 s) split over the phases."""
    p = phase_count(groups)
    inter = AMBER_S + ALL_RED_S
    plans = {}
    for number, cycle in ((1, 90), (2, 72), (3, 120), (4, 48)):
        green = (cycle - p * inter) // p
        plans[number] = Plan(number, cycle, tuple((k * (green + inter), green) for k in range(p)))
    return plans


@dataclass
class JunctionModel:
    """One junction controller's state, advanced by :meth:`step` on the clock's time."""

    name: str
    groups: int
    t0: float
    #: Coordination offset: the running cycle began ``offset_s`` before ``t0`` (a green wave;
    #: it also spreads the junctions' phase changes over the cycle).
    offset_s: float = 0.0
    plans: dict[int, Plan] = field(default_factory=dict)
    plan: int = 1
    plan_request: int = 1
    cycle_start: float = 0.0
    cycle_counter: int = 0
    forced_flash: bool = False
    manual: bool = False
    manual_states: tuple[int, ...] = ()
    reset_pulse: bool = False
    # faults
    conflict_cause: bool = False
    conflict_latched: bool = False
    red_fail: set[int] = field(default_factory=set)
    red_latched: bool = False
    amber_fail: set[int] = field(default_factory=set)
    green_fail: set[int] = field(default_factory=set)
    door_open: bool = False
    mains_failure: bool = False
    detector_fault: bool = False
    coordination_loss: bool = False
    clock_drift_s: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.groups <= 16:
            raise ValueError(f"junction {self.name}: {self.groups} signal groups; expected 1-16")
        if not self.plans:
            self.plans = fixed_time_plans(self.groups)
        self.cycle_start = self.t0 - self.offset_s % self.plans[self.plan].cycle_s

    # -------------------------------------------------------------- time
    def step(self, now: float) -> None:
        """Advance cycles up to ``now``; a requested plan starts at the next cycle boundary."""
        cyc = self.plans[self.plan].cycle_s
        if now < self.cycle_start + cyc:
            return
        self.cycle_start += cyc
        self.cycle_counter += 1
        if self.plan_request != self.plan:
            self.plan = self.plan_request
            cyc = self.plans[self.plan].cycle_s
        n = int((now - self.cycle_start) // cyc)
        if n > 0:
            self.cycle_start += n * cyc
            self.cycle_counter += n

    # -------------------------------------------------------------- derived state
    @property
    def mode(self) -> int:
        if self.mains_failure:
            return MODE_DARK
        if self.conflict_latched or self.red_latched or self.forced_flash:
            return MODE_FLASHING
        if self.manual:
            return MODE_MANUAL
        return MODE_NORMAL

    def phase_of(self, group: int) -> int:
        """Phase (0-based) of signal group ``group`` (1-based): groups alternate over phases."""
        return (group - 1) % phase_count(self.groups)

    def plan_states(self, now: float) -> tuple[int, ...]:
        plan = self.plans[self.plan]
        s = (now - self.cycle_start) % plan.cycle_s
        out = []
        for g in range(1, self.groups + 1):
            start, green = plan.greens[self.phase_of(g)]
            if start <= s < start + green:
                out.append(SG_GREEN)
            elif start + green <= s < start + green + AMBER_S:
                out.append(SG_AMBER)
            else:
                out.append(SG_RED)
        return tuple(out)

    def states(self, now: float) -> tuple[int, ...]:
        mode = self.mode
        if mode == MODE_DARK:
            return (SG_DARK,) * self.groups
        if mode == MODE_FLASHING:
            return (SG_FLASHING_AMBER,) * self.groups
        if mode == MODE_MANUAL and self.manual_states:
            return self.manual_states
        return self.plan_states(now)

    def values(self, now: float) -> dict[str, Any]:
        """Every variable of the junction (suffix after ``<name>.`` -> value)."""
        v: dict[str, Any] = {
            "Status.Mode": self.mode,
            "Status.Plan": self.plan,
            "Status.CycleCounter": self.cycle_counter,
            "Status.Flashing": self.mode == MODE_FLASHING,
            "Status.UnitAlarmStatus": self.unit_alarm_status,
            "Alarms.Conflict": self.conflict_latched,
            "Alarms.DoorOpen": self.door_open,
            "Alarms.MainsFailure": self.mains_failure,
            "Alarms.DetectorFault": self.detector_fault,
            "Alarms.CoordinationLoss": self.coordination_loss,
            "Alarms.ClockDrift": float(self.clock_drift_s),
            "Commands.PlanRequest": self.plan_request,
            "Commands.ForceFlashing": self.forced_flash,
            "Commands.Reset": self.reset_pulse,
        }
        for g, st in enumerate(self.states(now), start=1):
            sg = f"SignalGroups.SG{g:02d}"
            v[f"{sg}.State"] = st
            v[f"{sg}.RedLampFailure"] = g in self.red_fail
            v[f"{sg}.AmberLampFailure"] = g in self.amber_fail
            v[f"{sg}.GreenLampFailure"] = g in self.green_fail
        return v

    @property
    def unit_alarm_status(self) -> int:
        """A bit field modelled on NTCIP 1202 unitAlarmStatus1 (bit meanings in the doc)."""
        bits = (
            self.conflict_latched, bool(self.red_fail), self.mains_failure, self.door_open,
            self.detector_fault, self.coordination_loss, abs(self.clock_drift_s) >= 1.0,
            bool(self.amber_fail or self.green_fail),
        )
        return sum(1 << k for k, b in enumerate(bits) if b)

    # -------------------------------------------------------------- commands
    def select_plan(self, plan: Any) -> int:
        if isinstance(plan, bool) or not isinstance(plan, int):
            return Q.BadTypeMismatch
        if plan not in self.plans:
            return Q.BadOutOfRange
        self.plan_request = plan
        return Q.Good

    def set_flashing(self, on: Any) -> int:
        if not isinstance(on, bool):
            return Q.BadTypeMismatch
        self.forced_flash = on
        return Q.Good

    def reset(self, now: float) -> int:
        """Reset latched critical faults; refused while their cause is still present."""
        if self.conflict_cause or self.red_fail:
            return Q.BadInvalidState
        if self.conflict_latched or self.red_latched:
            self.conflict_latched = self.red_latched = False
            self.cycle_start = now  # start-up: the plan restarts from the beginning of a cycle
        self.reset_pulse = False
        return Q.Good

    # -------------------------------------------------------------- faults
    def apply_fault(self, fault: str, active: bool, now: float, **params: Any) -> None:
        if fault == "door_open":
            self.door_open = active
        elif fault == "mains_failure":
            self.mains_failure = active
            if not active:
                self.cycle_start = now
        elif fault == "conflict":
            self.conflict_cause = active
            if active:
                self.conflict_latched = True
        elif fault in ("red_lamp_failure", "amber_lamp_failure", "green_lamp_failure"):
            group = int(params.get("group", 1))
            if not 1 <= group <= self.groups:
                raise FaultError(
                    f"junction {self.name} has signal groups 1-{self.groups}; got group={group}"
                )
            target = {"red_lamp_failure": self.red_fail, "amber_lamp_failure": self.amber_fail,
                      "green_lamp_failure": self.green_fail}[fault]
            if active:
                target.add(group)
                if fault == "red_lamp_failure":
                    self.red_latched = True
            else:
                target.discard(group)
        elif fault == "detector_fault":
            self.detector_fault = active
        elif fault == "coordination_loss":
            self.coordination_loss = active
        elif fault == "clock_drift":
            self.clock_drift_s = float(params.get("seconds", 30.0)) if active else 0.0
        elif fault == "manual":
            self.manual_states = self.states(now) if active else ()
            self.manual = active
        else:
            raise FaultError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


# ----------------------------------------------------------------------------- OPC UA layer
_VARIANTS: dict[str, ua.VariantType] = {
    "Status.Mode": ua.VariantType.Int32,
    "Status.Plan": ua.VariantType.Int32,
    "Status.CycleCounter": ua.VariantType.UInt32,
    "Status.UnitAlarmStatus": ua.VariantType.UInt32,
    "Alarms.ClockDrift": ua.VariantType.Double,
    "Commands.PlanRequest": ua.VariantType.Int32,
}


def _variant_type(suffix: str, value: Any) -> ua.VariantType:
    if suffix in _VARIANTS:
        return _VARIANTS[suffix]
    if suffix.endswith(".State"):
        return ua.VariantType.Int32
    return ua.VariantType.Boolean if isinstance(value, bool) else ua.VariantType.Double


def _const(v: Any, t: ua.VariantType) -> ua.DataValue:
    return ua.DataValue(ua.Variant(v, t))


_VAR_CONST = (
    (ua.AttributeIds.NodeClass, _const(ua.NodeClass.Variable, ua.VariantType.Int32)),
    (ua.AttributeIds.WriteMask, _const(0, ua.VariantType.UInt32)),
    (ua.AttributeIds.UserWriteMask, _const(0, ua.VariantType.UInt32)),
    (ua.AttributeIds.ValueRank, _const(-1, ua.VariantType.Int32)),
    (ua.AttributeIds.ArrayDimensions, _const([], ua.VariantType.UInt32)),
    (ua.AttributeIds.MinimumSamplingInterval, _const(0.0, ua.VariantType.Double)),
    (ua.AttributeIds.Historizing, _const(False, ua.VariantType.Boolean)),
)
_DATATYPE = {vt: _const(ua.NodeId(vt.value), ua.VariantType.NodeId)
             for vt in (ua.VariantType.Boolean, ua.VariantType.Int32, ua.VariantType.UInt32,
                        ua.VariantType.Double)}
#: AccessLevel (Part 3 §8.57): CurrentRead, plus CurrentWrite for command variables.
_ACCESS = {False: _const(1, ua.VariantType.Byte), True: _const(3, ua.VariantType.Byte)}


def _reference(reftype: int, target: ua.NodeId, forward: bool, browse: ua.QualifiedName,
               nodeclass: ua.NodeClass, typedef: ua.NodeId | None = None) -> ua.ReferenceDescription:
    r = ua.ReferenceDescription()
    r.ReferenceTypeId = ua.NodeId(reftype)
    r.IsForward = forward
    r.NodeId = target
    r.BrowseName = browse
    r.DisplayName = ua.LocalizedText(browse.Name)
    r.NodeClass = nodeclass
    if typedef is not None:
        r.TypeDefinition = typedef
    return r


class _CommandAttributeService(AttributeService):
    """The Write service of a controller: command variables go to the controller, which
    accepts or refuses them with its own status code (OPC UA Part 4 §5.10.4 per-node results);
    every other node keeps asyncua's behaviour."""

    def __init__(self, aspace: Any, server: _EndpointServer):
        super().__init__(aspace)
        self._server = server

    async def write(self, params: ua.WriteParameters, user: Any = None) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for wv in params.NodesToWrite:
            cmd = self._server.commands.get(wv.NodeId)
            if cmd is not None and wv.AttributeId == ua.AttributeIds.Value:
                value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
                results.append(ua.StatusCode(await cmd(value)))
                continue
            one = ua.WriteParameters(NodesToWrite=[wv])
            if user is None:
                results.extend(await super().write(one))
            else:
                results.extend(await super().write(one, user=user))
        return results


_SECURITY = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
}


@dataclass
class EndpointSecurity:
    """What the devices on one endpoint ask for: the server offers exactly that."""

    policies: set[tuple[str, str]] = field(default_factory=set)  # (policy, mode)
    users: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def add(self, conn: dict[str, Any]) -> None:
        policy = str(conn.get("security_policy", "None"))
        mode = str(conn.get("mode", "None"))
        if (policy, mode) != ("None", "None") and (policy, mode) not in _SECURITY:
            raise ValueError(f"unsupported security {policy}/{mode}")
        self.policies.add((policy, mode))
        user = conn.get("username")
        if user:
            self.users[str(user)] = str(conn.get("password") or "")
        else:
            self.anonymous = True

    @property
    def secure(self) -> bool:
        return any(p != ("None", "None") for p in self.policies)


class _Users(UserManager):
    """A controller's local accounts: exact username/password pairs, nothing else."""

    def __init__(self, users: dict[str, str], anonymous: bool):
        self.users = users
        self.anonymous = anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self.anonymous else None
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


def server_certificate_path(state_dir: str | Path, url: str) -> Path:
    """Where the simulator keeps the certificate of the server at ``url`` (DER)."""
    u = urlparse(url)
    return Path(state_dir) / "simulators" / "traffic" / f"{u.hostname}_{u.port}" / "server-cert.der"


class _EndpointServer:
    """One asyncua server hosting every junction whose endpoint is ``url``."""

    def __init__(self, url: str, clock: Clock, junctions: dict[str, JunctionModel],
                 security: EndpointSecurity | None = None, state_dir: str | Path = "."):
        self.url = url
        self.clock = clock
        self.junctions = junctions  # object name -> model
        self.security = security or EndpointSecurity({("None", "None")}, {}, True)
        self.state_dir = state_dir
        self.server = Server(user_manager=_Users(self.security.users, self.security.anonymous))
        self.ns = 0
        self.nodes: dict[str, ua.NodeId] = {}  # full dotted name -> NodeId
        self.last: dict[str, Any] = {}
        self.commands: dict[ua.NodeId, Callable[[Any], Any]] = {}
        #: junctions whose controller no longer talks to this server (values BadNoCommunication)
        self.offline: set[str] = set()
        #: junctions whose values stop updating (still Good: only staleness reveals it)
        self.silent: set[str] = set()
        self.running = False
        self._task: asyncio.Task[None] | None = None

    def nid(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.ns, ua.NodeIdType.String)

    async def build(self) -> None:
        s = self.server
        await s.init()
        s.set_endpoint(self.url)
        s.set_server_name("city-scada traffic-controller simulator")
        sec = self.security
        s.set_security_policy([ua.SecurityPolicyType.NoSecurity if p == ("None", "None") else _SECURITY[p]
                               for p in sorted(sec.policies)])
        tokens: list[type] = [ua.UserNameIdentityToken] if sec.users else []
        if sec.anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        s.set_identity_tokens(tokens)
        if sec.secure:
            cert = server_certificate_path(self.state_dir, self.url)
            cert.parent.mkdir(parents=True, exist_ok=True)
            key = cert.with_name("server-key.pem")
            uri = "urn:city-scada:simulator:traffic"
            await s.set_application_uri(uri)
            await setup_self_signed_certificate(
                key, cert, uri, urlparse(self.url).hostname or "localhost",
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": "traffic-controller simulator", "organizationName": "city-scada"},
            )
            await s.load_certificate(str(cert))
            await s.load_private_key(str(key))
        self.ns = await s.register_namespace(NAMESPACE)
        s.iserver.attribute_service = _CommandAttributeService(s.iserver.aspace, self)
        now = self.clock.time()
        for name, model in self.junctions.items():
            await self._add_junction(name, model, now)

    async def _add_junction(self, name: str, model: JunctionModel, now: float) -> None:
        ns = self.ns
        obj = await self.server.nodes.objects.add_object(self.nid(name), ua.QualifiedName(name, ns))
        folders: dict[str, Any] = {}
        values = model.values(now)
        ts = datetime.fromtimestamp(now + model.clock_drift_s, UTC)
        for suffix, value in values.items():
            parts = suffix.split(".")
            parent = obj
            for depth in range(len(parts) - 1):
                key = ".".join(parts[: depth + 1])
                if key not in folders:
                    folders[key] = await parent.add_object(
                        self.nid(f"{name}.{key}"), ua.QualifiedName(parts[depth], ns)
                    )
                parent = folders[key]
            full = f"{name}.{suffix}"
            self.nodes[full] = self._add_variable(
                parent.nodeid, self.nid(full), parts[-1], value, _variant_type(suffix, value),
                writable=suffix.startswith("Commands."), ts=ts,
            )
            self.last[full] = value
        m = model

        async def plan_cmd(v: Any, m: JunctionModel = m, name: str = name) -> int:
            return await self.command(name, lambda: m.select_plan(v))

        async def flash_cmd(v: Any, m: JunctionModel = m, name: str = name) -> int:
            return await self.command(name, lambda: m.set_flashing(v))

        async def reset_cmd(v: Any, m: JunctionModel = m, name: str = name) -> int:
            if not isinstance(v, bool):
                return Q.BadTypeMismatch
            if not v:
                return Q.Good
            return await self.command(name, lambda: m.reset(self.clock.time()))

        self.commands[self.nodes[f"{name}.Commands.PlanRequest"]] = plan_cmd
        self.commands[self.nodes[f"{name}.Commands.ForceFlashing"]] = flash_cmd
        self.commands[self.nodes[f"{name}.Commands.Reset"]] = reset_cmd

        def method(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def call(parent: ua.NodeId, *args: ua.Variant) -> Any:
                vals = [a.Value if isinstance(a, ua.Variant) else a for a in args]
                st = await fn(*vals) if vals else await fn(True)
                return ua.StatusCode(st) if Q.is_bad(st) else []
            return call

        await obj.add_method(self.nid(f"{name}.SelectPlan"), ua.QualifiedName("SelectPlan", ns),
                             method(plan_cmd), [ua.VariantType.Int32], [])
        await obj.add_method(self.nid(f"{name}.SetFlashing"), ua.QualifiedName("SetFlashing", ns),
                             method(flash_cmd), [ua.VariantType.Boolean], [])
        await obj.add_method(self.nid(f"{name}.ResetFaults"), ua.QualifiedName("ResetFaults", ns),
                             method(reset_cmd), [], [])

    def _add_variable(self, parent: ua.NodeId, nodeid: ua.NodeId, name: str, value: Any,
                      vt: ua.VariantType, writable: bool, ts: datetime) -> ua.NodeId:
        """Create a BaseDataVariable directly in the address space (Part 3 §5.6, Part 5 §7.4).

        asyncua's AddNodes path costs ~0.7 ms per node (it writes ~24 attributes one by one
        with checks); a junction has 14 + 4 per signal group variables, so a 2,000-junction
        city took minutes to start. Built here in one go: the same attributes and references
        (HasTypeDefinition, HasComponent both ways) that AddNodes would create.
        """
        nd = NodeData(nodeid)
        a = nd.attributes
        qn = ua.QualifiedName(name, self.ns)

        def attr(v: Any, t: ua.VariantType) -> AttributeValue:
            return AttributeValue(ua.DataValue(ua.Variant(v, t)))

        text = ua.LocalizedText(name)
        a[ua.AttributeIds.NodeId] = attr(nodeid, ua.VariantType.NodeId)
        a[ua.AttributeIds.BrowseName] = attr(qn, ua.VariantType.QualifiedName)
        a[ua.AttributeIds.DisplayName] = attr(text, ua.VariantType.LocalizedText)
        a[ua.AttributeIds.Description] = attr(text, ua.VariantType.LocalizedText)
        a[ua.AttributeIds.Value] = AttributeValue(
            ua.DataValue(ua.Variant(value, vt), SourceTimestamp=ts, ServerTimestamp=ts))
        # constant attributes: one shared (never written) DataValue each, own AttributeValue
        for aid, dv in (*_VAR_CONST, (ua.AttributeIds.DataType, _DATATYPE[vt]),
                        (ua.AttributeIds.AccessLevel, _ACCESS[writable]),
                        (ua.AttributeIds.UserAccessLevel, _ACCESS[writable])):
            a[aid] = AttributeValue(dv)
        aspace = self.server.iserver.aspace
        parent_nd = aspace[parent]
        parent_qn = parent_nd.attributes[ua.AttributeIds.BrowseName].value.Value.Value
        nd.references.append(_reference(ua.ObjectIds.HasTypeDefinition, ua.NodeId(ua.ObjectIds.BaseDataVariableType),
                                        True, ua.QualifiedName("BaseDataVariableType", 0),
                                        ua.NodeClass.VariableType))
        nd.references.append(_reference(ua.ObjectIds.HasComponent, parent, False, parent_qn,
                                        ua.NodeClass.Object))
        parent_nd.references.append(_reference(ua.ObjectIds.HasComponent, nodeid, True, qn,
                                               ua.NodeClass.Variable,
                                               ua.NodeId(ua.ObjectIds.BaseDataVariableType)))
        aspace[nodeid] = nd
        return nodeid

    async def command(self, name: str, fn: Callable[[], int]) -> int:
        if name in self.offline:
            return Q.BadNoCommunication
        status = fn()
        await self.publish(name)
        return status

    async def set_offline(self, name: str, on: bool) -> None:
        """The controller stops (or resumes) talking to the server: every variable of the
        junction reads BadNoCommunication (OPC UA Part 8 §6.3.2) until it is back."""
        if on == (name in self.offline):
            return
        if not on:
            self.offline.discard(name)
            await self.publish(name)
            return
        self.offline.add(name)
        ts = datetime.fromtimestamp(self.clock.time(), UTC)
        aspace = self.server.iserver.aspace
        prefix = f"{name}."
        for full, nid in self.nodes.items():
            if full.startswith(prefix):
                self.last.pop(full, None)
                dv = ua.DataValue(StatusCode=ua.StatusCode(Q.BadNoCommunication),
                                  SourceTimestamp=ts, ServerTimestamp=ts)
                await aspace.write_attribute_value(nid, ua.AttributeIds.Value, dv)

    async def write_values(self, name: str, values: dict[str, Any], now: float) -> None:
        """Write the changed variables of junction ``name`` with the controller's own clock
        (drift included) as source timestamp."""
        model = self.junctions[name]
        ts = datetime.fromtimestamp(now + model.clock_drift_s, UTC)
        aspace = self.server.iserver.aspace
        for suffix, value in values.items():
            full = f"{name}.{suffix}"
            if self.last.get(full, _MISSING) == value and type(self.last[full]) is type(value):
                continue
            self.last[full] = value
            dv = ua.DataValue(ua.Variant(value, _variant_type(suffix, value)),
                              SourceTimestamp=ts, ServerTimestamp=ts)
            await aspace.write_attribute_value(self.nodes[full], ua.AttributeIds.Value, dv)

    async def publish(self, name: str | None = None) -> None:
        now = self.clock.time()
        for n in [name] if name else list(self.junctions):
            m = self.junctions[n]
            m.step(now)
            if n not in self.offline and n not in self.silent:
                await self.write_values(n, m.values(now), now)

    async def start(self) -> None:
        await self.server.start()
        self.running = True
        if self._task is None:
            self._task = asyncio.create_task(self._tick(), name=f"traffic-sim {self.url}")

    async def _tick(self) -> None:
        while True:
            # 1 s of controller time per tick (exact under a SteppedClock); under an
            # accelerated clock at most ~5 ticks per real second (the model jumps cycles).
            rate = self.clock.rate
            step = 1.0 if math.isinf(rate) or rate <= 5 else float(math.ceil(rate * 0.2))
            await self.clock.sleep_until(math.floor(self.clock.time() / step) * step + step)
            try:
                await self.publish()
            except Exception:
                log.exception("traffic simulator %s: update failed", self.url)

    async def kill(self) -> None:
        """Stop serving (clients see the connection drop); the controllers keep running."""
        if self.running:
            self.running = False
            # asyncua's stop() waits for its 1 s CurrentTime loop to wake up; end it at once
            iserver = self.server.iserver
            if iserver.time_task is not None:
                iserver.time_task.cancel()
                await asyncio.gather(iserver.time_task, return_exceptions=True)
                iserver.time_task = None
            await self.server.stop()
            # A rebooted controller forgets its sessions; asyncua keeps sessions with live
            # subscriptions past a transport loss (Part 4 §6.7), so close them explicitly.
            for sess in _asyncua.external_sessions(self.server.iserver):
                await sess.close_session(True)

    async def revive(self) -> None:
        if not self.running:
            await self.server.start()
            self.running = True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.kill()


_MISSING = object()


class TrafficSimulator:
    """Handle of the running junction simulators: fault injection and shutdown."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.servers: dict[str, _EndpointServer] = {}  # endpoint URL -> server
        self.where: dict[str, tuple[_EndpointServer, str]] = {}  # device path -> (server, object)
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[str, dict[str, dict[str, Any]]] = {}  # path -> fault[@group] -> params

    def model(self, device_path: str) -> JunctionModel:
        srv, name = self._lookup(device_path)
        return srv.junctions[name]

    def endpoint(self, device_path: str) -> str:
        return self._lookup(device_path)[0].url

    def _lookup(self, device_path: str) -> tuple[_EndpointServer, str]:
        try:
            return self.where[device_path]
        except KeyError:
            raise FaultError(
                f"no simulated junction {device_path!r} (simulated: {', '.join(sorted(self.where))})"
            ) from None

    # --- fault API (simulators/faults.py) ------------------------------------------------
    def fault_names(self, device_path: str) -> tuple[str, ...]:
        self._lookup(device_path)
        return FAULTS

    def active_faults(self) -> list[dict[str, Any]]:
        return [{"path": path, "fault": f, "params": dict(p)}
                for path, faults in sorted(self._active.items()) for f, p in faults.items()]

    def inject(self, device_path: str, fault_name: str, **params: Any) -> None:
        """Raise a fault on a junction (see :data:`FAULTS`); published at once.

        ``red_lamp_failure``/``amber_lamp_failure``/``green_lamp_failure`` take ``group=n``,
        ``clock_drift`` takes ``seconds=s``; ``offline``: the junction's variables read
        BadNoCommunication; ``silent``: they stop updating; ``server_kill`` stops the
        junction's server (every junction on that endpoint) until cleared; ``server_restart``
        stops it and starts it again after ``down_s`` seconds of clock time (default 0).
        """
        self._fault(device_path, fault_name, True, params)

    def clear(self, device_path: str, fault_name: str | None = None, **params: Any) -> None:
        """End a fault, or every fault of the junction when ``fault_name`` is None (critical
        faults stay latched until a reset command, as on a real controller)."""
        if fault_name is not None:
            self._fault(device_path, fault_name, False, params)
            return
        for f, p in list(self._active.get(device_path, {}).items()):
            self._fault(device_path, f.partition("@")[0], False, p)

    def _fault(self, device_path: str, fault: str, active: bool, params: dict[str, Any]) -> None:
        srv, name = self._lookup(device_path)
        if fault not in FAULTS:
            raise FaultError(f"{device_path}: unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        key = f"{fault}@{params['group']}" if "group" in params else fault
        faults = self._active.setdefault(device_path, {})
        if active:
            faults[key] = dict(params)
        else:
            faults.pop(key, None)
        if fault == "server_kill":
            self._spawn(srv.kill() if active else srv.revive())
        elif fault == "server_restart":
            faults.pop(key, None)  # momentary
            if active:
                self._spawn(self._restart(srv, float(params.get("down_s", 0.0))))
        elif fault == "offline":
            self._spawn(srv.set_offline(name, active))
        elif fault == "silent":
            if active:
                srv.silent.add(name)
            else:
                srv.silent.discard(name)
                self._spawn(srv.publish(name))
        else:
            try:
                srv.junctions[name].apply_fault(fault, active, self.clock.time(), **params)
            except (TypeError, ValueError) as e:
                faults.pop(key, None)
                raise FaultError(f"{device_path}: {e}") from None
            self._spawn(srv.publish(name))

    async def _restart(self, srv: _EndpointServer, down_s: float) -> None:
        await srv.kill()
        if down_s > 0:
            await self.clock.sleep(down_s)
        await srv.revive()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait until injected faults are published and kills/restarts are done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def kill(self, device_path: str) -> None:
        await self._lookup(device_path)[0].kill()

    async def restart(self, device_path: str) -> None:
        await self._lookup(device_path)[0].revive()

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in self.servers.values()), return_exceptions=True)
        self.servers.clear()


def signal_groups(dev: DeviceInstance) -> int:
    """Signal groups of a junction: ``attrs.signal_groups``, else counted from the profile."""
    n = dev.attrs.get("signal_groups")
    if n is not None:
        return int(n)
    return sum(1 for p in dev.profile.points if p.name.startswith("sg") and p.name.endswith("_state")) or 8


def offset_s(dev: DeviceInstance) -> float:
    """Coordination offset of a junction: ``attrs.offset_s``, else a stable pseudo-random
    whole number of seconds from its path (junctions of a city are not in phase)."""
    v = dev.attrs.get("offset_s")
    if v is not None:
        return float(v)
    return float(zlib.crc32(dev.path.encode()) % 3600)


def _endpoint_key(url: str) -> str:
    u = urlparse(url)
    if u.scheme != "opc.tcp" or not u.hostname or u.port is None:
        raise ValueError(f"expected an endpoint 'opc.tcp://host:port[/path]', got {url!r}")
    return url


async def serve_site(site: Site, clock: Clock, devices: list[DeviceInstance]) -> TrafficSimulator:
    """Serve every junction in ``devices`` (grouped by endpoint, one asyncua server each).

    Servers are built one after another (asyncua's init is CPU-bound) and started together.
    """
    sim = TrafficSimulator(clock)
    groups: dict[str, dict[str, tuple[DeviceInstance, JunctionModel]]] = {}
    security: dict[str, EndpointSecurity] = {}
    now = clock.time()
    for dev in devices:
        if dev.parent is not None:
            continue
        url = _endpoint_key(str(dev.connection.get("endpoint", "")))
        security.setdefault(url, EndpointSecurity()).add(dev.connection)
        name = str(dev.connection.get("object") or dev.id)
        objs = groups.setdefault(url, {})
        if name in objs:
            raise ValueError(
                f"{dev.path}: object {name!r} already served at {url} by {objs[name][0].path}; "
                "give one of them another connection.object"
            )
        objs[name] = (dev, JunctionModel(name, signal_groups(dev), now, offset_s(dev)))
    try:
        for url, objs in groups.items():
            srv = _EndpointServer(url, clock, {n: m for n, (_, m) in objs.items()}, security[url],
                                  site.config.site.state_dir)
            sim.servers[url] = srv
            for name, (dev, _) in objs.items():
                sim.where[dev.path] = (srv, name)
            await srv.build()
            await srv.start()
    except BaseException:
        await sim.aclose()
        raise
    log.info("traffic simulator: %d junctions on %d endpoints", len(sim.where), len(sim.servers))
    return sim
