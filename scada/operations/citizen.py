"""The operator API's citizen-report action (mixed into :class:`Operations`), issue 21.

A citizen report arrives through a front end (the Open311 GeoReport v2 server,
:mod:`scada.web.open311`) under the identity of the registered client application
(``open311:<client>``, service role ``citizen-app``, see :mod:`.roles`), or an operator filing
it for a caller. Same contract as every action: role matrix (``wo.citizen``) and areas, then the
interventions service, then one audit record with the identity and ``via``.

The report either attaches to the open order of (device, fault) — the order gets a note naming
the report, so the dispatcher sees that citizens called — or creates a work order with
``origin: citizen``. The interventions service's ``create`` already finds the open order of a
(device, fault) pair; this action only adds the note and the citizen's vocabulary.
"""

from __future__ import annotations

from typing import Any

from .. import quality as Q
from .identity import Identity, Outcome


class CitizenActions:
    runtime: Any

    async def citizen_report(self, who: Identity, *, request_id: str, device: str, fault: str, title: str,
                             priority: int = 3, trade: str | None = None, service: str = "",
                             order_id: str | None = None, alarm_id: str | None = None) -> Outcome:
        """File citizen report ``request_id`` about ``device``: attach it to ``order_id`` (or to
        the open order of (``device``, ``fault``)), or to the active alarm ``alarm_id`` (no order
        yet: the alarm's procedure decides), else create an order. Data: ``order`` (summary or
        None) and ``created`` (bool)."""
        action = "wo.citizen"
        details = {"request": request_id, "device": device, "fault": fault, "service": service,
                   "priority": priority}
        svc = self.interventions  # type: ignore[attr-defined]
        if svc is None:
            return self._done(who, action, device, Outcome(  # type: ignore[attr-defined]
                Q.BadNotSupported, "this server has no interventions service"), **details)
        denied = self.authorize(who, action, device, areas=[device.split("/", 1)[0]], **details)  # type: ignore[attr-defined]
        if denied is not None:
            return denied
        key = f"open311:{request_id}"
        if alarm_id is not None and order_id is None:
            return self._done(who, action, alarm_id, Outcome(  # type: ignore[attr-defined]
                Q.Good, f"citizen report {request_id} attached to active alarm {alarm_id}",
                {"order": None, "created": False, "alarm": alarm_id}), **details)
        try:
            if order_id is not None:
                wo, new = svc.get(order_id), False
                if not wo.open:
                    raise ValueError(f"{order_id} is {wo.state}: a report cannot attach to it")
            else:
                wo, new = await svc.create(user=who.name, via=who.via, devices=[device], title=title,
                                           priority=priority, trade=trade, origin="citizen", fault=fault,
                                           key=key)
            if not new:
                wo = await svc.record(wo.id, "note", user=who.name, via=who.via, key=key + ":note",
                                      text=f"citizen report {request_id} ({service or fault}) attached")
        except (ValueError, KeyError) as e:
            return self._wo_error(who, action, device, e, **details)  # type: ignore[attr-defined]
        msg = f"{wo.id} created from citizen report {request_id}" if new else \
            f"citizen report {request_id} attached to open order {wo.id}"
        return self._done(who, action, wo.id, Outcome(Q.Good, msg, {"order": wo.summary(), "created": new}),  # type: ignore[attr-defined]
                          **details)
