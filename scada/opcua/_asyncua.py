"""Every use of asyncua's server internals, in one place (pinned: ``asyncua>=2.1,<2.2``).

asyncua's public server API does not let us do what a SCADA server must, so this module
subclasses or reaches into its internals. ``tests/unit/test_asyncua_internals.py`` checks each
assumption below against the installed asyncua and fails loudly, naming the one that broke,
when an upgrade changes them.

**Session identity per request** (OPC UA Part 4 §5.6, §7.31 RequestHeader.AuthenticationToken).
asyncua's ``UaProcessor`` keeps *one* ``session`` attribute per secure channel and serves every
request with it: a client that opens two sessions on one channel (legal, Part 4 §5.6.2) had
every request served with the rights of the most recently activated one - an anonymous
session's Write succeeded once an operator session existed on the same channel, audited as the
operator - and closing that session killed the other. :class:`SessionRoutingProcessor` resolves
the session from each request's AuthenticationToken instead: an unknown or foreign token gets
``BadSessionIdInvalid``; Publish requests are queued and answered per session, so one session
never receives another's notifications; closing one session leaves the others working.

**Subscriptions belong to their session** (Part 4 §5.13). asyncua's subscription service is
server-wide and checks no owner: any session could delete, modify, acknowledge or take over
another session's subscriptions. :func:`owned_subscription_ids` gives each session only its
own; ``GuardedSession`` (``server.py``) refuses the rest with ``BadSubscriptionIdInvalid``, and
TransferSubscriptions across users with ``BadUserAccessDenied`` (Part 4 §5.13.7).

**Other reached-in internals**, each behind one function of this module so that an upgrade
reviewer finds them all here: ``InternalServer.create_session`` replaced per server
(:func:`install_session_class`); ``InternalServer._external_sessions`` read to count sessions
and find subscription owners; the address space's ``_nodes`` dict replaced by the lazy node map
(:func:`address_space_nodes`, :func:`replace_address_space_nodes`);
``MonitoredItemService._monitored_items`` / ``_monitored_datachange`` / ``_monitored_events``
and ``InternalSubscription._triggered_datachanges`` / ``enqueue_event``, where the notification
fast path appends (:func:`monitored_items`, :func:`datachange_target`,
:func:`datachange_queue`, :func:`event_items`, :func:`enqueue_event`);
``InternalServer.method_service.stop()`` after a failed start or a stop
(:func:`stop_method_service`).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.server import binary_server_asyncio as _bsa
from asyncua.server.internal_session import InternalSession, SessionState
from asyncua.server.uaprocessor import PublishRequestData, UaProcessor
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, uatcp_to_binary

log = logging.getLogger("scada.opcua")

_T = ua.ObjectIds
#: requests served without a session (Part 4 §5.4, §5.5, §5.6.2 CreateSession)
_SESSIONLESS = {ua.NodeId(i) for i in (
    _T.CreateSessionRequest_Encoding_DefaultBinary,
    _T.GetEndpointsRequest_Encoding_DefaultBinary,
    _T.FindServersRequest_Encoding_DefaultBinary,
    _T.RegisterServerRequest_Encoding_DefaultBinary,
    _T.RegisterServer2Request_Encoding_DefaultBinary,
    _T.CloseSecureChannelRequest_Encoding_DefaultBinary,
)}
_CREATE = ua.NodeId(_T.CreateSessionRequest_Encoding_DefaultBinary)
_ACTIVATE = ua.NodeId(_T.ActivateSessionRequest_Encoding_DefaultBinary)
_CLOSE = ua.NodeId(_T.CloseSessionRequest_Encoding_DefaultBinary)
_PUBLISH = ua.NodeId(_T.PublishRequest_Encoding_DefaultBinary)
_HISTORY_UPDATE = ua.NodeId(_T.HistoryUpdateRequest_Encoding_DefaultBinary)


NONE_POLICY = "http://opcfoundation.org/UA/SecurityPolicy#None"


@dataclass(frozen=True, slots=True)
class Channel:
    """The secure channel a request arrived on (read by the session layer)."""

    peer: str  # "host:port" of the client
    policy_uri: str

    @property
    def unsecured(self) -> bool:
        return self.policy_uri == NONE_POLICY


#: the channel of the request being served (set around every request by the processor)
current_channel: contextvars.ContextVar[Channel | None] = contextvars.ContextVar("scada_opcua_channel",
                                                                                 default=None)

#: ``iserver.scada_refused(via, outcome, reason)``: where refused security events go (the
#: operator API's audit log); set by the OPC UA service
Refused = Callable[[str, str, str], None]


def set_refusal_hook(iserver: Any, hook: Refused) -> None:
    iserver.scada_refused = hook


def _refused(iserver: Any, via: str, outcome: str, reason: str) -> None:
    hook = getattr(iserver, "scada_refused", None)
    if hook is not None:
        hook(via, outcome, reason)
    else:
        log.info("security: refused %s from %s: %s", outcome, via, reason)


def install_session_class(iserver: Any, cls: type[InternalSession]) -> None:
    """Make ``iserver`` create its client sessions as ``cls`` (asyncua names its own class)."""
    from asyncua.crypto.permission_rules import User, UserRole

    def create_session(name: str, user: Any = None, external: bool = False) -> InternalSession:
        return cls(iserver, iserver.aspace, iserver.subscription_service, name,
                   user=user if user is not None else User(role=UserRole.Anonymous), external=external)

    iserver.create_session = create_session


def owned_subscription_ids(session: InternalSession) -> set[int]:
    """Ids of the subscriptions that belong to ``session`` (asyncua keeps them server-wide)."""
    return {sid for sid, sub in session.subscription_service.subscriptions.items()
            if sub.session_id == session.session_id}


def subscription_of(session: InternalSession, subscription_id: int) -> Any:
    """The subscription ``subscription_id`` if ``session`` owns it, else None."""
    sub = session.subscription_service.subscriptions.get(int(subscription_id))
    return sub if sub is not None and sub.session_id == session.session_id else None


def subscription_owner(session: InternalSession, subscription_id: int) -> InternalSession | None:
    """The external session owning a subscription (for TransferSubscriptions' same-user check)."""
    sub = session.subscription_service.subscriptions.get(int(subscription_id))
    if sub is None:
        return None
    for s in session.iserver._external_sessions.values():
        if s.session_id == sub.session_id:
            return s
    return None


def monitored_items(sub: Any) -> dict[int, Any]:
    """The monitored items of a subscription, by id (asyncua's own dict: do not replace it)."""
    return sub.monitored_item_srv._monitored_items


def datachange_target(callback: Any, handle: int) -> tuple[Any, int, Any] | None:
    """(monitored item service, monitored item id, item data) behind an asyncua data-change
    callback and handle, or None when the callback is not asyncua's monitored item service."""
    svc = getattr(callback, "__self__", None)
    mid = getattr(svc, "_monitored_datachange", {}).get(handle)
    if mid is None:
        return None
    items = svc._monitored_items
    md = items.get(mid)
    return (svc, mid, md) if md is not None else None


def item_alive(svc: Any, mid: int) -> bool:
    return mid in svc._monitored_items


def datachange_queue(svc: Any) -> dict[int, list[Any]]:
    """The subscription's queue of pending data-change notifications per item. asyncua replaces
    this dict on every publish: look it up for every notification, never keep it."""
    return svc.isub._triggered_datachanges


def event_items(sub: Any) -> list[tuple[int, Any]]:
    """(item id, item data) of the subscription's event monitored items."""
    mis = sub.monitored_item_srv
    out = []
    for mids in list(mis._monitored_events.values()):
        for mid in list(mids):
            md = mis._monitored_items.get(mid)
            if md is not None:
                out.append((mid, md))
    return out


async def enqueue_event(sub: Any, mid: int, fields: Any, queue_size: int) -> None:
    """Queue an event notification on one item, bypassing asyncua's where-clause evaluation."""
    await sub.monitored_item_srv.isub.enqueue_event(mid, fields, queue_size)


def address_space_nodes(iserver: Any) -> Any:
    return iserver.aspace._nodes


def replace_address_space_nodes(iserver: Any, nodes: Any) -> None:
    """Install a node map (our lazy one) as the address space's storage; asyncua's own shelf
    support uses the same attribute."""
    iserver.aspace._nodes = nodes


def stop_method_service(iserver: Any) -> None:
    """asyncua's method service keeps a thread pool that ``Server.stop`` leaves running."""
    iserver.method_service.stop()


def external_sessions(iserver: Any) -> list[InternalSession]:
    return list(iserver._external_sessions.values())


async def trigger_event_for(iserver: Any, event: Any, allow: Callable[[InternalSession], bool],
                            subscription_id: int | None = None) -> None:
    """asyncua's ``SubscriptionService.trigger_event`` restricted to the subscriptions whose
    session ``allow`` accepts (areas as tenants: a user restricted to some areas must not
    receive other areas' alarm events). Subscriptions of the server's own internal session
    always receive. asyncua's retained-condition table is not kept: ConditionRefresh is ours."""
    ss = iserver.subscription_service
    if subscription_id is not None:
        sub = ss.subscriptions.get(subscription_id)
        subs = [sub] if sub is not None else []
    else:
        subs = list(ss.subscriptions.values())
    if not subs:
        return
    by_id = {s.session_id: s for s in iserver._external_sessions.values()}
    for sub in subs:
        sess = by_id.get(sub.session_id)
        if sess is not None and not allow(sess):
            continue
        await sub.monitored_item_srv.trigger_event(event)


class SessionRoutingProcessor(UaProcessor):
    """A ``UaProcessor`` that serves each request with the session its token names.

    asyncua processes the messages of one connection one after another (one task per
    connection), so setting ``self.session`` for the duration of a request is safe: the base
    class then authorises, dispatches and audits with the right session.
    """

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        #: sessions bound to this secure channel, by authentication token
        self.sessions: dict[ua.NodeId, InternalSession] = {}

    @property
    def peer(self) -> str:
        n = self.name
        return f"{n[0]}:{n[1]}" if isinstance(n, tuple) and len(n) >= 2 else str(n)

    # ------------------------------------------------------------------ errors without tracebacks
    async def process(self, header: Any, body: Any) -> bool:
        """A client that forces a policy we do not offer (Basic128Rsa15, Basic256) or sends a
        secure-channel message we cannot accept is refused with an ERR message, audited and
        logged once at INFO: asyncua would log a traceback at ERROR for each (alert fatigue)."""
        try:
            return await super().process(header, body)
        except (ua.UaError, ServiceError, ValueError) as e:
            if header.MessageType != ua.MessageType.SecureOpen:
                raise
            code = getattr(e, "code", ua.StatusCodes.BadSecurityPolicyRejected)
            _refused(self.iserver, self.peer, ua.StatusCode(code).name, f"secure channel refused: {e}")
            err = ua.ErrorMessage(ua.StatusCode(code), "security policy not offered by this server")
            self._transport.write(uatcp_to_binary(ua.MessageType.Error, err))
            return False

    async def process_message(self, seqhdr: Any, body: Any) -> bool:
        """As asyncua's, but a refused request (a ServiceError: access denied, bad session,
        untrusted certificate ...) is answered with its ServiceFault and logged at DEBUG: the
        layer that refused it audited it with its reason. Real bugs keep their traceback."""
        typeid = nodeid_from_binary(body)
        requesthdr = struct_from_binary(ua.RequestHeader, body)
        policy = getattr(self._connection.security_policy, "URI", NONE_POLICY)
        token = current_channel.set(Channel(self.peer, policy))
        try:
            return await self._process_message(typeid, requesthdr, seqhdr, body)
        except (ServiceError, ua.uaerrors.UaStatusCodeError) as e:
            status = ua.StatusCode(e.code)
            log.debug("OPC UA request %s from %s refused: %s", typeid, self.peer, status.name)
            response = ua.ServiceFault()
            response.ResponseHeader.ServiceResult = status
            self.send_response(requesthdr.RequestHandle, seqhdr, response)
            return True
        except Exception:
            log.exception("OPC UA: error while processing a request from %s", self.peer)
            response = ua.ServiceFault()
            response.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadInternalError)
            self.send_response(requesthdr.RequestHandle, seqhdr, response)
            return True
        finally:
            current_channel.reset(token)

    # ------------------------------------------------------------------ routing
    def _bound(self, token: ua.NodeId) -> InternalSession:
        s = self.sessions.get(token)
        if s is None or s.state == SessionState.Closed:
            self.sessions.pop(token, None)
            raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
        return s

    async def _process_message(self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any,
                               body: Any) -> bool:
        if typeid == _CREATE:
            ok = await super()._process_message(typeid, requesthdr, seqhdr, body)
            if self.session is not None:
                self.sessions[self.session.auth_token] = self.session
                self.session.scada_channel = self  # type: ignore[attr-defined]
            return ok
        if typeid in _SESSIONLESS:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        token = requesthdr.AuthenticationToken
        if typeid == _ACTIVATE:
            s = self.sessions.get(token)
            if s is None:
                # Part 4 §5.6.3: a session may be re-activated on a new secure channel (the
                # client proves it by signing with its certificate, checked by the base class)
                s = self.iserver.lookup_external_session(token)
                if s is None or s.state == SessionState.Closed:
                    raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
                self._adopt(s)
            self.session = s
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        self.session = self._bound(token)
        if typeid == _PUBLISH:
            return await self._publish(requesthdr, seqhdr, body)
        if typeid == _HISTORY_UPDATE:
            # asyncua has no HistoryUpdate service (BadServiceUnsupported); the session refuses
            # and audits it (only the historian writes history)
            if not self.session.is_activated():
                raise ServiceError(ua.StatusCodes.BadSessionNotActivated)
            params = struct_from_binary(ua.HistoryUpdateParameters, body)
            await self.session.history_update(params)
            raise ServiceError(ua.StatusCodes.BadUserAccessDenied)
        try:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            if typeid == _CLOSE and self.session is not None and self.session.state == SessionState.Closed:
                self._forget(self.session)

    def _adopt(self, s: InternalSession) -> None:
        old = getattr(s, "scada_channel", None)
        if old is not None and old is not self:
            old.sessions.pop(s.auth_token, None)
            old._drop_publish_requests(s)
        self.sessions[s.auth_token] = s
        s.scada_channel = self  # type: ignore[attr-defined]
        for sub in s.subscription_service.subscriptions.values():
            if sub.session_id == s.session_id:
                sub.pub_result_callback = self.forward_publish_response
                sub.pub_request_callback = self.get_publish_request

    def _forget(self, s: InternalSession) -> None:
        self.sessions.pop(s.auth_token, None)
        self._drop_publish_requests(s)
        remaining = [x for x in self.sessions.values() if x.state != SessionState.Closed]
        self.session = remaining[-1] if remaining else None

    # ------------------------------------------------------------------ publish, per session
    def _drop_publish_requests(self, s: InternalSession) -> None:
        self._publish_requests = deque(r for r in self._publish_requests
                                       if r.requesthdr.AuthenticationToken != s.auth_token)

    async def _publish(self, requesthdr: ua.RequestHeader, seqhdr: Any, body: Any) -> bool:
        session = self.session
        params = struct_from_binary(ua.PublishParameters, body)
        mine = owned_subscription_ids(session)
        if not mine:
            raise ServiceError(ua.StatusCodes.BadNoSubscription)
        results = []
        for ack in params.SubscriptionAcknowledgements or []:
            sub = session.subscription_service.subscriptions.get(ack.SubscriptionId) \
                if ack.SubscriptionId in mine else None
            if sub is None:
                results.append(ua.StatusCode(ua.StatusCodes.BadSubscriptionIdInvalid))
            else:
                sub.publish([ack.SequenceNumber])
                results.append(ua.StatusCode())
        data = PublishRequestData(requesthdr=requesthdr, seqhdr=seqhdr, results=results)
        for sid in [s for s in self._publish_results_subs if s in mine]:
            self._publish_results_subs.pop(sid, None)
            sub = session.subscription_service.subscriptions.get(sid)
            if sub is not None and await sub.publish_results(data):
                return True
        queued = [r for r in self._publish_requests if r.requesthdr.AuthenticationToken == session.auth_token]
        if len(queued) >= self.publish_request_limit(len(mine)):
            self._evict_publish_request_of(session.auth_token)
        self._publish_requests.append(data)
        return True

    def _evict_publish_request_of(self, token: ua.NodeId) -> None:
        """Part 4 §5.13.5: over the limit, the session's oldest Publish gets BadTooManyPublishRequests
        (or BadTimeout when one has timed out)."""
        now = time.monotonic()
        oldest = None
        for r in self._publish_requests:
            if r.requesthdr.AuthenticationToken != token:
                continue
            if r.has_timed_out(now):
                self._publish_requests.remove(r)
                self._send_publish_request_timeout(r)
                return
            if oldest is None:
                oldest = r
        if oldest is not None:
            self._publish_requests.remove(oldest)
            response = ua.ServiceFault()
            response.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadTooManyPublishRequests)
            self.send_response(oldest.requesthdr.RequestHandle, oldest.seqhdr, response)

    def get_publish_request(self, subscription_id: ua.IntegerId) -> PublishRequestData | None:
        """A queued Publish request *of the session owning the subscription* (FIFO)."""
        sub = self.iserver.subscription_service.subscriptions.get(subscription_id)
        token = None
        if sub is not None:
            for s in self.sessions.values():
                if s.session_id == sub.session_id:
                    token = s.auth_token
                    break
        now = time.monotonic()
        for r in list(self._publish_requests):
            if r.requesthdr.AuthenticationToken != token:
                continue
            self._publish_requests.remove(r)
            if r.has_timed_out(now):
                self._send_publish_request_timeout(r)
                continue
            return r
        self._publish_results_subs[subscription_id] = True
        return None

    # ------------------------------------------------------------------ transport loss
    async def close(self) -> None:
        """Connection lost: close this channel's sessions that have no subscriptions (Part 4
        §6.7: sessions with subscriptions outlive the channel until their timeout)."""
        self._closing = True
        try:
            if self._session_watchdog_task is not None:
                self._session_watchdog_task.cancel()
        finally:
            for s in list(self.sessions.values()):
                if getattr(s, "scada_channel", None) is not self:
                    continue
                if not s.external or not s.is_activated() or not owned_subscription_ids(s):
                    await s.close_session(True)
            self.sessions.clear()


class _Protocol(_bsa.OPCUAProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None when refused at max_connections
            self.processor = SessionRoutingProcessor(self.iserver, self.transport, self.limits)
            self.processor.set_policies(self.policies)


class _BinaryServer(_bsa.BinaryServer):
    def _make_protocol(self) -> _Protocol:
        return _Protocol(iserver=self.iserver, policies=self._policies, clients=self.clients,
                         closing_tasks=self.closing_tasks, limits=self.limits)


class ScadaServer(Server):
    """asyncua's ``Server`` whose connections use :class:`SessionRoutingProcessor`.

    ``start`` is asyncua 2.1's ``Server.start`` with our binary server class (the base method
    names the class directly; nothing else differs)."""

    async def start(self) -> None:
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            ipaddress, port = self._get_bind_socket_info()
            self.bserver = _BinaryServer(self.iserver, ipaddress, port, self.limits)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise
