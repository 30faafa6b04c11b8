"""OPC UA Alarms & Conditions (Part 9) on top of asyncua's event support.

asyncua ships the A&C *types* and event objects but no condition model; this module is that
model for the alarm engine, attached to the HMI server (``runtime.services["opcua"]``):

* **Condition instances.** Each alarm that has had an event is an Object
  ``ns=<site>;s=<area>/<device>/<name>#alarm`` (browse name = the alarm name) under its device
  node, so the ConditionId in events resolves and methods can be called on it. Instances are
  created on first use only: a city of 800,000 potential alarms costs nodes only for the alarms
  that ever fired (Part 9 does not require every condition instance in the address space).
* **Events.** Each engine transition becomes one condition event (OffNormalAlarmType for
  discrete alarms, SystemOffNormalAlarmType for communication/stale, ExclusiveLimitAlarmType for
  limits with LimitState, ExclusiveDeviationAlarmType for deviations, AlarmConditionType
  otherwise) carrying the Part 9 state variables (ActiveState, AckedState, ConfirmedState,
  EnabledState, SuppressedState, OutOfServiceState, ShelvingState/CurrentState,
  SuppressedOrShelved, Retain, Severity, Comment, ClientUserId). Events are propagated to the
  device, the area folder and the Server object (Part 9 / Part 3 event notifier hierarchy:
  asyncua delivers an event only to monitored items of its emitting node, so it is triggered on
  each). ``Retain`` is true while the alarm is an annunciated red dot (active or
  unacknowledged, not suppressed, shelved or out of service).
* **Methods**, linked on the type-level method nodes so they apply to every condition
  (``Call(ObjectId=ConditionId, MethodId=...)``, Part 9): Acknowledge (9111),
  AddComment (9029), ShelvingState TimedShelve/OneShotShelve/Unshelve (9213/9212/9211 and the
  ShelvedStateMachineType ones), RemoveFromService/PlaceInService (17869/17870: the whole
  device), ConditionRefresh/ConditionRefresh2 (3875/12912: RefreshStart, the retained set,
  RefreshEnd to the calling subscription). Each calls the operator API (scada.operations) with
  the session's identity: it checks the role matrix (operator to acknowledge/comment, engineer
  to shelve and for out-of-service; BadUserAccessDenied otherwise) and audits the action; the
  engine journals it.
  Acknowledge accepts the condition's latest EventId or an empty one (the CLI's "current
  state"); a stale EventId is BadEventIdUnknown. Shelve methods accept an optional trailing
  comment argument (the reason).
* ``Objects/Alarms`` has ``SetOutOfService(DevicePath, OutOfService, Comment)`` for devices
  without alarm instances (the CLI's ``scada out-of-service``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.common import event_objects as eo

from ..alarms import model as M
from ._asyncua import enqueue_event, event_items, subscription_of, trigger_event_for
from .server import current_session

log = logging.getLogger("scada.alarms.opcua")

SUFFIX = "#alarm"
ALARMS_OBJECT = "#Alarms"

_EVENT_TYPE = {
    M.K_DISCRETE: ua.ObjectIds.OffNormalAlarmType,
    M.K_QUALITY: ua.ObjectIds.SystemOffNormalAlarmType,
    M.K_STALE: ua.ObjectIds.SystemOffNormalAlarmType,
    M.K_LIMIT: ua.ObjectIds.ExclusiveLimitAlarmType,
    M.K_DEVIATION: ua.ObjectIds.ExclusiveDeviationAlarmType,
    M.K_RATE: ua.ObjectIds.AlarmConditionType,
    M.K_EXTERNAL: ua.ObjectIds.AlarmConditionType,
}
_CLASS = {
    "system": (ua.ObjectIds.SystemConditionClassType, "System"),
    "cabinet": (ua.ObjectIds.ProcessConditionClassType, "Process"),
    "lighting": (ua.ObjectIds.ProcessConditionClassType, "Process"),
    "traffic": (ua.ObjectIds.ProcessConditionClassType, "Process"),
}


def _v(x: Any) -> Any:
    return x.Value if isinstance(x, ua.Variant) else x


def _text(x: Any) -> str:
    x = _v(x)
    if isinstance(x, ua.LocalizedText):
        return x.Text or ""
    return "" if x is None else str(x)


def _sees(session: Any, area: str) -> bool:
    ident = getattr(session, "identity", None)
    return ident is None or ident.sees_area(area)


class AlarmConditions:
    """The Part 9 condition model of one engine on one asyncua server."""

    def __init__(self, engine: Any, opcua: Any):
        self.engine = engine
        self.svc = opcua
        self.ops = opcua.ops
        self._queue: deque[M.AlarmEvent] = deque()
        self._ready = asyncio.Event()
        self._nodes: set[int] = set()
        self._last_eid: dict[int, bytes] = {}
        self._templates: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._attach_task: asyncio.Task[None] | None = None
        self.stats = {"events": 0, "nodes": 0, "calls": 0, "denied": 0}

    # ------------------------------------------------------------------ wiring
    def attach(self) -> None:
        """Hook into the server's start (or start now if it already runs)."""
        self.svc.on_started.append(self._on_started)
        started = getattr(self.svc, "started", None)
        if getattr(self.svc, "server", None) is not None and started is not None and started.is_set():
            self._attach_task = asyncio.get_running_loop().create_task(
                self._on_started(self.svc), name="alarms:opcua-attach")

    async def _on_started(self, svc: Any) -> None:
        """(Re)build on a started server: also after the server service was restarted, whose
        new address space has none of the condition nodes of the old one."""
        server = svc.server
        ns = svc.namespace_index
        self.ns = ns
        self._nodes = set()
        for tid in set(_EVENT_TYPE.values()):
            self._templates[tid] = eo.IMPLEMENTED_EVENTS[tid]()
        link = server.iserver.isession.add_method_callback
        for mid in (ua.ObjectIds.AcknowledgeableConditionType_Acknowledge,):
            link(ua.NodeId(mid), self._acknowledge)
        link(ua.NodeId(ua.ObjectIds.ConditionType_AddComment), self._add_comment)
        for mid in (ua.ObjectIds.AlarmConditionType_ShelvingState_TimedShelve,
                    ua.ObjectIds.ShelvedStateMachineType_TimedShelve):
            link(ua.NodeId(mid), self._timed_shelve)
        for mid in (ua.ObjectIds.AlarmConditionType_ShelvingState_OneShotShelve,
                    ua.ObjectIds.ShelvedStateMachineType_OneShotShelve):
            link(ua.NodeId(mid), self._oneshot_shelve)
        for mid in (ua.ObjectIds.AlarmConditionType_ShelvingState_Unshelve,
                    ua.ObjectIds.ShelvedStateMachineType_Unshelve):
            link(ua.NodeId(mid), self._unshelve)
        link(ua.NodeId(ua.ObjectIds.AlarmConditionType_RemoveFromService), self._remove_from_service)
        link(ua.NodeId(ua.ObjectIds.AlarmConditionType_PlaceInService), self._place_in_service)
        link(ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh), self._refresh)
        link(ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh2), self._refresh)
        obj = await server.nodes.objects.add_object(ua.NodeId(ALARMS_OBJECT, ns),
                                                    ua.QualifiedName("Alarms", ns))
        await obj.add_method(
            ua.NodeId(ALARMS_OBJECT + ".SetOutOfService", ns), ua.QualifiedName("SetOutOfService", ns),
            self._set_oos_method,
            [ua.VariantType.String, ua.VariantType.Boolean, ua.VariantType.String], [])
        if self.on_events not in self.engine.listeners:
            self.engine.listeners.append(self.on_events)
        # the red dots that exist already (restored from the journal) get their nodes now
        for c in self.engine.retained().tolist():
            await self._ensure_node(c)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="alarms:opcua")
        log.info("OPC UA Alarms & Conditions attached (%d alarm instances, %d retained)",
                 self.engine.n, len(self.engine.retained()))

    async def close(self) -> None:
        if self.on_events in self.engine.listeners:
            self.engine.listeners.remove(self.on_events)
        if self._on_started in self.svc.on_started:
            self.svc.on_started.remove(self._on_started)
        for t in (self._attach_task,):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # ------------------------------------------------------------------ events
    def on_events(self, events: list[M.AlarmEvent]) -> None:
        self._queue.extend(events)
        self._ready.set()

    async def _pump(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            k = 0
            while self._queue:
                e = self._queue.popleft()
                try:
                    await self._emit(e)
                except Exception:
                    log.exception("OPC UA A&C: could not send the event of %s (%s)", e.alarm_id, e.event)
                k += 1
                if k % 200 == 0:  # a flood must not starve the polls
                    await asyncio.sleep(0)

    def cond_nodeid(self, c: int) -> ua.NodeId:
        return ua.NodeId(self.engine.ids[c] + SUFFIX, self.ns)

    async def _ensure_node(self, c: int) -> None:
        if c in self._nodes or self.svc.server is None:
            return
        self._nodes.add(c)
        nid = self.cond_nodeid(c)
        try:
            parent = await self.svc.device_node(self.engine.device[c])
        except KeyError:
            parent = self.svc.server.nodes.objects
        try:
            await parent.add_object(nid, ua.QualifiedName(self.engine.name[c], self.ns))
            self.stats["nodes"] += 1
        except ua.UaStatusCodeError as e:
            if e.code != ua.StatusCodes.BadNodeIdExists:
                raise
            return
        await self._type_and_source(c, nid, parent.nodeid)

    async def _type_and_source(self, c: int, nid: ua.NodeId, source: ua.NodeId) -> None:
        """Type the instance as its alarm type (HasTypeDefinition, without instantiating the
        type's ~60 state variables per alarm: their values travel in the events) and link it
        from its device with HasCondition (Part 9 reference type)."""
        isession = self.svc.server.iserver.isession
        etype = ua.NodeId(_EVENT_TYPE[int(self.engine.cond.kind[c])])
        d = ua.DeleteReferencesItem()
        d.SourceNodeId = nid
        d.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasTypeDefinition)
        d.IsForward = True
        d.TargetNodeId = ua.ExpandedNodeId(ua.ObjectIds.BaseObjectType)
        d.DeleteBidirectional = True
        items = []
        for src, ref, tgt, cls in ((nid, ua.ObjectIds.HasTypeDefinition, etype, ua.NodeClass.ObjectType),
                                   (source, ua.ObjectIds.HasCondition, nid, ua.NodeClass.Object)):
            a = ua.AddReferencesItem()
            a.SourceNodeId = src
            a.ReferenceTypeId = ua.NodeId(ref)
            a.IsForward = True
            a.TargetNodeId = ua.ExpandedNodeId(tgt.Identifier, tgt.NamespaceIndex)
            a.TargetNodeClass = cls
            items.append(a)
        try:
            await isession.delete_references([d])
            for r in await isession.add_references(items):
                r.check()
        except (ua.UaError, KeyError) as e:
            log.debug("OPC UA A&C: could not type %s: %s", nid, e)

    def _build(self, c: int, e: M.AlarmEvent | None, eid: bytes) -> Any:
        eng = self.engine
        kind = int(eng.cond.kind[c])
        tmpl = self._templates[_EVENT_TYPE[kind]]
        ev = copy.copy(tmpl)
        ev.__dict__ = dict(tmpl.__dict__)
        v = e if e is not None else eng.view(c)
        active = v.active != 0
        hidden = bool(v.shelved or v.suppressed or v.oos)
        now = datetime.now(UTC)
        ev.EventId = eid
        ev.SourceNode = ua.NodeId(v.device, self.ns)
        ev.SourceName = v.device
        ev.Time = datetime.fromtimestamp(v.ts, UTC) if v.ts else now
        ev.ReceiveTime = now
        ev.Message = ua.LocalizedText(v.message or f"{v.device} {v.name}")
        ev.Severity = int(v.severity)
        ev.LastSeverity = int(v.severity)
        cls_id, cls_name = _CLASS.get(v.category, _CLASS["system"])
        ev.ConditionClassId = ua.NodeId(cls_id)
        ev.ConditionClassName = ua.LocalizedText(cls_name)
        ev.ConditionName = v.name
        ev.BranchId = ua.NodeId()
        ev.Retain = bool((active or not v.acked) and not hidden)
        ev.EnabledState = ua.LocalizedText("Enabled")
        setattr(ev, "EnabledState/Id", True)
        ev.Quality = ua.StatusCode(ua.StatusCodes.Good)
        ev.Comment = ua.LocalizedText(v.comment or "")
        ev.ClientUserId = v.user or ""
        ev.AckedState = ua.LocalizedText("Acknowledged" if v.acked else "Unacknowledged")
        setattr(ev, "AckedState/Id", bool(v.acked))
        ev.ConfirmedState = ua.LocalizedText("Confirmed")
        setattr(ev, "ConfirmedState/Id", True)
        ev.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
        setattr(ev, "ActiveState/Id", active)
        ev.SuppressedState = ua.LocalizedText("Suppressed" if v.suppressed else "Unsuppressed")
        setattr(ev, "SuppressedState/Id", bool(v.suppressed))
        ev.OutOfServiceState = ua.LocalizedText("Out of Service" if v.oos else "In Service")
        setattr(ev, "OutOfServiceState/Id", bool(v.oos))
        ev.SuppressedOrShelved = bool(v.suppressed or v.shelved)
        ev.add_property("ShelvingState/CurrentState",
                        ua.LocalizedText(M.SHELVE_NAMES[int(v.shelved)]), ua.VariantType.LocalizedText)
        if kind == M.K_LIMIT:
            ev.add_property("LimitState/CurrentState",
                            ua.LocalizedText(M.LEVEL_NAMES.get(int(v.active), "")),
                            ua.VariantType.LocalizedText)
        ev.add_property("NodeId", self.cond_nodeid(c), ua.VariantType.NodeId)
        return ev

    def _emitters(self, c: int) -> list[ua.NodeId]:
        out = [ua.NodeId(ua.ObjectIds.Server)]
        try:
            out.append(self.svc.area_node(self.engine.area[c]).nodeid)
        except KeyError:
            pass
        out.append(ua.NodeId(self.engine.device[c], self.ns))
        return out

    async def _trigger(self, c: int, ev: Any, subscription_id: int | None = None) -> None:
        """Send the event from each emitter (Server, area, device) to the subscriptions whose
        session may see the alarm's area (areas as tenants)."""
        iserver = self.svc.server.iserver
        area = self.engine.area[c]
        for node in self._emitters(c):
            e2 = copy.copy(ev)
            e2.__dict__ = dict(ev.__dict__)
            e2.emitting_node = node
            await trigger_event_for(iserver, e2, lambda s: _sees(s, area), subscription_id)

    async def _emit(self, e: M.AlarmEvent) -> None:
        if self.svc.server is None:
            return
        c = e.cond
        await self._ensure_node(c)
        eid = f"{e.seq}".encode()
        self._last_eid[c] = eid
        await self._trigger(c, self._build(c, e, eid))
        self.stats["events"] += 1

    # ------------------------------------------------------------------ methods
    def _cond_of(self, objid: Any) -> int | None:
        nid = _v(objid)
        s = getattr(nid, "Identifier", None)
        if not isinstance(s, str) or SUFFIX not in s:
            return None
        return self.engine.by_id.get(s.split(SUFFIX, 1)[0])

    def _status(self, out: Any) -> ua.StatusCode:
        self.stats["calls"] += 1
        if out.status == ua.StatusCodes.BadUserAccessDenied:
            self.stats["denied"] += 1
        return ua.StatusCode(int(out.status))

    # Every method goes through the operator API with the identity of the calling session
    # (role matrix, areas, audit); this layer only maps OPC UA arguments and status codes.
    async def _acknowledge(self, objid: Any, event_id: Any = None, comment: Any = None) -> ua.StatusCode:
        c = self._cond_of(objid)
        if c is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        eid = _v(event_id)
        if eid and eid != self._last_eid.get(c):
            return ua.StatusCode(ua.StatusCodes.BadEventIdUnknown)
        return self._status(await self.ops.acknowledge(self.svc.caller(), self.engine.ids[c], _text(comment)))

    async def _add_comment(self, objid: Any, event_id: Any = None, comment: Any = None) -> ua.StatusCode:
        c = self._cond_of(objid)
        if c is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        return self._status(await self.ops.comment(self.svc.caller(), self.engine.ids[c], _text(comment)))

    async def _timed_shelve(self, objid: Any, shelving_time: Any = None, comment: Any = None) -> ua.StatusCode:
        c = self._cond_of(objid)
        if c is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        ms = _v(shelving_time)
        if not isinstance(ms, (int, float)) or ms <= 0:
            ms = -1.0  # the operator API refuses it (BadShelvingTimeOutOfRange), audited
        return self._status(await self.ops.shelve(self.svc.caller(), self.engine.ids[c],
                                                  _text(comment) or "timed shelve (OPC UA)", ms / 1000.0))

    async def _oneshot_shelve(self, objid: Any, comment: Any = None) -> ua.StatusCode:
        c = self._cond_of(objid)
        if c is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        return self._status(await self.ops.shelve(self.svc.caller(), self.engine.ids[c],
                                                  _text(comment) or "one-shot shelve (OPC UA)", None))

    async def _unshelve(self, objid: Any, comment: Any = None) -> ua.StatusCode:
        c = self._cond_of(objid)
        if c is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        return self._status(await self.ops.unshelve(self.svc.caller(), self.engine.ids[c], _text(comment)))

    async def _service(self, objid: Any, oos: bool, comment: Any) -> ua.StatusCode:
        c = self._cond_of(objid)
        if c is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        return self._status(await self.ops.set_out_of_service(self.svc.caller(), self.engine.device[c], oos,
                                                              _text(comment)))

    async def _remove_from_service(self, objid: Any, comment: Any = None) -> ua.StatusCode:
        return await self._service(objid, True, comment)

    async def _place_in_service(self, objid: Any, comment: Any = None) -> ua.StatusCode:
        return await self._service(objid, False, comment)

    async def _set_oos_method(self, objid: Any, device: Any, oos: Any, comment: Any = None) -> ua.StatusCode:
        return self._status(await self.ops.set_out_of_service(self.svc.caller(), _text(device), bool(_v(oos)),
                                                              _text(comment)))

    async def _refresh(self, objid: Any, subscription_id: Any = None, mid: Any = None) -> ua.StatusCode:
        """ConditionRefresh (Part 9 ConditionType): RefreshStart, every retained red dot, RefreshEnd,
        to the calling subscription only."""
        sid = _v(subscription_id)
        session = current_session.get()
        if session is None or subscription_of(session, sid) is None:
            return ua.StatusCode(ua.StatusCodes.BadSubscriptionIdInvalid)
        who = self.svc.caller()
        await self._marker(ua.ObjectIds.RefreshStartEventType, sid)
        for c in self.engine.retained().tolist():
            v = self.engine.view(c)
            if v.hidden or not who.sees_area(self.engine.area[c]):
                continue
            await self._ensure_node(c)
            eid = self._last_eid.setdefault(c, f"r{c}".encode())
            await self._trigger(c, self._build(c, None, eid), subscription_id=sid)
        await self._marker(ua.ObjectIds.RefreshEndEventType, sid)
        return ua.StatusCode(ua.StatusCodes.Good)

    async def _marker(self, etype: int, sid: int) -> None:
        """RefreshStart/RefreshEnd to every event item of the subscription, bypassing the where
        clause: a client filtering on AlarmConditionType must still see the refresh bracket
        (Part 9 ConditionRefresh), and asyncua's where-clause evaluation would drop them."""
        ev = eo.IMPLEMENTED_EVENTS[etype]()
        ev.EventId = f"{etype}:{self.engine.seq}".encode()
        ev.SourceNode = ua.NodeId(ua.ObjectIds.Server)
        ev.SourceName = "Server"
        ev.Time = ev.ReceiveTime = datetime.now(UTC)
        ev.Severity = 1
        ev.Message = ua.LocalizedText("RefreshStart" if etype == ua.ObjectIds.RefreshStartEventType
                                      else "RefreshEnd")
        sub = self.svc.server.iserver.subscription_service.subscriptions.get(sid)
        if sub is None:
            return
        for mid, mdata in event_items(sub):
            fl = ua.EventFieldList()
            fl.ClientHandle = mdata.client_handle
            fl.EventFields = ev.to_event_fields(mdata.filter.SelectClauses)
            await enqueue_event(sub, mid, fl, mdata.queue_size)
