# One module (over ~600 lines): lifecycle, security and sessions of one asyncua server; address space, alarms, history and asyncua internals are already their own modules.
"""The HMI-facing OPC UA server: the site's tag database over OPC UA, secured, audited.

How it costs in proportion to what clients monitor and read, not to city size:

* the address space is :class:`~scada.opcua.address_space.LazyNodes` (nodes built on first
  access from the tag database, LRU-bounded);
* reads come from the tag database columns through value callbacks;
* one tag-database subscriber gathers the changed rows under the monitored mask and appends
  ``MonitoredItemNotification`` objects straight into asyncua's per-subscription queues (the
  same queues its own ``datachange_callback`` fills, without the per-value ``deepcopy`` and
  coroutine of that path). Unmonitored changes cost one numpy gather per batch.

Requests are policed in :class:`GuardedSession` (an asyncua ``InternalSession``), each with
the identity of the session whose AuthenticationToken it carries (scada/opcua/_asyncua.py):
every state change goes to the operator API (:mod:`scada.operations`: role matrix, areas,
audit) - writes through :meth:`~scada.operations.Operations.write` to the owning driver,
AddNodes/DeleteNodes/references as ``address_space.edit``; a user restricted to some areas
sees only their nodes (Read, Browse, TranslateBrowsePaths, monitored items, history, events);
subscriptions belong to their session, and sessions, subscriptions and monitored items are
bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Node, ua
from asyncua.common.utils import ServiceError
from asyncua.server.internal_session import InternalSession
from cryptography import x509

from .. import quality as Q
from ..operations import Identity, Operations, Outcome, roles
from ..runtime import Service
from ..tags import Changes
from . import history, redundancy
from ._asyncua import (
    ScadaServer,
    address_space_nodes,
    current_channel,
    datachange_queue,
    datachange_target,
    external_sessions,
    install_session_class,
    item_alive,
    monitored_items,
    owned_subscription_ids,
    replace_address_space_nodes,
    set_refusal_hook,
    stop_method_service,
    subscription_of,
    subscription_owner,
)
from .address_space import VARIANT, LazyNodes, MonitorRegistry, make_datavalue
from .address_space import ts as _ts
from .security import (
    NOBODY,
    SECURE_POLICIES,
    PolicedInSession,
    SiteUserManager,
    TrustList,
    ensure_server_certificate,
    identity_of,
    role_of,
)

log = logging.getLogger("scada.opcua")

#: The session whose request is being served (method handlers of other services read it).
current_session: contextvars.ContextVar[InternalSession | None] = contextvars.ContextVar(
    "scada_opcua_session", default=None)

MIN_PUBLISHING_INTERVAL_MS = 50.0
MAX_QUEUE_SIZE = 10
#: queue of an event monitored item (alarm events): one tag batch can raise a cabinet's
#: comm_lost and suppress its 64 luminaires' alarms within one publishing interval; with the
#: data-change bound of 10 the oldest events, the root cause first, were discarded
EVENT_QUEUE_SIZE = 10_000
_NUMERIC_VT = {
    ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
    ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64,
    ua.VariantType.Float, ua.VariantType.Double,
}
_ACCEPT = {
    "float": _NUMERIC_VT,
    "int": _NUMERIC_VT,
    "bool": {ua.VariantType.Boolean},
    "string": {ua.VariantType.String},
}


class GuardedSession(InternalSession):
    """A client session with our role checks, bounds and audit (see module docstring)."""

    scada: OpcUaService

    @property
    def identity(self) -> Identity:
        """Who this session is (the operator API's identity; no rights before activation)."""
        return identity_of(self.user) or NOBODY

    def _role(self) -> str | None:
        return role_of(self.user)

    def _name(self) -> str | None:
        return getattr(self.user, "name", None)

    # ------------------------------------------------------------------ session set-up
    async def create_session(self, params: ua.CreateSessionParameters, sockname: Any = None
                             ) -> ua.CreateSessionResult:
        """Part 4 §5.6.2: with SecurityPolicy None the server ignores the client certificate.
        Real HMIs (UaExpert, node-opcua) send one anyway; checking it against the trust list
        there refused them for nothing. Signed and encrypted channels keep the strict check."""
        ch = current_channel.get()
        if ch is not None and ch.unsecured:
            params.ClientCertificate = None
        return await super().create_session(params, sockname=sockname)

    def activate_session(self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
                         ) -> ua.ActivateSessionResult:
        """Refuse sessions on a None channel unless allowed, and check the channel's certificate.

        asyncua accepts an OpenSecureChannel with SecurityPolicy None even when no None endpoint
        is offered (its connection starts as None and ``select_policy`` keeps it), and checks the
        client certificate only if CreateSession repeats it. The secure channel's certificate is
        what protects the traffic, so it is the one checked here (Part 4 §5.6.3 / §6.1.3).
        """
        svc = self.scada
        ch = current_channel.get()
        via = f"opcua {ch.peer}" if ch is not None else "opcua"
        if not peer_certificate:
            if not svc.cfg.allow_security_none:
                svc.ops.refuse_security(via, "BadSecurityPolicyRejected",
                                        "SecurityPolicy None is not allowed on this server")
                raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        else:
            svc.trust.check(x509.load_der_x509_certificate(peer_certificate))
        token = params.UserIdentityToken
        anonymous = token is None or isinstance(token, ua.AnonymousIdentityToken) or (
            isinstance(token, ua.ExtensionObject) and token.TypeId == ua.NodeId(ua.ObjectIds.Null))
        if anonymous and svc.ops.anonymous_role is None:
            svc.ops.refuse_security(via, "BadIdentityTokenRejected", "anonymous access is refused on this server")
            raise ServiceError(ua.StatusCodes.BadIdentityTokenRejected)
        if not self.is_activated():
            active = sum(1 for s in external_sessions(self.iserver) if s.is_activated())
            if active >= svc.cfg.max_sessions:
                svc.ops.refuse_security(via, "BadTooManySessions",
                                        f"{active} sessions active (opcua.max_sessions)")
                raise ServiceError(ua.StatusCodes.BadTooManySessions)
        return super().activate_session(params, peer_certificate)

    # ------------------------------------------------------------------ areas as tenants
    def _visible(self, nodeid: Any) -> bool:
        """May this session see ``nodeid``? Standard (ns 0) nodes and server objects (``#...``)
        always; our tag, device and area nodes by the user's areas (Identity.sees)."""
        ident = self.identity
        if ident.areas is None:
            return True
        if getattr(nodeid, "NamespaceIndex", 0) != self.scada.namespace_index:
            return True
        ident_s = nodeid.Identifier
        if not isinstance(ident_s, str) or ident_s.startswith("#"):
            return True
        return ident.sees(ident_s)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        """Part 3 §5.6.3: UserAccessLevel and UserExecutable are those of *this* user - HMIs
        grey out setpoints and methods the user cannot use. The shared nodes hold the full
        access; it is narrowed here from the role matrix, per session. Nodes of areas the user
        may not see read ``BadUserAccessDenied``."""
        ident = self.identity
        hidden = [k for k, rv in enumerate(params.NodesToRead) if not self._visible(rv.NodeId)]
        results = await super().read(params)
        for k in hidden:
            results[k] = _denied_dv()
        ual, uex = ua.AttributeIds.UserAccessLevel, ua.AttributeIds.UserExecutable
        svc = self.scada
        for k, rv in enumerate(params.NodesToRead):
            if k in hidden:
                continue
            dv = results[k]
            if rv.AttributeId == ual and rv.NodeId.NamespaceIndex == svc.namespace_index:
                i = svc.tag_index(rv.NodeId)
                if i is None or dv.Value is None or not isinstance(dv.Value.Value, int):
                    continue
                path = svc.tagdb.path(i)
                if not (roles.allows(ident.role, svc.ops.write_action(path)) and ident.sees(path)):
                    results[k] = ua.DataValue(ua.Variant(dv.Value.Value & ~0x02, ua.VariantType.Byte))
            elif rv.AttributeId == uex and dv.Value is not None and isinstance(dv.Value.Value, bool):
                action = svc.method_action(rv.NodeId)
                if action is not None and not roles.allows(ident.role, action):
                    results[k] = ua.DataValue(ua.Variant(False, ua.VariantType.Boolean))
        return results

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        results = await super().browse(params)
        if self.identity.areas is None:
            return results
        for k, bd in enumerate(params.NodesToBrowse):
            if not self._visible(bd.NodeId):
                results[k] = ua.BrowseResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadUserAccessDenied))
                continue
            r = results[k]
            if r.References:
                r.References = [ref for ref in r.References if self._visible(ref.NodeId)]
        return results

    async def translate_browsepaths_to_nodeids(self, params: list[ua.BrowsePath]) -> list[ua.BrowsePathResult]:
        results = await super().translate_browsepaths_to_nodeids(params)
        if self.identity.areas is None:
            return results
        for r in results:
            if r.Targets:
                r.Targets = [t for t in r.Targets if self._visible(t.TargetId)]
                if not r.Targets:
                    r.StatusCode = ua.StatusCode(ua.StatusCodes.BadNoMatch)
        return results

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        out = []
        for wv in params.NodesToWrite:
            out.append(await self.scada.handle_write(self, wv))
        return out

    async def _admin_only(self, action: str, target: str, fn: Callable[[], Awaitable[list[Any]]], n: int) -> list[Any]:
        ops = self.scada.ops
        denied = ops.authorize(self.identity, "address_space.edit", target, service=action)
        if denied is not None:
            raise ServiceError(ua.StatusCodes.BadUserAccessDenied)
        res = await fn()
        ops.record(self.identity, "address_space.edit", target, _GOOD_OUTCOME, service=action, count=n)
        return res

    async def add_nodes(self, params: list[ua.AddNodesItem]) -> list[ua.AddNodesResult]:
        target = ",".join(str(p.RequestedNewNodeId) for p in params[:5])
        return await self._admin_only("AddNodes", target, lambda: super(GuardedSession, self).add_nodes(params),
                                      len(params))

    async def delete_nodes(self, params: ua.DeleteNodesParameters) -> list[ua.StatusCode]:
        target = ",".join(str(p.NodeId) for p in params.NodesToDelete[:5])
        return await self._admin_only("DeleteNodes", target,
                                      lambda: super(GuardedSession, self).delete_nodes(params), len(params.NodesToDelete))

    async def add_references(self, params: list[ua.AddReferencesItem]) -> list[ua.StatusCode]:
        return await self._admin_only("AddReferences", "references",
                                      lambda: super(GuardedSession, self).add_references(params), len(params))

    async def delete_references(self, params: list[ua.DeleteReferencesItem]) -> list[ua.StatusCode]:
        return await self._admin_only("DeleteReferences", "references",
                                      lambda: super(GuardedSession, self).delete_references(params), len(params))

    async def create_subscription(self, params: ua.CreateSubscriptionParameters, callback: Callable[..., Any],
                                  request_callback: Callable[..., Any] | None = None) -> ua.CreateSubscriptionResult:
        mine = sum(1 for s in self.subscription_service.subscriptions.values() if s.session_id == self.session_id)
        if mine >= self.scada.cfg.max_subscriptions_per_session:
            raise ServiceError(ua.StatusCodes.BadTooManySubscriptions)
        # Part 4 §5.13.2: the server revises the interval; 0 would publish on every change
        params.RequestedPublishingInterval = max(float(params.RequestedPublishingInterval or 0),
                                                 MIN_PUBLISHING_INTERVAL_MS)
        return await super().create_subscription(params, callback, request_callback)

    # Part 4 §5.13: a subscription belongs to the session that created it. asyncua's
    # subscription service is server-wide, so every service naming a subscription is checked
    # here (see scada/opcua/_asyncua.py).
    def _own(self, subscription_id: int) -> Any:
        sub = subscription_of(self, subscription_id)
        if sub is None:
            raise ServiceError(ua.StatusCodes.BadSubscriptionIdInvalid)
        return sub

    def modify_subscription(self, params: ua.ModifySubscriptionParameters) -> ua.ModifySubscriptionResult:
        self._own(params.SubscriptionId)
        return super().modify_subscription(params)

    async def delete_subscriptions(self, ids: list[int]) -> list[ua.StatusCode]:
        mine = owned_subscription_ids(self)
        ok = await super().delete_subscriptions([i for i in ids if i in mine])
        it = iter(ok)
        return [next(it) if i in mine else ua.StatusCode(ua.StatusCodes.BadSubscriptionIdInvalid) for i in ids]

    async def set_publishing_mode(self, params: ua.SetPublishingModeParameters) -> list[ua.StatusCode]:
        mine = owned_subscription_ids(self)
        ids = list(params.SubscriptionIds)
        params.SubscriptionIds = [i for i in ids if i in mine]
        ok = await super().set_publishing_mode(params) if params.SubscriptionIds else []
        it = iter(ok)
        return [next(it) if i in mine else ua.StatusCode(ua.StatusCodes.BadSubscriptionIdInvalid) for i in ids]

    async def set_monitoring_mode(self, params: ua.SetMonitoringModeParameters) -> list[ua.StatusCode]:
        self._own(params.SubscriptionId)
        return await super().set_monitoring_mode(params)

    async def modify_monitored_items(self, params: ua.ModifyMonitoredItemsParameters
                                     ) -> list[ua.MonitoredItemModifyResult]:
        self._own(params.SubscriptionId)
        return await super().modify_monitored_items(params)

    async def delete_monitored_items(self, params: ua.DeleteMonitoredItemsParameters) -> list[ua.StatusCode]:
        self._own(params.SubscriptionId)
        return await super().delete_monitored_items(params)

    def republish(self, params: ua.RepublishParameters) -> ua.NotificationMessage:
        self._own(params.SubscriptionId)
        return super().republish(params)

    async def transfer_subscriptions(self, params: ua.TransferSubscriptionsParameters,  # type: ignore[override]
                                     callback: Callable[..., Any]) -> list[ua.TransferResult]:
        """Part 4 §5.13.7: only subscriptions of a session of the *same user* may be taken over."""
        me = self._name()
        asked = list(params.SubscriptionIds)
        allowed, results = [], {}
        for sid in asked:
            owner = subscription_owner(self, sid)
            if owner is None:
                results[sid] = ua.StatusCode(ua.StatusCodes.BadSubscriptionIdInvalid)
            elif owner is not self and (getattr(owner.user, "name", None) != me or me is None):
                results[sid] = ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
                self.scada.ops.refuse_security(self.identity.via or "opcua", "BadUserAccessDenied",
                                               f"TransferSubscriptions of subscription {sid} of another user",
                                               user=me)
            else:
                allowed.append(sid)
        params.SubscriptionIds = allowed
        done = iter(await super().transfer_subscriptions(params, callback) if allowed else [])
        return [ua.TransferResult(StatusCode=results[sid]) if sid in results else next(done) for sid in asked]

    async def create_monitored_items(self, params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
        sub = self._own(params.SubscriptionId)
        have = len(monitored_items(sub))
        if have + len(params.ItemsToCreate) > self.scada.cfg.max_monitored_items_per_subscription:
            raise ServiceError(ua.StatusCodes.BadTooManyMonitoredItems)
        asked_items = list(params.ItemsToCreate)
        refused = {k for k, it in enumerate(asked_items) if not self._visible(it.ItemToMonitor.NodeId)}
        if refused:
            params.ItemsToCreate = [it for k, it in enumerate(asked_items) if k not in refused]
        made = iter(await super().create_monitored_items(params) if params.ItemsToCreate else [])
        results = [ua.MonitoredItemCreateResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadUserAccessDenied))
                   if k in refused else next(made) for k in range(len(asked_items))]
        params.ItemsToCreate = asked_items
        # asyncua caps every queue at max_monitored_item_queue_size; event items get their own
        items = monitored_items(sub)
        for req, res in zip(params.ItemsToCreate, results, strict=False):
            md = items.get(res.MonitoredItemId)
            if md is not None and req.ItemToMonitor.AttributeId == ua.AttributeIds.EventNotifier:
                asked = int(req.RequestedParameters.QueueSize or 0)
                md.queue_size = res.RevisedQueueSize = min(asked or EVENT_QUEUE_SIZE, EVENT_QUEUE_SIZE)
        return results

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        """Method handlers (alarm actions, overrides) read the caller from ``current_session``
        and go through the operator API; objects of areas the user may not see are refused."""
        refused = {k for k, c in enumerate(params) if not self._visible(c.ObjectId)}
        token = current_session.set(self)
        try:
            todo = [c for k, c in enumerate(params) if k not in refused]
            done = iter(await super().call(todo) if todo else [])
        finally:
            current_session.reset(token)
        return [ua.CallMethodResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadUserAccessDenied))
                if k in refused else next(done) for k in range(len(params))]

    async def history_update(self, params: ua.HistoryUpdateParameters) -> list[ua.HistoryUpdateResult]:
        """History is written by the historian only (Part 11 §6.8 HistoryUpdate is refused)."""
        self.scada.ops.authorize(self.identity, "history.update", "history")
        raise ServiceError(ua.StatusCodes.BadUserAccessDenied)

    async def history_read(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        nodes = list(params.NodesToRead)
        refused = {k for k, n in enumerate(nodes) if not self._visible(n.NodeId)}
        if not refused:
            return await history.read_history(self.scada, params, super().history_read)
        params.NodesToRead = [n for k, n in enumerate(nodes) if k not in refused]
        got = iter(await history.read_history(self.scada, params, super().history_read)
                   if params.NodesToRead else [])
        params.NodesToRead = nodes
        return [ua.HistoryReadResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadUserAccessDenied))
                if k in refused else next(got) for k in range(len(nodes))]


class _Route:
    """Where a monitored item's notifications go (resolved once per asyncua handle)."""

    __slots__ = ("last_q", "last_v", "mdata", "mid", "svc")

    def __init__(self, svc: Any, mid: int, mdata: Any):
        self.svc = svc
        self.mid = mid
        self.mdata = mdata
        self.last_v: float | None = None
        self.last_q: int | None = None


class OpcUaService(Service):
    """The OPC UA server service (``runtime.services["opcua"]``)."""

    name = "opcua"

    def __init__(self, runtime: Any):
        self.runtime = runtime
        self.cfg = runtime.site.config.opcua
        self.tagdb = runtime.tagdb
        self.state_dir = Path(runtime.state_dir) / "opcua"
        #: the operator API: authentication, role matrix, areas, audit (shared by every front end)
        self.ops: Operations = runtime.operations
        self.server: ScadaServer | None = None
        self.namespace_index: int = -1
        self.server_node: Node | None = None
        self.on_started: list[Callable[[OpcUaService], Awaitable[None]]] = []
        self.endpoint = f"opc.tcp://{self.cfg.host}:{self.cfg.port}/scada"
        # each server of a redundant pair has its own ApplicationUri (Part 4 §6.6.2)
        self.app_uri = redundancy.application_uri(
            runtime.site.name, runtime.ha.node if runtime.ha.pair else None)
        self._service_level = redundancy.ServiceLevelFollower(runtime.ha, lambda: self.server)
        self.registry = MonitorRegistry(len(self.tagdb.value))
        self.lazy: LazyNodes | None = None
        self.trust: TrustList | None = None
        self._routes: dict[int, _Route] = {}
        self._dtypes: dict[int, str] = {}
        self._sub_handle: object | None = None
        self._paths: list[str] | None = None
        self._area_nodes: dict[str, ua.NodeId] = {}
        self.started = asyncio.Event()
        self.stats = {"notifications": 0, "fallback": 0, "writes": 0, "denied": 0}

    # ---------------------------------------------------------------- public API (for F, H, CLI)
    def connect_info(self) -> str:
        sec = "None allowed (DEMO: unencrypted endpoint offered)" if self.cfg.allow_security_none else \
            "Basic256Sha256/Aes128_Sha256_RsaOaep, Sign or SignAndEncrypt"
        users = ""
        if self.ops.demo_users_file is not None:
            users = f"; demo accounts and passwords in {self.ops.demo_users_file}"
        anon = "anonymous = viewer" if self.cfg.anonymous == "viewer" else "no anonymous access"
        return (f"{self.endpoint} (namespace {self.cfg.namespace_uri}; security {sec}; {anon}{users}; "
                f"trust client certificates by copying them into {self.trust_dir})")

    @property
    def trust_dir(self) -> Path:
        return Path(self.cfg.trust_dir) if self.cfg.trust_dir else self.state_dir / "trusted"

    def tag_index(self, nodeid: ua.NodeId) -> int | None:
        return self.lazy.tag_index(nodeid) if self.lazy is not None else None

    async def device_node(self, device_path: str) -> Node:
        """The Object of a device, materialised and pinned (safe to add nodes under it)."""
        nid = ua.NodeId(device_path, self.namespace_index)
        self.tagdb.device_index(device_path)  # raises UnknownTagError naming the device
        self.lazy.pin(nid)
        return Node(self.server.iserver.isession, nid)

    def area_node(self, area: str) -> Node:
        nid = self._area_nodes.get(area)
        if nid is None:
            raise KeyError(f"unknown area {area!r}; known: {', '.join(sorted(self._area_nodes))}")
        return Node(self.server.iserver.isession, nid)

    def user_of(self, session: Any = None) -> Any:
        """The asyncua user of ``session`` (default: the session whose method call is running)."""
        s = session if session is not None else current_session.get()
        return getattr(s, "user", None)

    def caller(self) -> Identity:
        """The identity of the session whose method call is running (no rights outside one)."""
        s = current_session.get()
        return s.identity if isinstance(s, GuardedSession) else NOBODY

    def method_action(self, nodeid: Any) -> str | None:
        """The role-matrix action a method node performs (for UserExecutable), or None."""
        ident = getattr(nodeid, "Identifier", None)
        if getattr(nodeid, "NamespaceIndex", -1) == 0:
            return _METHOD_ACTIONS.get(ident)
        if isinstance(ident, str) and ident.startswith("#"):
            return _OWN_METHOD_ACTIONS.get(ident.rsplit(".", 1)[-1])
        return None

    def user_name(self, session: Any = None) -> str | None:
        return getattr(self.user_of(session), "name", None)

    def role_of(self, user: Any = None) -> str | None:
        """Our role of ``user`` (default: the current caller's). None = no rights."""
        return role_of(user if user is not None else self.user_of())

    # ---------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        try:
            await self.start()
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    async def aclose(self) -> None:
        await self._shutdown()

    async def start(self) -> None:
        cfg = self.cfg
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry = MonitorRegistry(len(self.tagdb.value))  # fresh on a supervised restart
        self._routes = {}
        self.registry.on_remove = lambda handle: self._routes.pop(handle, None)
        self.trust = TrustList(self.trust_dir, self.state_dir / "rejected", self.ops.refuse_security,
                               cfg.trust_all_clients)
        server = ScadaServer(user_manager=SiteUserManager(self.ops))
        iserver = server.iserver
        install_session_class(iserver, type("GuardedSession", (GuardedSession,), {"scada": self}))
        set_refusal_hook(iserver, self.ops.refuse_security)
        iserver.allow_remote_admin = False
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"SCADA {self.runtime.site.name}")
        server.product_uri = "urn:scada:streetlight"
        await server.set_application_uri(self.app_uri)
        cert, key = await asyncio.to_thread(ensure_server_certificate, self.state_dir, self.app_uri, cfg.host)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        policies = list(SECURE_POLICIES)
        if cfg.allow_security_none:
            policies.insert(0, ua.SecurityPolicyType.NoSecurity)
            log.warning("OPC UA: SecurityPolicy None is OFFERED at %s (opcua.allow_security_none: true). "
                        "Use only for a demo or a lab; HMI traffic is then unencrypted.", self.endpoint)
        server.set_security_policy(policies, permission_ruleset=PolicedInSession())
        tokens: list[type] = [ua.UserNameIdentityToken]
        if cfg.anonymous == "viewer":
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        server.set_certificate_validator(self.trust)
        # resource bounds (asyncua issues on sessions never activated, partial chunks, orphans)
        iserver.max_connections = cfg.max_sessions
        iserver.max_subscriptions = cfg.max_sessions * cfg.max_subscriptions_per_session
        iserver.max_pending_activation_seconds = 10.0
        iserver.max_session_timeout_ms = cfg.session_timeout * 1000.0
        iserver.min_session_timeout_ms = min(5_000.0, cfg.session_timeout * 1000.0)
        iserver.max_monitored_item_queue_size = MAX_QUEUE_SIZE
        iserver.max_unacked_messages_per_subscription = 100
        iserver.max_pending_messages_per_connection = 100
        # orphaned subscriptions (CloseSession without DeleteSubscriptions, vanished clients)
        # live at most LifetimeCount publishing intervals: 600 x 1 s = 10 min
        iserver.max_lifetime_count = 600
        iserver.max_keep_alive_count = 200
        server.limits.max_chunk_count = cfg.max_pending_chunks
        server.limits.max_message_size = cfg.max_pending_chunks * server.limits.max_recv_buffer
        self.namespace_index = await server.register_namespace(cfg.namespace_uri)
        await self._build(server)
        await redundancy.install(server, self.runtime.ha, self.runtime.site)
        try:
            await server.start()
        except OSError as e:
            stop_method_service(server.iserver)
            raise OSError(e.errno, f"OPC UA server cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e}); "
                                   f"is another process using that port? Set opcua.port in the site file "
                                   f"(or --opcua-port)") from e
        self.server = server
        self.server_node = server.nodes.server
        self._sub_handle = self.tagdb.subscribe(self._on_changes, name="opcua-server")
        self.started.set()
        log.info("OPC UA server listening on %s (%d tags, namespace %d = %s)", self.endpoint, len(self.tagdb),
                 self.namespace_index, cfg.namespace_uri)
        for cb in list(self.on_started):
            try:
                await cb(self)
            except Exception:
                log.exception("OPC UA on_started callback %r failed", cb)

    async def _shutdown(self) -> None:
        if self._sub_handle is not None:
            self.tagdb.unsubscribe(self._sub_handle)
            self._sub_handle = None
        server, self.server = self.server, None
        self.started.clear()
        if server is not None:
            try:
                await server.stop()
            except Exception:
                log.exception("error stopping the OPC UA server")
            stop_method_service(server.iserver)

    async def _build(self, server: ScadaServer) -> None:
        """Area folders, the Scada object with FindTags, then the lazy node map."""
        ns = self.namespace_index
        objects = server.nodes.objects
        descriptions = {f"{dc.area}/{dc.id}": dc.description for dc in self.runtime.site.config.devices
                        if dc.description}
        base = address_space_nodes(server.iserver)
        lazy = LazyNodes(base, self.tagdb, ns, self.registry, historizing=self._historizing,
                         descriptions=descriptions)
        for area in sorted(lazy.tree.areas):
            nid = ua.NodeId(area, ns)
            folder = await objects.add_folder(nid, ua.QualifiedName(area, ns))
            # Part 3 §5.5.2 / Part 9 §4.3: areas are event notifiers under the Server object
            await folder.write_attribute(ua.AttributeIds.EventNotifier,
                                         ua.DataValue(ua.Variant(1, ua.VariantType.Byte)))
            await server.nodes.server.add_reference(nid, ua.ObjectIds.HasNotifier)
            base[nid].references.extend(lazy.area_refs(area))
            self._area_nodes[area] = nid
        lazy.area_nodes = self._area_nodes
        scada = await objects.add_object(ua.NodeId("#Scada", ns), ua.QualifiedName("Scada", ns))
        await scada.add_method(
            ua.NodeId("#Scada.FindTags", ns), ua.QualifiedName("FindTags", ns), self._find_tags,
            [ua.VariantType.String, ua.VariantType.UInt32],
            [ua.VariantType.String, ua.VariantType.String],
        )
        S, D = ua.VariantType.String, ua.VariantType.Double
        await scada.add_method(
            ua.NodeId("#Scada.SetOverride", ns), ua.QualifiedName("SetOverride", ns), self._set_override,
            [D, D, S, S, S, S], [S, S])
        await scada.add_method(
            ua.NodeId("#Scada.CancelOverride", ns), ua.QualifiedName("CancelOverride", ns), self._cancel_override,
            [S], [S])
        replace_address_space_nodes(server.iserver, lazy)
        self.lazy = lazy

    def _historizing(self, p: Any) -> bool:
        return bool(p.history) and "historian" in self.runtime.services

    # ---------------------------------------------------------------- FindTags
    async def _find_tags(self, parent: ua.NodeId, pattern: ua.Variant | str, limit: ua.Variant | int = 0) -> list[ua.Variant]:
        """``FindTags(pattern, max)`` -> (paths, units): glob over tag paths, server side, so a
        client never browses 200,000 nodes to match a pattern. ``max`` 0 means 10,000."""
        pat = pattern.Value if isinstance(pattern, ua.Variant) else pattern
        n = limit.Value if isinstance(limit, ua.Variant) else limit
        paths, units = await self.find_tags(str(pat or "*"), int(n or 10_000), self.caller())
        return [ua.Variant(paths, ua.VariantType.String), ua.Variant(units, ua.VariantType.String)]

    # ---------------------------------------------------------------- overrides (operator API)
    async def _set_override(self, parent: ua.NodeId, level: Any, minutes: Any, reason: Any, areas: Any,
                            devices: Any, groups: Any) -> Any:
        """``SetOverride(level %, minutes, reason, areas, devices, groups)`` -> (id, message);
        the scope lists are comma-separated. The CLI's ``scada schedule override set``."""
        def lst(x: Any) -> list[str] | None:
            v = [p.strip() for p in str(_val(x) or "").split(",") if p.strip()]
            return v or None

        try:
            lv, mn = float(_val(level)), float(_val(minutes))
        except (TypeError, ValueError):
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        out = await self.ops.set_override(self.caller(), level=lv, minutes=mn, reason=str(_val(reason) or ""),
                                          areas=lst(areas), devices=lst(devices), groups=lst(groups))
        if not out.ok:
            return ua.StatusCode(int(out.status))
        return [ua.Variant(out.data.get("id", ""), ua.VariantType.String),
                ua.Variant(out.message, ua.VariantType.String)]

    async def _cancel_override(self, parent: ua.NodeId, override_id: Any) -> Any:
        out = await self.ops.cancel_override(self.caller(), str(_val(override_id) or ""))
        if not out.ok:
            return ua.StatusCode(int(out.status))
        return [ua.Variant(out.message, ua.VariantType.String)]

    async def find_tags(self, pattern: str, limit: int = 10_000, who: Identity | None = None
                        ) -> tuple[list[str], list[str]]:
        """Tag paths matching a glob, with their units. Devices whose path cannot start the
        pattern's literal prefix are skipped whole; the scan yields to the event loop every
        2,000 devices so a city-wide pattern never stalls the server."""
        rx = re.compile(fnmatch.translate(pattern))
        db = self.tagdb
        paths, units = [], []
        literal = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        for d, dev in db.devices():
            if d % 2000 == 1999:
                await asyncio.sleep(0)
            if literal and not (dev.startswith(literal) or literal.startswith(dev)):
                continue
            if who is not None and not who.sees(dev):
                continue
            for p in db.device_schema(d).points:
                path = f"{dev}/{p.name}"
                if rx.match(path):
                    paths.append(path)
                    units.append(p.unit)
                    if len(paths) >= limit:
                        return paths, units
        return paths, units

    # ---------------------------------------------------------------- writes
    async def handle_write(self, session: GuardedSession, wv: ua.WriteValue) -> ua.StatusCode:
        """A Write of one attribute: tag values go to the operator API (role matrix, areas,
        audit, owning driver); other attributes of our nodes are not writable; attributes of
        standard nodes are an administrator's address-space edit."""
        who = session.identity
        ops = self.ops
        i = self.tag_index(wv.NodeId)
        if i is None:
            target = wv.NodeId.to_string()
            denied = ops.authorize(who, "address_space.edit", target, attribute=int(wv.AttributeId))
            if denied is not None:
                return ua.StatusCode(denied.status)
            if wv.NodeId.NamespaceIndex == self.namespace_index:
                ops.record(who, "address_space.edit", target, _outcome(Q.BadNotWritable),
                           attribute=int(wv.AttributeId))
                return ua.StatusCode(Q.BadNotWritable)
            res = await self.server.iserver.attribute_service.write(ua.WriteParameters([wv]), user=session.user)
            ops.record(who, "address_space.edit", target, _outcome(res[0].value), attribute=int(wv.AttributeId))
            return res[0]
        path = self.tagdb.path(i)
        action = ops.write_action(path)
        denied = ops.authorize(who, action, path, new=_plain(wv.Value))
        if denied is not None:
            self.stats["denied"] += 1
            return ua.StatusCode(denied.status)
        if wv.AttributeId != ua.AttributeIds.Value:
            ops.record(who, action, path, _outcome(Q.BadNotWritable), attribute=int(wv.AttributeId))
            return ua.StatusCode(Q.BadNotWritable)
        p = self.tagdb.point(i)
        var = wv.Value.Value if wv.Value is not None else None
        if var is None or var.VariantType not in _ACCEPT[p.dtype] or var.is_array:
            vt = var.VariantType.name if var is not None else "null"
            ops.record(who, action, path, _outcome(Q.BadTypeMismatch), new=_plain(wv.Value), variant=vt)
            return ua.StatusCode(Q.BadTypeMismatch)
        out = await ops.write(who, i, var.Value)
        self.stats["writes"] += 1
        return ua.StatusCode(int(out.status))

    # ---------------------------------------------------------------- monitored items
    def _on_changes(self, ch: Changes) -> None:
        reg = self.registry
        idx = ch.indices
        if not len(idx):
            return
        mask = reg.mask
        if len(mask) <= int(idx.max()):
            mask = np.zeros(len(self.tagdb.value), dtype=np.bool_)
            mask[: len(reg.mask)] = reg.mask
            reg.mask = mask
        m = mask[idx]
        if not m.any():
            return
        rows = np.flatnonzero(m)
        sel_i = idx[rows].tolist()
        sel_q = ch.quality[rows].tolist()
        sel_v = ch.values[rows].tolist()
        sel_ts = ch.source_ts[rows].tolist()
        strings = ch.strings or {}
        by_tag = reg.by_tag
        dtypes = self._dtypes
        server_ts = _ts(ch.server_ts)
        last_src, last_src_dt = None, None
        for i, q, v, src in zip(sel_i, sel_q, sel_v, sel_ts, strict=True):
            cbs = by_tag.get(i)
            if not cbs:
                continue
            dtype = dtypes.get(i)
            if dtype is None:  # the OPC UA data type the node declares
                dtype = dtypes[i] = self.tagdb.point(i).data_type
            if q & 0x80000000:
                var = _NULL
                v = None
            elif dtype == "String":
                v = strings.get(i)
                var = ua.Variant(v, ua.VariantType.String) if v is not None else _NULL
            else:
                var = _fast_variant(dtype, v)
            if src != last_src:  # batches usually share one source time
                last_src, last_src_dt = src, _ts(src)
            dv = ua.DataValue(var, _status(q), last_src_dt, server_ts)
            for handle, cb in list(cbs.items()):
                self._deliver(handle, cb, dv, v, q)

    def _deliver(self, handle: int, cb: Any, dv: ua.DataValue, v: Any, q: int) -> None:
        route = self._routes.get(handle)
        if route is None or not item_alive(route.svc, route.mid):
            target = datachange_target(cb, handle)
            if target is None:
                # not an asyncua monitored item we understand: use its public coroutine path
                self.stats["fallback"] += 1
                asyncio.get_running_loop().create_task(cb(handle, dv))
                return
            route = self._routes[handle] = _Route(*target)
        md = route.mdata
        if md.mode == ua.MonitoringMode.Disabled:
            return
        flt = md.filter
        if flt is not None and isinstance(flt, ua.DataChangeFilter):
            if flt.Trigger == ua.DataChangeTrigger.Status and q == route.last_q:
                return
            if (flt.DeadbandType == ua.DeadbandType.Absolute and q == route.last_q and isinstance(v, float)
                    and route.last_v is not None and abs(v - route.last_v) <= flt.DeadbandValue):
                return
        route.last_v = v if isinstance(v, float) else None
        route.last_q = q
        notif = ua.MonitoredItemNotification(ClientHandle=md.client_handle, Value=dv)
        queue = datachange_queue(route.svc)
        lst = queue.get(route.mid)
        if lst is None:
            queue[route.mid] = [notif]
        else:
            size = md.queue_size or 1
            if len(lst) >= size:
                del lst[0]
            lst.append(notif)
        self.stats["notifications"] += 1


_NEW = object.__new__
_GOOD_OUTCOME = Outcome(Q.Good)


def _denied_dv() -> ua.DataValue:
    return ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadUserAccessDenied))


def _outcome(code: int) -> Outcome:
    return Outcome(int(code))


#: Part 9 methods (ns 0) -> the role-matrix action they perform (UserExecutable per session)
_METHOD_ACTIONS: dict[int, str] = {
    ua.ObjectIds.AcknowledgeableConditionType_Acknowledge: "alarm.acknowledge",
    ua.ObjectIds.ConditionType_AddComment: "alarm.comment",
    ua.ObjectIds.AlarmConditionType_ShelvingState_TimedShelve: "alarm.shelve",
    ua.ObjectIds.ShelvedStateMachineType_TimedShelve: "alarm.shelve",
    ua.ObjectIds.AlarmConditionType_ShelvingState_OneShotShelve: "alarm.shelve",
    ua.ObjectIds.ShelvedStateMachineType_OneShotShelve: "alarm.shelve",
    ua.ObjectIds.AlarmConditionType_ShelvingState_Unshelve: "alarm.shelve",
    ua.ObjectIds.ShelvedStateMachineType_Unshelve: "alarm.shelve",
    ua.ObjectIds.AlarmConditionType_RemoveFromService: "device.out_of_service",
    ua.ObjectIds.AlarmConditionType_PlaceInService: "device.out_of_service",
    ua.ObjectIds.ConditionType_ConditionRefresh: "read",
    ua.ObjectIds.ConditionType_ConditionRefresh2: "read",
}
#: our own methods (``#Object.Method``) -> action
_OWN_METHOD_ACTIONS: dict[str, str] = {
    "FindTags": "read",
    "SetOutOfService": "device.out_of_service",
    "SetOverride": "schedule.override",
    "CancelOverride": "schedule.override",
}
_VT_D, _VT_B, _VT_I = ua.VariantType.Double, ua.VariantType.Boolean, ua.VariantType.Int64
_VT_OTHER = {name: getattr(ua.VariantType, name) for name in
             ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "UInt64", "Float")}
_STATUS: dict[int, ua.StatusCode] = {}
_NULL = ua.Variant(None, ua.VariantType.Null)


def _variant_of(value: Any, vt: ua.VariantType) -> ua.Variant:
    """A scalar Variant without asyncua's type-guessing ``__post_init__`` (4x cheaper; the
    notification path builds one per delivered change). Same fields, same encoding."""
    o = _NEW(ua.Variant)
    o.Value = value
    o.VariantType = vt
    o.Dimensions = None
    o.is_array = False
    return o


def _fast_variant(dtype: str, v: float) -> ua.Variant:
    if v != v:
        return _NULL
    if dtype == "Double":
        return _variant_of(v, _VT_D)
    if dtype == "Boolean":
        return _variant_of(bool(v), _VT_B)
    if dtype == "Int64":
        return _variant_of(round(v), _VT_I)
    vt = _VT_OTHER[dtype]
    return _variant_of(v if dtype == "Float" else round(v), vt)


def _status(q: int) -> ua.StatusCode:
    """Shared StatusCode objects (never mutated by asyncua) - one per code seen."""
    sc = _STATUS.get(q)
    if sc is None:
        sc = _STATUS[q] = ua.StatusCode(q)
    return sc


def _val(x: Any) -> Any:
    return x.Value if isinstance(x, ua.Variant) else x


def _plain(dv: ua.DataValue | None) -> Any:
    if dv is None or dv.Value is None:
        return None
    v = dv.Value.Value
    return v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"


__all__ = ["VARIANT", "GuardedSession", "OpcUaService", "current_session", "make_datavalue"]
