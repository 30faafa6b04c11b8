"""The operator API's work-order and procedure actions (mixed into :class:`Operations`).

Same contract as every action: role matrix (``wo.create``, ``wo.transition``, ``wo.assign``,
``wo.field``, ``procedure.step``) and the caller's areas, then the interventions service,
then one audit record with the identity, the time and where from (``via``). An agent (role
``agent``) may report field actions only on the orders of a crew they belong to.
"""

from __future__ import annotations

from typing import Any

from .. import quality as Q
from .identity import Identity, Outcome


class WorkOrderActions:
    runtime: Any

    @property
    def interventions(self) -> Any:
        return self.runtime.services.get("interventions")

    def _wo_run(self, who: Identity, action: str, target: str, area: str | None, **details: Any) -> Any:
        svc = self.interventions
        if svc is None:
            return None, self._done(who, action, target, Outcome(Q.BadNotSupported, "this server has no "
                                                                 "interventions service"), **details)
        denied = self.authorize(who, action, target, areas=[area] if area else (), **details)  # type: ignore[attr-defined]
        return svc, denied

    def _wo_error(self, who: Identity, action: str, target: str, e: Exception, **details: Any) -> Outcome:
        from ..interventions.model import TransitionError

        code = (Q.BadInvalidState if isinstance(e, TransitionError) else
                Q.BadNodeIdUnknown if isinstance(e, KeyError) else Q.BadInvalidArgument)
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        return self._done(who, action, target, Outcome(code, msg), **details)  # type: ignore[attr-defined]

    def _order_area(self, order_id: str) -> str | None:
        svc = self.interventions
        wo = svc.store.orders.get(order_id) if svc is not None else None
        return wo.area if wo is not None else None

    async def wo_create(self, who: Identity, *, devices: list[str], priority: int = 3, trade: str | None = None,
                        origin: str = "manual", fault: str = "", title: str = "", alarm_id: str | None = None,
                        alarm_ts: float | None = None, key: str | None = None) -> Outcome:
        action = "wo.create"
        target = ",".join(devices) or "?"
        details = {"devices": devices, "priority": priority, "trade": trade, "origin": origin, "fault": fault,
                   "alarm": alarm_id, "key": key}
        areas = sorted({d.split("/", 1)[0] for d in devices})
        svc, denied = self._wo_run(who, action, target, None, **details)
        if svc is None:
            return denied
        if denied is None:
            denied = self.authorize(who, action, target, areas=areas or ["*"], **details)  # type: ignore[attr-defined]
        if denied is not None:
            return denied
        if key and key in svc.store.keys:  # a replayed request: answered, not done nor audited again
            wo = svc.get(svc.store.keys[key]["id"])
            return Outcome(Q.Good, f"{wo.id}: already created (key {key})",
                           {"order": wo.summary(), "created": False, "duplicate": True})
        try:
            wo, new = await svc.create(user=who.name, via=who.via, devices=devices, title=title, priority=priority,
                                       trade=trade, origin=origin, fault=fault, alarm_id=alarm_id,
                                       alarm_ts=alarm_ts, key=key)
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, target, e, **details)
        msg = f"{wo.id} created" if new else f"{alarm_id or 'request'} attached to open order {wo.id}"
        return self._done(who, action, wo.id, Outcome(Q.Good, msg, {"order": wo.summary(), "created": new}),  # type: ignore[attr-defined]
                          **details)

    async def wo_transition(self, who: Identity, order_id: str, to: str, *, comment: str = "",
                            resolution: str | None = None, override: bool = False, key: str | None = None,
                            planned: str | None = None) -> Outcome:
        """A lifecycle move; ``planned`` (YYYY-MM-DD) with ``scheduled``: the day of the visit."""
        action = "wo.transition"
        details = {"to": to, "comment": comment, "resolution": resolution, "override": override, "key": key} | (
            {"planned": planned} if planned else {})
        svc, denied = self._wo_run(who, action, order_id, self._order_area(order_id), **details)
        if svc is None or denied is not None:
            return denied
        return await self._wo_move(who, action, order_id, svc, details, f"already done (key {key})", None,
                                   to, comment=comment, resolution=resolution, override=override, key=key,
                                   planned=planned)

    async def _wo_move(self, who: Identity, action: str, order_id: str, svc: Any, details: dict[str, Any],
                       duplicate: str, done: str | None, to: str, **kw: Any) -> Outcome:
        """One lifecycle move through the store, shared by the console's transitions and the
        field agents' reports: refused moves audited, a replayed key answered as a duplicate
        (not journaled or audited twice), the move audited. ``done``: the message (default:
        the order's new state)."""
        try:
            wo, fresh = await svc.transition(order_id, to, user=who.name, via=who.via, **kw)
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, order_id, e, **details)
        if not fresh:
            return Outcome(Q.Good, f"{order_id}: {duplicate}", {"order": wo.summary(), "duplicate": True})
        msg = f"{order_id}: {done}" if done else f"{order_id} {wo.state}"
        return self._done(who, action, order_id, Outcome(Q.Good, msg, {"order": wo.summary()}),  # type: ignore[attr-defined]
                          **details)

    async def wo_assign(self, who: Identity, order_id: str, *, crew: str | None, assignee: str | None = None,
                        key: str | None = None, planned: str | None = None) -> Outcome:
        """Dispatch to a crew for the day ``planned`` (YYYY-MM-DD; default: the order's, else today)."""
        action = "wo.assign"
        details = {"crew": crew, "assignee": assignee, "key": key} | ({"planned": planned} if planned else {})
        svc, denied = self._wo_run(who, action, order_id, self._order_area(order_id), **details)
        if svc is None or denied is not None:
            return denied
        try:
            wo = await svc.assign(order_id, crew=crew, assignee=assignee, user=who.name, via=who.via, key=key,
                                  planned=planned)
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, order_id, e, **details)
        day = f" for {wo.planned}" if wo.planned else ""
        return self._done(who, action, order_id, Outcome(Q.Good, f"{order_id} assigned to {crew or assignee}{day}",  # type: ignore[attr-defined]
                                                         {"order": wo.summary()}), **details)

    async def crew_position(self, who: Identity, *, lat: float, lon: float, accuracy: float | None = None,
                            crew: str | None = None, key: str | None = None) -> Outcome:
        """A field tablet reports where its crew is (``wo.field``: an agent, for the crews they
        belong to; all of them when ``crew`` is not given). Dispatch uses it while it is younger
        than ``interventions.position_max_age``."""
        action = "wo.field"
        details = {"what": "position", "lat": lat, "lon": lon, "accuracy": accuracy, "key": key}
        target = crew or "crews"
        svc, denied = self._wo_run(who, action, target, None, **details)
        if svc is None or denied is not None:
            return denied
        mine = svc.crews_of(who.user)
        if crew is not None and who.role == "agent" and crew not in mine:
            return self._done(who, action, target, Outcome(  # type: ignore[attr-defined]
                Q.BadUserAccessDenied, f"{who.name} is not in crew {crew}"), reason="crew", **details)
        crews = [crew] if crew is not None else mine
        if not crews:
            return self._done(who, action, target, Outcome(  # type: ignore[attr-defined]
                Q.BadInvalidArgument, f"{who.name} belongs to no crew (interventions.crews[].agents): give crew"),
                **details)
        rows = []
        try:
            for c in crews:
                row = await svc.report_position(c, lat=lat, lon=lon, accuracy=accuracy, user=who.name, via=who.via,
                                                key=f"{key}:{c}" if key else None)
                if row is not None:
                    rows.append(row)
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, target, e, **details)
        if not rows:
            return Outcome(Q.Good, f"position of {', '.join(crews)} already recorded (key {key})", {"duplicate": True})
        return self._done(who, action, ",".join(crews), Outcome(  # type: ignore[attr-defined]
            Q.Good, f"position of {', '.join(crews)} recorded", {"crews": rows}), **details)

    async def wo_record(self, who: Identity, order_id: str, op: str, *, key: str | None = None,
                        **fields: Any) -> Outcome:
        """A note, a part, a checklist step or a photo (operators, and agents on their crew's orders)."""
        action = "wo.field" if who.role == "agent" else "wo.transition"
        shown = {k: v for k, v in fields.items() if k != "data"} | (
            {"bytes": len(fields["data"])} if "data" in fields else {})
        details = {"op": op, "key": key, **shown}
        svc, denied = self._wo_run(who, action, order_id, self._order_area(order_id), **details)
        if svc is None or denied is not None:
            return denied
        refused = self._crew_check(who, svc, order_id, action, details)
        if refused is not None:
            return refused
        dup = svc.store.keys.get(key) if key else None
        try:
            wo = await svc.record(order_id, op, user=who.name, via=who.via, key=key, **fields)
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, order_id, e, **details)
        if dup:
            return Outcome(Q.Good, f"{order_id}: already recorded (key {key})", {"order": wo.summary(), "duplicate": True})
        return self._done(who, action, order_id, Outcome(Q.Good, f"{order_id}: {op} recorded",  # type: ignore[attr-defined]
                                                         {"order": wo.summary()}), **details)

    def _crew_check(self, who: Identity, svc: Any, order_id: str, action: str, details: dict[str, Any]) -> Outcome | None:
        if who.role != "agent":
            return None
        wo = svc.store.orders.get(order_id)
        if wo is not None and wo.crew not in svc.crews_of(who.user):
            return self._done(who, action, order_id, Outcome(  # type: ignore[attr-defined]
                Q.BadUserAccessDenied, f"{who.name} is not in the crew of {order_id} ({wo.crew or 'unassigned'})"),
                reason="crew", **details)
        return None

    async def wo_field(self, who: Identity, order_id: str, what: str, *, note: str = "", photo: bytes | None = None,
                       key: str | None = None) -> Outcome:
        """A field agent's report from the tablet: ``arrived`` (in progress), ``done``
        (completed, with note and photo), ``cannot_complete`` (on hold, with the reason)."""
        from ..interventions.model import FIELD_ACTIONS

        action = "wo.field"
        details = {"what": what, "note": note, "key": key, **({"photo_bytes": len(photo)} if photo else {})}
        svc, denied = self._wo_run(who, action, order_id, self._order_area(order_id), **details)
        if svc is None or denied is not None:
            return denied
        refused = self._crew_check(who, svc, order_id, action, details)
        if refused is not None:
            return refused
        to = FIELD_ACTIONS.get(what)
        if to is None:
            return self._done(who, action, order_id, Outcome(Q.BadInvalidArgument, f"unknown field action {what!r}; "  # type: ignore[attr-defined]
                                                             f"expected one of {', '.join(FIELD_ACTIONS)}"), **details)
        if what == "cannot_complete" and not note.strip():
            return self._done(who, action, order_id, Outcome(Q.BadInvalidArgument, "cannot complete: say why (note)"),  # type: ignore[attr-defined]
                              **details)
        return await self._wo_move(who, action, order_id, svc, details, f"{what} already recorded", what,
                                   to, comment=note, field=what, key=key, note=note, photo=photo)

    async def procedure_step(self, who: Identity, alarm_id: str, step: str, *, done: bool = True,
                             key: str | None = None) -> Outcome:
        action = "procedure.step"
        details = {"step": step, "done": done, "key": key}
        svc, denied = self._wo_run(who, action, alarm_id, None, **details)
        if svc is None or denied is not None:
            return denied
        eng = self.alarms  # type: ignore[attr-defined]
        c = eng.by_id.get(alarm_id) if eng is not None else None
        if c is None:
            return self._done(who, action, alarm_id, Outcome(Q.BadNodeIdUnknown, f"unknown alarm {alarm_id!r}"), **details)  # type: ignore[attr-defined]
        try:
            out = await svc.procedures.mark(eng.view(c), step, user=who.name, via=who.via, done=done, key=key)
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, alarm_id, e, **details)
        if out.pop("duplicate", False):
            return Outcome(Q.Good, f"{alarm_id}: step {step} already recorded (key {key})",
                           {"procedure": out, "duplicate": True})
        return self._done(who, action, alarm_id, Outcome(Q.Good, f"{alarm_id}: step {step} "  # type: ignore[attr-defined]
                                                         f"{'done' if done else 'undone'}", {"procedure": out}), **details)
