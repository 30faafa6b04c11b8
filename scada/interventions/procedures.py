"""Procedures per alarm class: the checklist the telecontroller follows, with its conditions.

* Device out of service or under works (a work order in progress on it): one step, "no
  action", and nothing is created or sent.
* Otherwise the class's steps (``interventions.procedures.<alarm name>.steps``), and when the
  alarm is serious (``serious.priorities`` or ``serious.categories``, e.g. priority 1 or
  "accident") the serious steps (call the duty manager) plus a notification to
  ``serious.notify.channels`` and to the elected official's channels of the device's
  municipality (``serious.notify.by_municipality``), sent by the alarm notification engine
  (its durable queues, retries, rate limits: :mod:`scada.alarms.notify`), not by a second sender.
* ``auto_create`` rules create (or attach the alarm to) the work order of the class.

Each step done is a journal record (user, time, from where) and an audit record.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from ..operations import SERVER

log = logging.getLogger("scada.interventions")

NO_ACTION = "no_action"


class Procedures:
    def __init__(self, svc: Any):
        self.svc = svc
        self.cfg = svc.cfg

    def serious(self, priority: int, category: str) -> bool:
        s = self.cfg.serious
        return priority in s.priorities or category in s.categories

    def steps(self, alarm: Any, works_index: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checklist of an alarm (an AlarmEvent or view) with each step's state.
        ``works_index``: device -> order in progress, computed once for a list of alarms."""
        svc = self.svc
        device = alarm.device
        done = svc.store.steps.get(alarm.alarm_id, {})
        works = svc.under_works(device) if works_index is None else works_index.get(device)
        oos = bool(alarm.oos)
        out: dict[str, Any] = {"alarm_id": alarm.alarm_id, "class": alarm.name, "device": device,
                               "area": alarm.area, "priority": alarm.priority, "category": alarm.category,
                               "serious": False, "condition": None, "steps": []}
        if oos or works is not None:
            out["condition"] = "out_of_service" if oos else "under_works"
            text = ("No action: the device is out of service" if oos else
                    f"No action: the device is under works ({works.id})")
            out["steps"] = [{"id": NO_ACTION, "text": text}]
        else:
            proc = self.cfg.procedures.get(alarm.name)
            steps = [{"id": f"s{i + 1}", "text": t} for i, t in enumerate(proc.steps if proc else [])]
            if self.serious(alarm.priority, alarm.category):
                out["serious"] = True
                steps += [{"id": f"x{i + 1}", "text": t} for i, t in enumerate(self.cfg.serious.steps)]
                chans = self.channels(alarm.area)
                if chans:
                    steps.append({"id": "notify", "text": "Notify the elected official and the duty manager "
                                                          f"({', '.join(chans)})", "auto": True})
            out["steps"] = steps
        for s in out["steps"]:
            d = done.get(s["id"])
            s.update(done=bool(d and d.get("done", True)), user=d and d.get("user"), ts=d and d.get("ts"))
        return out

    def channels(self, area: str) -> list[str]:
        n = self.cfg.serious.notify
        town = self.svc.municipality.get(area, "")
        return list(dict.fromkeys([*n.channels, *n.by_municipality.get(town, [])]))

    async def on_raise(self, e: Any) -> None:
        """An annunciated raise: serious -> notify; auto-create rule -> work order."""
        svc = self.svc
        if e.hidden or svc.under_works(e.device) is not None:
            return
        if self.serious(e.priority, e.category):
            await self.notify(e)
        proc = self.cfg.procedures.get(e.name)
        if proc is not None and proc.auto_create is not None and e.priority in proc.auto_create.priorities \
                and e.device in svc.devices:
            ops = svc.runtime.operations
            await ops.wo_create(SERVER, devices=[e.device], priority=e.priority, origin="alarm", fault=e.name,
                                alarm_id=e.alarm_id, alarm_ts=e.ts, title=e.message or "")

    async def notify(self, e: Any) -> None:
        """Queue the procedure's notifications on the notification engine's channels."""
        svc = self.svc
        chans = self.channels(e.area)
        n = svc.notifier
        if not chans:
            return
        if n is None:
            log.error("procedure of %s: notifications %s configured but the site has no "
                      "alarms.notifications channels", e.alarm_id, ", ".join(chans))
            return
        sent = []
        for ch in chans:
            c = n.channels.get(ch)
            if c is None:
                log.error("procedure of %s: no notification channel %r", e.alarm_id, ch)
                continue
            ev = e.as_dict() | {"message": f"PROCEDURE: {e.message or e.name}"}
            c.put([{"id": uuid.uuid4().hex, "created": svc.clock.time(), "kind": "procedure",
                    "escalation": 0, "event": ev}])
            sent.append(ch)
        async with svc.store.lock:
            await svc.store.commit([{"op": "step", "alarm": e.alarm_id, "step": "notify", "ts": svc.clock.time(),
                                     "user": "server", "via": "server", "channels": sent}])
        svc.runtime.operations.audit.record(user="server", action="procedure.notify", target=e.alarm_id,
                                            outcome="Good", role="admin", via="server", channels=sent)

    async def mark(self, alarm: Any, step: str, *, user: str, via: str, done: bool = True,
                   key: str | None = None) -> dict[str, Any]:
        svc = self.svc
        known = {s["id"] for s in self.steps(alarm)["steps"]}
        if step not in known:
            raise KeyError(f"{alarm.alarm_id}: no procedure step {step!r} (steps: {', '.join(sorted(known))})")
        async with svc.store.lock:
            if svc.store.seen(key):
                return self.steps(alarm) | {"duplicate": True}
            await svc.store.commit([{"op": "step", "alarm": alarm.alarm_id, "step": step, "done": done,
                                         "ts": svc.clock.time(), "user": user, "via": via, "key": key}])
        out = self.steps(alarm)
        svc.emit("procedure", out, alarm.area)
        return out
