"""The operator API: every action a person can take on the live system, in one place.

Each action is a method taking the caller's :class:`~scada.operations.Identity` and its
arguments. It checks the role matrix (:mod:`scada.operations.roles`) and the caller's areas,
validates the arguments, performs the action through the service that owns the state (alarm
engine, runtime and drivers, schedules), writes one audit record with the identity and the
outcome, and returns an :class:`~scada.operations.Outcome` carrying an OPC UA status code.
Refusals are audited too. Front ends (OPC UA server, CLI through the server, web console,
field tablet) are transport only: they authenticate, call one method and render the answer.

Authentication lives here as well (:meth:`Operations.authenticate`): one account store with
one lockout state serves every front end, so guessing a password over the web and over OPC UA
counts against the same limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from .. import quality as Q
from ..audit import AuditLog
from ..errors import UnknownTagError
from ..users import AuthResult, UserStore, generate_password, hash_password
from . import roles
from .citizen import CitizenActions
from .identity import Identity, Outcome
from .workorders import WorkOrderActions

log = logging.getLogger("scada.operations")


class Operations(WorkOrderActions, CitizenActions):
    """The operator API of one server (``runtime.operations``)."""

    def __init__(self, runtime: Any):
        self.runtime = runtime
        site = runtime.site
        self.state_dir = Path(runtime.state_dir)
        self._audit: AuditLog | None = None  # opened on first use: `scada check` writes nothing
        ocfg = site.config.opcua
        self.anonymous_role: str | None = "viewer" if ocfg.anonymous == "viewer" else None
        self.users = UserStore(site.config.users, clock=runtime.clock, max_failures=ocfg.lockout_attempts,
                               lockout_s=ocfg.lockout)
        self._areas: dict[str, frozenset[str] | None] = {
            u.name: (frozenset(u.areas) if u.areas is not None else None) for u in site.config.users}
        self.demo_users_file: Path | None = None
        #: called with {device path: (lat, lon)} after a GIS import moved devices (the map)
        self.position_listeners: list[Any] = []

    def start(self) -> None:
        """At server start (before the front ends listen): the demo's accounts."""
        if self.runtime.site.config.opcua.demo_users and self.demo_users_file is None:
            self.demo_users_file = self._demo_users()

    @property
    def audit(self) -> AuditLog:
        """The audit log, ``<state_dir>/audit.log`` (append-only JSON lines)."""
        if self._audit is None:
            self._audit = AuditLog(str(self.state_dir / "audit.log"), self.runtime.clock)
        return self._audit

    # ------------------------------------------------------------------ typed handles
    @property
    def alarms(self) -> Any:
        """The alarm engine, or None when the site has no alarm service."""
        svc = self.runtime.services.get("alarms")
        return getattr(svc, "engine", None)

    @property
    def schedules(self) -> Any:
        return self.runtime.services.get("schedules")

    # ------------------------------------------------------------------ authentication
    def _demo_users(self) -> Path:
        """Create viewer, operator and engineer accounts once; passwords in demo-users.txt (0600)."""
        p = self.state_dir / "demo-users.txt"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            lines = ["# demo accounts (generated on first start; delete this file to regenerate)",
                     "# user role password"]
            for name in ("viewer", "operator", "engineer"):
                lines.append(f"{name} {name} {generate_password()}")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            log.warning("created demo accounts 'viewer', 'operator' and 'engineer'; passwords in %s", p)
        for name, role, pw in read_demo_users(p):
            if name not in self.users:
                self.users.add(name, role, hash_password(pw, n=2**12))
                self._areas[name] = None
        return p

    def identity(self, user: str | None, via: str = "") -> Identity:
        """The identity of an already authenticated ``user`` (None: anonymous)."""
        if user is None:
            return Identity(None, self.anonymous_role, None, via)
        return Identity(user, self.users.role_of(user), self._areas.get(user), via)

    def authenticate(self, name: str | None, password: str | None, via: str = "") -> tuple[Identity | None, AuthResult | None]:
        """Check a login (anonymous when both are None); audit it; return the identity or None.

        Refusals are logged once at INFO/WARNING with the reason, never with a traceback."""
        if name is None and password is None:
            if self.anonymous_role is None:
                self._audit_login(None, via, "BadIdentityTokenRejected", reason="anonymous refused")
                return None, None
            return self.identity(None, via), None
        res = self.users.authenticate(name, password)
        if res.user is None:
            self._audit_login(name, via, "BadUserAccessDenied", reason=res.reason)
            log.warning("login refused for user %r via %s: %s", name, via or "?", res.reason)
            return None, res
        self._audit_login(res.user.name, via, "Good", role=res.user.role)
        return self.identity(res.user.name, via), res

    def _audit_login(self, user: str | None, via: str, outcome: str, **kw: Any) -> None:
        self.audit.record(user=user, action="login", target="session", outcome=outcome, via=via, **kw)

    def refuse_security(self, via: str, outcome: str, reason: str, user: str | None = None) -> None:
        """A refused security event (certificate, policy, too many sessions): audited with its
        reason and logged once at INFO, not as an error (these are expected on a network)."""
        self.audit.record(user=user, action="security", target="session", outcome=outcome, via=via, reason=reason)
        log.info("security: refused %s from %s: %s", outcome, via or "?", reason)

    # ------------------------------------------------------------------ authorisation
    def allowed(self, who: Identity, action: str) -> bool:
        return roles.allows(who.role, action)

    def authorize(self, who: Identity, action: str, target: str, *, areas: list[str] | tuple[str, ...] = (),
                  **details: Any) -> Outcome | None:
        """None when ``who`` may perform ``action`` on ``target`` (in ``areas``; by default the
        target path's area); else the refusal, already audited."""
        if not roles.allows(who.role, action):
            out = Outcome(Q.BadUserAccessDenied,
                          f"{who.name} (role {who.role or 'none'}) may not {roles.action(action).what}: "
                          f"this needs {roles.least_role_text(action)}")
            self.record(who, action, target, out, **details)
            return out
        for a in list(areas) if areas else [target]:
            if not who.sees(a):
                out = Outcome(Q.BadUserAccessDenied,
                              f"{who.name} may act on areas {', '.join(sorted(who.areas or ()))} only, "
                              f"not on {'every area' if a == '*' else a}")
                self.record(who, action, target, out, reason="area", **details)
                return out
        return None

    def record(self, who: Identity, action: str, target: str, out: Outcome, **details: Any) -> None:
        self.audit.record(user=who.user, action=action, target=target, outcome=out.status_name,
                          role=who.role or "none", via=who.via, **details)

    def _done(self, who: Identity, action: str, target: str, out: Outcome, **details: Any) -> Outcome:
        self.record(who, action, target, out, **details)
        return out

    # ------------------------------------------------------------------ writes
    def write_action(self, path: str) -> str:
        """The role-matrix action a write to ``path`` is (server-owned override tags are an
        engineer's schedule override, everything else a setpoint)."""
        return "schedule.override" if path.startswith("_schedules/") else "tag.write"

    async def write(self, who: Identity, tag: str | int, value: Any) -> Outcome:
        """Write ``value`` to a tag through its owning driver (the device answers)."""
        db = self.runtime.tagdb
        try:
            i = db.index(tag) if isinstance(tag, str) else int(tag)
            path = db.path(i)
        except (UnknownTagError, KeyError, IndexError, ValueError):
            out = Outcome(Q.BadNodeIdUnknown, f"unknown tag {tag!r}")
            return self._done(who, "tag.write", str(tag), out, new=_plain(value))
        action = self.write_action(path)
        denied = self.authorize(who, action, path, new=_plain(value))
        if denied is not None:
            return denied
        old = db.read(i).value
        code = await self.runtime.write(i, value, user=who.user)
        msg = f"{path} = {value!r}" if Q.is_good(code) else f"{path}: the device answered {Q.name(code)}"
        return self._done(who, action, path, Outcome(int(code), msg), old=_plain(old), new=_plain(value))

    # ------------------------------------------------------------------ alarms
    def _alarm(self, who: Identity, action: str, alarm_id: str, **details: Any) -> tuple[Any, Outcome | None]:
        engine = self.alarms
        if engine is None:
            return None, self._done(who, action, alarm_id, Outcome(Q.BadNotSupported, "this server has no alarm service"))
        denied = self.authorize(who, action, alarm_id, **details)
        if denied is not None:
            return None, denied
        c = engine.by_id.get(alarm_id)
        if c is None:
            return None, self._done(who, action, alarm_id, Outcome(Q.BadNodeIdUnknown, f"unknown alarm {alarm_id!r}"),
                                    **details)
        return engine, None

    def _run_alarm(self, who: Identity, action: str, alarm_id: str, fn: Any, *a: Any, **details: Any) -> Outcome:
        from ..alarms import model as M

        try:
            ev = fn(*a)
        except M.UnknownAlarm as e:
            out = Outcome(Q.BadNodeIdUnknown, str(e))
        except M.InvalidAlarmState as e:
            msg = str(e)
            code = (Q.BadConditionBranchAlreadyAcked if "already acknowledged" in msg else
                    Q.BadConditionNotShelved if "not shelved" in msg else Q.BadInvalidState)
            out = Outcome(code, msg)
        except ValueError as e:
            out = Outcome(Q.BadInvalidArgument, str(e))
        else:
            state = getattr(ev, "state", None) if not isinstance(ev, list) else None
            out = Outcome(Q.Good, f"{action.split('.', 1)[1].replace('_', ' ')}: {alarm_id}",
                          {"state": state} if state else {})
        return self._done(who, action, alarm_id, out, **details)

    async def acknowledge(self, who: Identity, alarm_id: str, comment: str = "") -> Outcome:
        engine, out = self._alarm(who, "alarm.acknowledge", alarm_id, comment=comment)
        if out is not None:
            return out
        out = self._run_alarm(who, "alarm.acknowledge", alarm_id,
                              lambda: engine.acknowledge(alarm_id, user=who.user, comment=comment), comment=comment)
        await engine.durable()  # alarms.fsync always: on disk before the action returns
        return out

    async def comment(self, who: Identity, alarm_id: str, comment: str) -> Outcome:
        engine, out = self._alarm(who, "alarm.comment", alarm_id, comment=comment)
        if out is not None:
            return out
        if not comment.strip():
            return self._done(who, "alarm.comment", alarm_id, Outcome(Q.BadInvalidArgument, "empty comment"))
        out = self._run_alarm(who, "alarm.comment", alarm_id,
                              lambda: engine.add_comment(alarm_id, user=who.user, comment=comment), comment=comment)
        await engine.durable()
        return out

    async def shelve(self, who: Identity, alarm_id: str, comment: str, duration: float | None = None) -> Outcome:
        """Timed (``duration`` seconds) or one-shot (None) shelve; a reason is required."""
        engine, out = self._alarm(who, "alarm.shelve", alarm_id, comment=comment, duration=duration)
        if out is not None:
            return out
        if duration is not None and not duration > 0:
            return self._done(who, "alarm.shelve", alarm_id,
                              Outcome(Q.BadShelvingTimeOutOfRange, "shelving time must be > 0"),
                              duration=duration)
        out = self._run_alarm(who, "alarm.shelve", alarm_id,
                              lambda: engine.shelve(alarm_id, user=who.user, comment=comment, duration=duration),
                              comment=comment, duration=duration)
        await engine.durable()
        return out

    async def unshelve(self, who: Identity, alarm_id: str, comment: str = "") -> Outcome:
        engine, out = self._alarm(who, "alarm.shelve", alarm_id, comment=comment, unshelve=True)
        if out is not None:
            return out
        out = self._run_alarm(who, "alarm.shelve", alarm_id,
                              lambda: engine.unshelve(alarm_id, user=who.user, comment=comment),
                              comment=comment, unshelve=True)
        await engine.durable()
        return out

    # ------------------------------------------------------------------ devices
    async def set_out_of_service(self, who: Identity, device: str, oos: bool, comment: str = "") -> Outcome:
        action = "device.out_of_service"
        denied = self.authorize(who, action, device, oos=oos, comment=comment)
        if denied is not None:
            return denied
        try:
            self.runtime.tagdb.device_index(device)
        except (KeyError, UnknownTagError):
            return self._done(who, action, device, Outcome(Q.BadNodeIdUnknown, f"unknown device {device!r}"),
                              oos=oos)
        engine = self.alarms
        if engine is not None:
            engine.set_out_of_service(device, oos, user=who.user, comment=comment)
            await engine.durable()
        else:
            self.runtime.set_out_of_service(device, oos)
        msg = f"{device} {'out of service' if oos else 'back in service'}"
        return self._done(who, action, device, Outcome(Q.Good, msg), oos=oos, comment=comment)

    # ------------------------------------------------------------------ schedule overrides
    async def set_override(self, who: Identity, *, level: float, minutes: float, reason: str,
                           areas: list[str] | None = None, devices: list[str] | None = None,
                           groups: list[str] | None = None) -> Outcome:
        """Override the schedules of a scope at ``level`` % for ``minutes`` (beats every rule)."""
        from ..schedules.overrides import new_override

        action = "schedule.override"
        target = ",".join([*(areas or ()), *(devices or ()), *(groups or ())]) or "everything"
        details = {"level": level, "minutes": minutes, "reason": reason}
        scope_areas = list(areas or ()) + [d.split("/", 1)[0] for d in devices or ()]
        # an override of "everything" or of groups only spans every area: unrestricted users only
        denied = self.authorize(who, action, target, areas=scope_areas or ["*"], **details)
        if denied is not None:
            return denied
        sched = self.schedules
        if sched is None:
            return self._done(who, action, target, Outcome(Q.BadNotSupported, "this server runs no schedules"),
                              **details)
        known_areas = {a.id for a in self.runtime.site.config.areas}
        bad = [a for a in areas or () if a not in known_areas]
        bad += [d for d in devices or () if not self._device_exists(d)]
        if bad:
            return self._done(who, action, target,
                              Outcome(Q.BadNodeIdUnknown, f"unknown area or device: {', '.join(bad)}"), **details)
        try:
            o = new_override(level=level, minutes=minutes, reason=reason, user=who.name,
                             now=self.runtime.clock.time(), areas=areas or None, devices=devices or None,
                             groups=groups or None, source=who.via.split(" ", 1)[0] or "api")
        except ValueError as e:
            code = Q.BadOutOfRange if "level" in str(e) or "duration" in str(e) else Q.BadInvalidArgument
            return self._done(who, action, target, Outcome(code, str(e)), **details)
        await asyncio.to_thread(sched.store.add, o)
        sched.overrides_changed()
        out = Outcome(Q.Good, f"override {o.id}: {o.scope_text()} at {o.level:g} % ({reason})",
                      {"id": o.id, "expires": o.expires, "scope": o.scope_text(), "level": o.level})
        return self._done(who, action, target, out, id=o.id, expires=o.expires, **details)

    async def cancel_override(self, who: Identity, override_id: str) -> Outcome:
        action = "schedule.override"
        sched = self.schedules
        if sched is None:
            return self._done(who, action, override_id, Outcome(Q.BadNotSupported, "this server runs no schedules"))
        o = sched.find_override(override_id)
        if o is None:
            denied = self.authorize(who, action, override_id, cancel=True)
            if denied is not None:
                return denied
            return self._done(who, action, override_id,
                              Outcome(Q.BadNoEntryExists, f"no override {override_id!r}"), cancel=True)
        scope_areas = list(o.areas or ()) + [d.split("/", 1)[0] for d in o.devices or ()]
        denied = self.authorize(who, action, o.id, areas=scope_areas or ["*"], cancel=True)
        if denied is not None:
            return denied
        if o.cancelled is not None:
            return self._done(who, action, o.id, Outcome(Q.BadInvalidState, f"override {o.id} is already cancelled"),
                              cancel=True)
        o = await asyncio.to_thread(sched.store.update, o.id, cancelled=self.runtime.clock.time())
        sched.overrides_changed()
        return self._done(who, action, o.id, Outcome(Q.Good, f"override {o.id} cancelled", {"id": o.id}),
                          cancel=True)

    # ------------------------------------------------------------------ GIS positions
    async def import_positions(self, who: Identity, name: str, data: bytes, options: dict[str, Any] | None = None,
                               *, dry_run: bool = False) -> Outcome:
        """Import device positions from a GIS file (:mod:`scada.gis`): match its features to
        devices, store the new positions in ``<state_dir>/gis/positions.json`` and apply them.
        The outcome's data is the import report (created/updated/unchanged/unmatched/rejected
        with a reason per rejected feature). A file spans the whole site, so a user restricted
        to some areas is refused (as for a site-wide schedule override)."""
        from .. import gis

        action = "gis.import"
        details: dict[str, Any] = {"file": name, "bytes": len(data), "dry_run": dry_run}
        denied = self.authorize(who, action, name, areas=["*"] if who.areas is not None else (), **details)
        if denied is not None:
            return denied
        try:
            opts = gis.Options.from_dict(options or {})
            rep = await asyncio.to_thread(gis.import_file, self.runtime.site, name, data, opts, dry_run=dry_run)
        except gis.GisError as e:
            return self._done(who, action, name, Outcome(Q.BadInvalidArgument, str(e)), **details)
        d = rep.as_dict()
        if rep.positions and not dry_run:
            for fn in tuple(self.position_listeners):
                fn(dict(rep.positions))
        out = Outcome(Q.Good, gis.Report.text(d, limit=20), d)
        return self._done(who, action, name, out, **details, **rep.counts())

    def _device_exists(self, path: str) -> bool:
        try:
            self.runtime.tagdb.device_index(path)
        except (KeyError, UnknownTagError):
            return False
        return True

    def close(self) -> None:
        if self._audit is not None:
            self._audit.close()
            self._audit = None


def read_demo_users(path: Path) -> list[tuple[str, str, str]]:
    """(name, role, password) lines of a demo-users file."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            out.append((parts[0], parts[1], parts[2]))
    return out


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)
