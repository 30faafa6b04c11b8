"""The HMI-facing OPC UA server: the site's tag database over OPC UA, secured, audited.

How it costs in proportion to what clients monitor and read, not to city size:

* the address space is :class:`~scada.opcua.address_space.LazyNodes` (nodes built on first
  access from the tag database, LRU-bounded);
* reads come from the tag database columns through value callbacks;
* one tag-database subscriber gathers the changed rows under the monitored mask and appends
  ``MonitoredItemNotification`` objects straight into asyncua's per-subscription queues (the
  same queues its own ``datachange_callback`` fills, without the per-value ``deepcopy`` and
  coroutine of that path). Unmonitored changes cost one numpy gather per batch.

Requests are policed in :class:`GuardedSession` (an asyncua ``InternalSession``): writes go
to :meth:`scada.runtime.Runtime.write` (the owning driver answers) after the role check
(``operator`` and up), AddNodes/DeleteNodes/references need ``admin``, subscriptions and
monitored items per session are bounded; every write, denial and login is appended to the
audit log (``<state_dir>/opcua/audit.log``).
"""

from __future__ import annotations

import asyncio
import contextvars
import fnmatch
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Node, Server, ua
from asyncua.common.utils import ServiceError
from asyncua.server.internal_session import InternalSession
from cryptography import x509

from .. import quality as Q
from ..audit import AuditLog
from ..runtime import Service
from ..tags import Changes
from ..users import UserStore, generate_password, hash_password, role_allows
from . import history
from .address_space import VARIANT, LazyNodes, MonitorRegistry, make_datavalue
from .address_space import ts as _ts
from .security import (
    SECURE_POLICIES,
    PolicedInSession,
    SiteUserManager,
    TrustList,
    ensure_server_certificate,
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

    def _role(self) -> str | None:
        return role_of(self.user)

    def _name(self) -> str | None:
        return getattr(self.user, "name", None)

    def activate_session(self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
                         ) -> ua.ActivateSessionResult:
        """Refuse sessions on a None channel unless allowed, and check the channel's certificate.

        asyncua accepts an OpenSecureChannel with SecurityPolicy None even when no None endpoint
        is offered (its connection starts as None and ``select_policy`` keeps it), and checks the
        client certificate only if CreateSession repeats it. The secure channel's certificate is
        what protects the traffic, so it is the one checked here (Part 4 §5.6.3 / §6.1.3).
        """
        svc = self.scada
        if not peer_certificate:
            if not svc.cfg.allow_security_none:
                svc.audit.record(user=None, action="login", target="session", outcome="BadSecurityPolicyRejected",
                                 reason="SecurityPolicy None is not allowed on this server")
                raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        else:
            svc.trust.check(x509.load_der_x509_certificate(peer_certificate))
        if not self.is_activated():
            active = sum(1 for s in self.iserver._external_sessions.values() if s.is_activated())
            if active >= svc.cfg.max_sessions:
                svc.audit.record(user=None, action="login", target="session", outcome="BadTooManySessions")
                raise ServiceError(ua.StatusCodes.BadTooManySessions)
        return super().activate_session(params, peer_certificate)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        """Part 3 §5.6.3: UserAccessLevel is the access of *this* user - HMIs grey out setpoints
        a viewer cannot write. The shared node holds the full access; it is narrowed here."""
        results = await super().read(params)
        if role_allows(self._role(), "write"):
            return results
        ual = ua.AttributeIds.UserAccessLevel
        for k, rv in enumerate(params.NodesToRead):
            if rv.AttributeId == ual and rv.NodeId.NamespaceIndex == self.scada.namespace_index:
                dv = results[k]
                if dv.Value is not None and isinstance(dv.Value.Value, int):
                    results[k] = ua.DataValue(ua.Variant(dv.Value.Value & ~0x02, ua.VariantType.Byte))
        return results

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        out = []
        for wv in params.NodesToWrite:
            out.append(await self.scada.handle_write(self, wv))
        return out

    async def _admin_only(self, action: str, target: str, fn: Callable[[], Awaitable[list[Any]]], n: int) -> list[Any]:
        if not role_allows(self._role(), "add_nodes"):
            self.scada.audit.record(user=self._name(), action=action, target=target, outcome="BadUserAccessDenied",
                                    role=self._role())
            raise ServiceError(ua.StatusCodes.BadUserAccessDenied)
        res = await fn()
        self.scada.audit.record(user=self._name(), action=action, target=target, outcome="Good", role=self._role(),
                                count=n)
        return res

    async def add_nodes(self, params: list[ua.AddNodesItem]) -> list[ua.AddNodesResult]:
        target = ",".join(str(p.RequestedNewNodeId) for p in params[:5])
        return await self._admin_only("add_nodes", target, lambda: super(GuardedSession, self).add_nodes(params),
                                      len(params))

    async def delete_nodes(self, params: ua.DeleteNodesParameters) -> list[ua.StatusCode]:
        target = ",".join(str(p.NodeId) for p in params.NodesToDelete[:5])
        return await self._admin_only("delete_nodes", target,
                                      lambda: super(GuardedSession, self).delete_nodes(params), len(params.NodesToDelete))

    async def add_references(self, params: list[ua.AddReferencesItem]) -> list[ua.StatusCode]:
        return await self._admin_only("add_references", "references",
                                      lambda: super(GuardedSession, self).add_references(params), len(params))

    async def delete_references(self, params: list[ua.DeleteReferencesItem]) -> list[ua.StatusCode]:
        return await self._admin_only("delete_references", "references",
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

    async def create_monitored_items(self, params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
        sub = self.subscription_service.subscriptions.get(params.SubscriptionId)
        if sub is not None:
            have = len(sub.monitored_item_srv._monitored_items)
            if have + len(params.ItemsToCreate) > self.scada.cfg.max_monitored_items_per_subscription:
                raise ServiceError(ua.StatusCodes.BadTooManyMonitoredItems)
        results = await super().create_monitored_items(params)
        # asyncua caps every queue at max_monitored_item_queue_size; event items get their own
        items = sub.monitored_item_srv._monitored_items if sub is not None else {}
        for req, res in zip(params.ItemsToCreate, results, strict=False):
            md = items.get(res.MonitoredItemId)
            if md is not None and req.ItemToMonitor.AttributeId == ua.AttributeIds.EventNotifier:
                asked = int(req.RequestedParameters.QueueSize or 0)
                md.queue_size = res.RevisedQueueSize = min(asked or EVENT_QUEUE_SIZE, EVENT_QUEUE_SIZE)
        return results

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        token = current_session.set(self)
        try:
            return await super().call(params)
        finally:
            current_session.reset(token)

    async def history_update(self, params: ua.HistoryUpdateParameters) -> list[ua.HistoryUpdateResult]:
        """History is written by the historian only (Part 11 §6.8 HistoryUpdate is refused)."""
        self.scada.audit.record(user=self._name(), action="history_update", target="history",
                                outcome="BadUserAccessDenied", role=self._role())
        raise ServiceError(ua.StatusCodes.BadUserAccessDenied)

    async def history_read(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        return await history.read_history(self.scada, params, super().history_read)


class _Route:
    """Where a monitored item's notifications go (resolved once per asyncua handle)."""

    __slots__ = ("isub", "items", "last_q", "last_v", "mdata", "mid", "svc")

    def __init__(self, svc: Any, mid: int, mdata: Any):
        self.svc = svc
        self.mid = mid
        self.mdata = mdata
        self.isub = svc.isub
        self.items = svc._monitored_items
        self.last_v: float | None = None
        self.last_q: int | None = None


class OpcUaService(Service):
    """The OPC UA server service (``runtime.services["opcua"]``)."""

    name = "opcua"

    def __init__(self, runtime: Any):
        self.runtime = runtime
        self.cfg = runtime.site.config.opcua
        self.tagdb = runtime.tagdb
        state = Path(runtime.site.config.site.state_dir)
        if not state.is_absolute():
            state = Path(os.path.dirname(os.path.abspath(runtime.site.path))) / state
        self.state_dir = state / "opcua"
        self.server: Server | None = None
        self.namespace_index: int = -1
        self.server_node: Node | None = None
        self.on_started: list[Callable[[OpcUaService], Awaitable[None]]] = []
        self.endpoint = f"opc.tcp://{self.cfg.host}:{self.cfg.port}/scada"
        self.app_uri = f"urn:scada:{_slug(runtime.site.name)}:server"
        self.registry = MonitorRegistry(len(self.tagdb.value))
        self.lazy: LazyNodes | None = None
        self.audit: AuditLog = None  # type: ignore[assignment]  # opened in start()
        self.users: UserStore | None = None
        self.trust: TrustList | None = None
        self.demo_users_file: Path | None = self.state_dir / "demo-users.txt" if self.cfg.demo_users else None
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
        if self.demo_users_file is not None:
            users = f"; operator/engineer passwords in {self.demo_users_file}"
        anon = "anonymous = viewer" if self.cfg.anonymous == "viewer" else "no anonymous access"
        return (f"{self.endpoint} (namespace {self.cfg.namespace_uri}; security {sec}; {anon}{users}; "
                f"trust client certificates by copying them into {self.trust_dir})")

    @property
    def trust_dir(self) -> Path:
        return Path(self.cfg.trust_dir) if self.cfg.trust_dir else self.state_dir / "trusted"

    def tag_index(self, nodeid: ua.NodeId) -> int | None:
        return self.lazy.tag_index(nodeid) if self.lazy is not None else None

    def tag_nodeid(self, path: str) -> ua.NodeId:
        return ua.NodeId(path, self.namespace_index)

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
        if self.audit is not None:
            self.audit.close()

    async def start(self) -> None:
        cfg = self.cfg
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.audit is None:
            self.audit = AuditLog(str(self.state_dir / "audit.log"), self.runtime.clock)
        self.users = UserStore(self.runtime.site.config.users, clock=self.runtime.clock,
                               max_failures=cfg.lockout_attempts, lockout_s=cfg.lockout)
        if cfg.demo_users:
            self._demo_users()
        self.registry = MonitorRegistry(len(self.tagdb.value))  # fresh on a supervised restart
        self._routes = {}
        self.registry.on_remove = lambda handle: self._routes.pop(handle, None)
        self.trust = TrustList(self.trust_dir, self.state_dir / "rejected", self.audit, cfg.trust_all_clients)
        server = Server(user_manager=SiteUserManager(self.users, self.audit, cfg.anonymous))
        iserver = server.iserver
        session_cls = type("GuardedSession", (GuardedSession,), {"scada": self})  # one per server

        def create_session(name: str, user: Any = None, external: bool = False) -> InternalSession:
            if user is None:
                from asyncua.crypto.permission_rules import User, UserRole
                user = User(role=UserRole.Anonymous)
            return session_cls(iserver, iserver.aspace, iserver.subscription_service, name, user=user,
                               external=external)

        iserver.create_session = create_session  # type: ignore[method-assign]
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
        try:
            await server.start()
        except OSError as e:
            server.iserver.method_service.stop()
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
            server.iserver.method_service.stop()

    def _demo_users(self) -> None:
        """Create an operator and an engineer account once; passwords in demo-users.txt (0600)."""
        p = self.state_dir / "demo-users.txt"
        self.demo_users_file = p
        if not p.exists():
            lines = ["# demo accounts of the OPC UA server (generated on first start; delete to regenerate)"]
            for name, role in (("operator", "operator"), ("engineer", "engineer")):
                lines.append(f"{name} {role} {generate_password()}")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            log.warning("created demo OPC UA accounts 'operator' and 'engineer'; passwords in %s", p)
        for line in p.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 3 and not line.startswith("#") and parts[0] not in self.users:
                self.users.add(parts[0], parts[1], hash_password(parts[2]))

    async def _build(self, server: Server) -> None:
        """Area folders, the Scada object with FindTags, then the lazy node map."""
        ns = self.namespace_index
        objects = server.nodes.objects
        aspace = server.iserver.aspace
        descriptions = {f"{dc.area}/{dc.id}": dc.description for dc in self.runtime.site.config.devices
                        if dc.description}
        lazy = LazyNodes(aspace._nodes, self.tagdb, ns, self.registry, historizing=self._historizing,
                         descriptions=descriptions)
        for area in sorted(lazy.tree.areas):
            nid = ua.NodeId(area, ns)
            folder = await objects.add_folder(nid, ua.QualifiedName(area, ns))
            # Part 3 §5.5.2 / Part 9 §4.3: areas are event notifiers under the Server object
            await folder.write_attribute(ua.AttributeIds.EventNotifier,
                                         ua.DataValue(ua.Variant(1, ua.VariantType.Byte)))
            await server.nodes.server.add_reference(nid, ua.ObjectIds.HasNotifier)
            aspace._nodes[nid].references.extend(lazy.area_refs(area))
            self._area_nodes[area] = nid
        lazy.area_nodes = self._area_nodes
        scada = await objects.add_object(ua.NodeId("#Scada", ns), ua.QualifiedName("Scada", ns))
        await scada.add_method(
            ua.NodeId("#Scada.FindTags", ns), ua.QualifiedName("FindTags", ns), self._find_tags,
            [ua.VariantType.String, ua.VariantType.UInt32],
            [ua.VariantType.String, ua.VariantType.String],
        )
        aspace._nodes = lazy
        self.lazy = lazy

    def _historizing(self, p: Any) -> bool:
        return bool(p.history) and "historian" in self.runtime.services

    # ---------------------------------------------------------------- FindTags
    async def _find_tags(self, parent: ua.NodeId, pattern: ua.Variant | str, limit: ua.Variant | int = 0) -> list[ua.Variant]:
        """``FindTags(pattern, max)`` -> (paths, units): glob over tag paths, server side, so a
        client never browses 200,000 nodes to match a pattern. ``max`` 0 means 10,000."""
        pat = pattern.Value if isinstance(pattern, ua.Variant) else pattern
        n = limit.Value if isinstance(limit, ua.Variant) else limit
        paths, units = await self.find_tags(str(pat or "*"), int(n or 10_000))
        return [ua.Variant(paths, ua.VariantType.String), ua.Variant(units, ua.VariantType.String)]

    async def find_tags(self, pattern: str, limit: int = 10_000) -> tuple[list[str], list[str]]:
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
        user, role = session._name(), session._role()
        i = self.tag_index(wv.NodeId)
        if i is None:
            target = wv.NodeId.to_string()
            if wv.NodeId.NamespaceIndex == self.namespace_index or not role_allows(role, "admin"):
                code = Q.BadUserAccessDenied if not role_allows(role, "admin") else Q.BadNotWritable
                self._audit_write(user, role, target, code, attribute=int(wv.AttributeId))
                return ua.StatusCode(code)
            res = await self.server.iserver.attribute_service.write(ua.WriteParameters([wv]), user=session.user)
            self._audit_write(user, role, target, res[0].value, attribute=int(wv.AttributeId))
            return res[0]
        path = self.tagdb.path(i)
        # schedule overrides (server-owned `_schedules/<area>/*` tags) are an engineer's action
        action = "override" if path.startswith("_schedules/") else "write"
        if not role_allows(role, action):
            self.stats["denied"] += 1
            self._audit_write(user, role, path, Q.BadUserAccessDenied, new=_plain(wv.Value))
            return ua.StatusCode(Q.BadUserAccessDenied)
        if wv.AttributeId != ua.AttributeIds.Value:
            self._audit_write(user, role, path, Q.BadNotWritable, attribute=int(wv.AttributeId))
            return ua.StatusCode(Q.BadNotWritable)
        p = self.tagdb.point(i)
        var = wv.Value.Value if wv.Value is not None else None
        if var is None or var.VariantType not in _ACCEPT[p.dtype] or var.is_array:
            vt = var.VariantType.name if var is not None else "null"
            self._audit_write(user, role, path, Q.BadTypeMismatch, new=_plain(wv.Value), variant=vt)
            return ua.StatusCode(Q.BadTypeMismatch)
        old = self.tagdb.read(i).value
        value = var.Value
        code = await self.runtime.write(i, value, user=user)
        self.stats["writes"] += 1
        self._audit_write(user, role, path, code, old=old, new=value)
        return ua.StatusCode(int(code))

    def _audit_write(self, user: str | None, role: str | None, target: str, code: int, **kw: Any) -> None:
        self.audit.record(user=user, action="write", target=target, outcome=Q.name(code), role=role or "none",
                          **kw)

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
            if dtype is None:
                dtype = dtypes[i] = self.tagdb.point(i).dtype
            if q & 0x80000000:
                var = _NULL
                v = None
            elif dtype == "string":
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
        if route is None or route.mid not in route.items:
            svc = getattr(cb, "__self__", None)
            mid = getattr(svc, "_monitored_datachange", {}).get(handle)
            if mid is None or mid not in svc._monitored_items:
                # not an asyncua monitored item we understand: use its public coroutine path
                self.stats["fallback"] += 1
                asyncio.get_running_loop().create_task(cb(handle, dv))
                return
            route = self._routes[handle] = _Route(svc, mid, svc._monitored_items[mid])
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
        # asyncua replaces this dict on every publish: look it up each time
        queue = route.isub._triggered_datachanges
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
_VT_D, _VT_B, _VT_I = ua.VariantType.Double, ua.VariantType.Boolean, ua.VariantType.Int64
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
    if dtype == "float":
        return _variant_of(v, _VT_D)
    if dtype == "bool":
        return _variant_of(bool(v), _VT_B)
    return _variant_of(int(v), _VT_I)


def _status(q: int) -> ua.StatusCode:
    """Shared StatusCode objects (never mutated by asyncua) - one per code seen."""
    sc = _STATUS.get(q)
    if sc is None:
        sc = _STATUS[q] = ua.StatusCode(q)
    return sc


def _plain(dv: ua.DataValue | None) -> Any:
    if dv is None or dv.Value is None:
        return None
    v = dv.Value.Value
    return v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"


__all__ = ["VARIANT", "GuardedSession", "OpcUaService", "current_session", "make_datavalue"]
