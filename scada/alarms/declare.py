"""Declaring alarms: instances of alarm templates per device, suppression rules, external rows.

Site loading goes through :func:`build_from_site` (a template over all the devices of its
profile at once, so a city of 200,000 luminaires loads in seconds); :meth:`Declarations.add_alarm`
adds one alarm (tests, tools). Suppression rules are resolved once the whole site is declared
(:meth:`Declarations._resolve_rules`, called by ``AlarmEngine.start``).

A mixin of :class:`~scada.alarms.engine.AlarmEngine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from scada.clock import Clock
from scada.errors import ConfigError
from scada.sections.alarms import AlarmDef
from scada.tags import TagDatabase

from . import model as M
from .journal import Journal
from .suppression import SRC_ALARM, SRC_POINT

if TYPE_CHECKING:
    from .engine import AlarmEngine

@dataclass(slots=True)
class _Pending:
    """A suppression rule waiting for the whole site to be declared."""

    target: int
    device: str
    parent: str | None
    rule: Any


class Declarations:
    """Alarm declaration of the engine (see the module)."""

    def add_alarm(self, device: str, area: str, adef: AlarmDef, *, parent: str | None = None,
                  location: str = "", first_tag: int = -1) -> int:
        """Instantiate one alarm template for one device; returns the condition row.
        ``first_tag`` (the device's first tag index, if known) spares the path lookups."""
        spec = self._spec(adef)
        if first_tag >= 0:
            schema = self.tagdb.device_schema(int(self.tagdb.device_of[first_tag]))
            off = schema.offsets.get(adef.point or "")
            tag = first_tag + off if off is not None else None
            roff = schema.offsets.get(adef.reference) if adef.reference else None
            ref = first_tag + roff if roff is not None else None
        else:
            tag = self.tagdb.find(f"{device}/{adef.point}")
            ref = self.tagdb.find(f"{device}/{adef.reference}") if adef.reference else None
        if tag is None:
            raise ConfigError(
                f"alarm {adef.name!r} of {device}: the device has no point {adef.point!r}; "
                f"fix the alarm template's 'point' (or the profile's points)"
            )
        fields = spec
        if adef.reference is not None:
            if ref is None:
                raise ConfigError(
                    f"alarm {adef.name!r} of {device}: the device has no reference point "
                    f"{adef.reference!r}; fix the alarm template's 'reference'"
                )
            fields = {**spec, "ref": ref}
        c = self._new_row(M.KIND_CODES[adef.kind], tag, device, area, adef.name, adef.category,
                          adef.priority, adef.effective_severity, adef.message, location,
                          self.tagdb.point(tag).unit, fields)
        for rule in adef.suppressed_by:
            self._pending_rules.append(_Pending(c, device, parent, rule))
        if parent is not None:
            self._parent_of[device] = parent
        return c

    def _spec(self, adef: AlarmDef) -> dict[str, float]:
        """The condition-table fields of a template (computed once per template)."""
        key = id(adef)
        hit = self._specs.get(key)
        if hit is not None and hit[0] is adef:
            return hit[1]
        fields: dict[str, float] = {
            "eq": adef.equals, "db": adef.deadband, "tol": adef.tolerance, "scale": adef.scale,
            "timeout": adef.timeout, "on_delay": adef.on_delay, "off_delay": adef.off_delay,
        }
        for k in ("hihi", "hi", "lo", "lolo", "max_rate"):
            v = getattr(adef, k)
            if v is not None:
                fields[k] = v
        self._specs[key] = (adef, fields)
        return fields

    def _new_row(self, kind: int, tag: int, device: str, area: str, name: str, category: str,
                 priority: int, severity: int, template: str, location: str, unit: str,
                 fields: dict[str, float]) -> int:
        if self.by_id.get(f"{device}/{name}") is not None:
            raise ConfigError(f"alarm {device}/{name!r} declared twice; alarm names must be "
                              f"unique per device")
        c = self.cond.add(kind, tag, **fields)
        self._grow(c + 1)
        self.device.append(device)
        self.area.append(area)
        self.name.append(name)
        self.category.append(category)
        self.priority.append(priority)
        self.severity.append(severity)
        self.template.append("")
        self.location.append(location)
        self.unit.append(unit)
        self.msg.append(None)
        self._tail.append(None)
        self._set_template(c, template or "{device} {name}")
        self.by_device.setdefault(device, []).append(c)
        return c

    def add_rows(self, adef: AlarmDef, tags: np.ndarray, refs: np.ndarray | None,
                 devices: list[str], areas: list[str], locations: list[str], unit: str,
                 parents: list[str | None] | None = None) -> np.ndarray:
        """Instantiate one template for many devices at once (site loading: a profile's
        template over all its devices); returns the rows. The caller guarantees the names are
        unique per device (one profile per device, unique names per profile)."""
        m = len(tags)
        fields = self._spec(adef)
        rows = self.cond.add_many(M.KIND_CODES[adef.kind], tags, refs, fields)
        c0 = int(rows[0]) if m else self.cond.n
        self._grow(c0 + m)
        template = adef.message or "{device} {name}"
        self.device.extend(devices)
        self.area.extend(areas)
        self.name.extend([adef.name] * m)
        self.category.extend([adef.category] * m)
        self.priority.extend([adef.priority] * m)
        self.severity.extend([adef.effective_severity] * m)
        self.template.extend([template] * m)
        self.location.extend(locations)
        self.unit.extend([unit] * m)
        self.msg.extend([None] * m)
        self._tail.extend([None] * m)
        if "{value" in template or "{limit" in template:
            self._dyn.update(range(c0, c0 + m))
        bd = self.by_device
        for k, d in enumerate(devices):
            bd.setdefault(d, []).append(c0 + k)
        if parents is not None:
            for d, par in zip(devices, parents, strict=True):
                if par is not None:
                    self._parent_of[d] = par
        return rows

    def _set_template(self, c: int, template: str) -> None:
        self.template[c] = template
        self._tail[c] = None
        if "{value" in template or "{limit" in template:
            self._dyn.add(c)
        else:
            self._dyn.discard(c)
            self.msg[c] = None

    def _resolve_rules(self) -> None:
        """The templates' ``suppressed_by`` of alarms added one by one (:meth:`add_alarm`;
        site loading resolves them per profile in :func:`build_from_site`)."""
        cache: dict[tuple[str, str, str], int | None] = {}
        for p in self._pending_rules:
            owner = p.device if p.rule.of == "self" else p.parent
            if owner is None:
                raise ConfigError(
                    f"alarm {self.ids[p.target]!r}: suppression rule refers to the parent device, "
                    f"but {p.device} has no parent; use 'of: self' or remove the rule"
                )
            if p.rule.alarm is not None:
                what, kind, name, eq = "alarm", SRC_ALARM, p.rule.alarm, 1.0
            else:
                what, kind, name, eq = "point", SRC_POINT, p.rule.point, float(p.rule.equals)
            key = (owner, what, name)
            if key not in cache:
                cache[key] = (self.by_id.get(f"{owner}/{name}") if kind == SRC_ALARM
                              else self.tagdb.find(f"{owner}/{name}"))
            src = cache[key]
            if src is None:
                raise ConfigError(f"alarm {self.ids[p.target]!r}: suppression rule names {what} "
                                  f"{name!r} of {owner}, which has no such {what}")
            self.supp.add(p.target, kind, src, eq)
        self._pending_rules.clear()
        self._resolve_child_rules()
        self._parent_of.clear()
        self._specs.clear()

    def _resolve_child_rules(self) -> None:
        """``alarms.suppressed_by``: one group per (device, rule) with the selected alarms."""
        rules = self.config.suppressed_by
        if not rules:
            return
        sources: dict[tuple[str, int], tuple[int, int, float] | None] = {}
        for k, r in enumerate(rules):
            pairs = (self._parent_of.items() if r.of == "parent"
                     else ((d, d) for d in self.by_device))
            sel = None if r.alarms is None else set(r.alarms)
            for dev, owner in pairs:
                key = (owner, k)
                if key not in sources:
                    if r.alarm is not None:
                        src = self.by_id.get(f"{owner}/{r.alarm}")
                        sources[key] = None if src is None else (SRC_ALARM, src, 1.0)
                    else:
                        tag = self.tagdb.find(f"{owner}/{r.point}")
                        sources[key] = None if tag is None else (SRC_POINT, tag, float(r.equals))
                s = sources[key]
                if s is None:
                    continue
                rows = self.by_device.get(dev, [])
                members = rows if sel is None else [c for c in rows if self.name[c] in sel]
                if not members:
                    continue
                g = self.supp.group_of(("device", dev, k), members)
                self.supp.add_group_rule(g, *s)

    def _external_row(self, device: str, name: str, category: str, priority: int,
                      severity: int, area: str | None = None) -> int:
        c = self._new_row(M.K_EXTERNAL, -1, device, area or device.split("/", 1)[0], name,
                          category, priority, severity, "{device} {name}", "", "", {})
        if self._started:
            self.supp.grow_conds(len(self.st.level))
        return c


def build_from_site(site: Any, tagdb: TagDatabase, clock: Clock, journal: Journal, **kw: Any) -> AlarmEngine:
    """One alarm instance per (device, profile alarm template) of the site, built per profile
    with array operations (a template over all the devices of its profile at once), so a city
    of 200,000 luminaires loads in seconds."""
    from .engine import AlarmEngine

    cfg = site.config.alarms
    eng = AlarmEngine(tagdb, clock, journal, config=cfg, **kw)
    errors: list[str] = []
    groups: dict[str, list[Any]] = {}
    for dev in site.all_devices():
        if dev.profile.alarms:
            groups.setdefault(dev.profile_name, []).append(dev)
    parent_rules: list[tuple[np.ndarray, list[Any], Any, str]] = []
    for pname, devs in groups.items():
        prof = devs[0].profile
        schema = site.schemas[pname]
        names = [a.name for a in prof.alarms]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            errors.append(f"profile {pname!r}: alarm name(s) {dups} declared twice (alarm "
                          f"templates of the profile and of alarm_templates files); names must be "
                          f"unique per device")
            continue
        first = np.asarray([tagdb.device_first(tagdb.device_index(d.path)) for d in devs],
                           dtype=np.int64)
        paths = [d.path for d in devs]
        areas = [d.area for d in devs]
        locs = [f"{d.location.lat:.5f},{d.location.lon:.5f}" if d.location else "" for d in devs]
        parents = [d.parent for d in devs]
        rows_of: dict[str, np.ndarray] = {}
        for adef in prof.alarms:
            off = schema.offsets.get(adef.point or "")
            if off is None:
                errors.append(f"profile {pname!r}, alarm {adef.name!r}: the profile has no point "
                              f"{adef.point!r}; fix the alarm template's 'point'")
                continue
            refs = None
            if adef.reference is not None:
                roff = schema.offsets.get(adef.reference)
                if roff is None:
                    errors.append(f"profile {pname!r}, alarm {adef.name!r}: the profile has no "
                                  f"reference point {adef.reference!r}")
                    continue
                refs = first + roff
            rows_of[adef.name] = eng.add_rows(adef, first + off, refs, paths, areas, locs,
                                              schema.points[off].unit, parents)
        for adef in prof.alarms:
            targets = rows_of.get(adef.name)
            if targets is None:
                continue
            for rule in adef.suppressed_by:
                if rule.of == "parent":
                    parent_rules.append((targets, devs, rule, adef.name))
                elif rule.alarm is not None:
                    src = rows_of.get(rule.alarm)
                    if src is None:
                        errors.append(f"profile {pname!r}, alarm {adef.name!r}: suppression rule "
                                      f"names alarm {rule.alarm!r}, which the profile does not have")
                        continue
                    eng.supp.add_many(targets, SRC_ALARM, src)
                else:
                    poff = schema.offsets.get(rule.point)
                    if poff is None:
                        errors.append(f"profile {pname!r}, alarm {adef.name!r}: suppression rule "
                                      f"names point {rule.point!r}, which the profile does not have")
                        continue
                    eng.supp.add_many(targets, SRC_POINT, first + poff, float(rule.equals))
    # rules on the parent device, once every device's alarms exist
    cache: dict[tuple[str, str, str], int | None] = {}
    for targets, devs, rule, aname in parent_rules:
        kind = SRC_ALARM if rule.alarm is not None else SRC_POINT
        srcs = np.empty(len(devs), dtype=np.int64)
        for k, d in enumerate(devs):
            if d.parent is None:
                errors.append(f"alarm {d.path}/{aname}: suppression rule refers to the parent "
                              f"device, but {d.path} has no parent; use 'of: self'")
                break
            key = (d.parent, "a" if rule.alarm is not None else "p", rule.alarm or rule.point)
            if key not in cache:
                cache[key] = (eng.by_id.get(f"{d.parent}/{rule.alarm}") if rule.alarm is not None
                              else tagdb.find(f"{d.parent}/{rule.point}"))
            s = cache[key]
            if s is None:
                errors.append(f"alarm {d.path}/{aname}: suppression rule names "
                              f"{'alarm' if rule.alarm else 'point'} "
                              f"{rule.alarm or rule.point!r} of {d.parent}, which has none")
                break
            srcs[k] = s
        else:
            eng.supp.add_many(targets, kind, srcs, 1.0 if rule.equals is None else float(rule.equals))
    if errors:
        raise ConfigError(sorted(set(errors))[:50])
    return eng
