"""The asyncua internals scada/opcua/_asyncua.py (and the notification fast path) rely on.

Each test names one assumption about asyncua's private structure; an upgrade that breaks it
fails here, loudly and by name, instead of as a security hole or a silent loss of
notifications at run time (issue 18: library internals in one place, with a test)."""

from __future__ import annotations

import inspect

from asyncua.server import (
    binary_server_asyncio,
    internal_server,
    internal_session,
    internal_subscription,
    monitored_item_service,
    server,
    uaprocessor,
)

from scada.opcua import _asyncua


def test_processor_serves_one_connection_with_these_members():
    p = uaprocessor.UaProcessor
    params = list(inspect.signature(p._process_message).parameters)
    assert params == ["self", "typeid", "requesthdr", "seqhdr", "body"], params
    for name in ("process", "process_message", "get_publish_request", "forward_publish_response",
                 "_send_publish_request_timeout", "publish_request_limit", "send_response", "close"):
        assert callable(getattr(p, name, None)), name
    src = inspect.getsource(p.__init__)
    for attr in ("self.session", "self._publish_requests", "self._publish_results_subs", "self._connection",
                 "self._session_watchdog_task", "self._closing"):
        assert attr in src, attr


def test_messages_of_one_connection_are_processed_one_at_a_time():
    """Setting ``processor.session`` per request is safe only because one task per connection
    processes its messages in order."""
    src = inspect.getsource(binary_server_asyncio.OPCUAProtocol._process_received_message_loop)
    assert "await self.messages.get()" in src and "await self._process_one_msg" in src


def test_protocol_and_binary_server_hooks():
    src = inspect.getsource(binary_server_asyncio.OPCUAProtocol.connection_made)
    assert "self.processor = UaProcessor(" in src
    assert callable(binary_server_asyncio.BinaryServer._make_protocol)
    start = inspect.getsource(server.Server.start)
    assert "BinaryServer(self.iserver" in start, "ScadaServer.start copies asyncua's Server.start"
    for name in ("_setup_server_nodes", "_get_bind_socket_info"):
        assert callable(getattr(server.Server, name, None)), name


def test_sessions_and_subscriptions_are_where_we_look_for_them():
    src = inspect.getsource(internal_server.InternalServer.__init__)
    assert "self._external_sessions" in src
    assert callable(internal_server.InternalServer.lookup_external_session)
    s = internal_session.InternalSession
    assert list(inspect.signature(s.create_session).parameters) == ["self", "params", "sockname"]
    assert "auth_token" in inspect.getsource(s.__init__) and "session_id" in inspect.getsource(s.__init__)
    sub = inspect.getsource(internal_subscription.InternalSubscription)
    for attr in ("self._triggered_datachanges", "self.pub_result_callback", "self.pub_request_callback",
                 "self.session_id"):
        assert attr in sub, attr
    mis = inspect.getsource(monitored_item_service.MonitoredItemService.__init__)
    for attr in ("self._monitored_items", "self._monitored_datachange", "self._monitored_events"):
        assert attr in mis, attr


def test_our_processor_overrides_exist():
    for name in ("_process_message", "process", "process_message", "get_publish_request", "close"):
        assert name in _asyncua.SessionRoutingProcessor.__dict__, name
