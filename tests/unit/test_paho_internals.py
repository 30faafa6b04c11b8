"""The paho-mqtt internals drivers/mqtt/_paho.py relies on.

Each test names one assumption about paho's private structure; an upgrade that breaks it fails
here, loudly and by name, instead of as a stalled or silently lossy MQTT connection at run time
(issue 18: library internals in one place, with a test). Real sockets (a socketpair), no mock."""

from __future__ import annotations

import inspect
import socket

import paho.mqtt.client as mqtt

from drivers.mqtt import _paho


def client() -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)


def test_the_private_members_exist_with_these_signatures():
    c = mqtt.Client
    assert list(inspect.signature(c._packet_read).parameters) == ["self"]
    assert list(inspect.signature(c._loop_rc_handle).parameters) == ["self", "rc"]
    assert list(inspect.signature(c._sock_close).parameters) == ["self"]
    assert client()._sock is None


def test_paho_reads_and_writes_only_through_client_sock():
    """swap_socket works because every read and write goes through ``self._sock``."""
    for name, call in (("_sock_recv", "self._sock.recv("), ("_sock_send", "self._sock.send(")):
        assert call in inspect.getsource(getattr(mqtt.Client, name)), name
    for name, via in (("_packet_read", "self._sock_recv("), ("_packet_write", "self._sock_send(")):
        assert via in inspect.getsource(getattr(mqtt.Client, name)), name
    c = client()
    a, b = socket.socketpair()
    try:
        _paho.swap_socket(c, a)
        assert c.socket() is a and _paho.client_socket(c) is a
    finally:
        a.close()
        b.close()


def test_read_packet_reads_one_packet_through_the_buffered_socket_then_says_again():
    c = client()
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    try:
        _paho.swap_socket(c, _paho.BufferedSocket(a, lambda: None))
        # two PUBLISH QoS 0 packets in one burst: topic "t", payloads "x" and "yz"
        b.sendall(bytes([0x30, 4, 0, 1, ord("t"), ord("x")])
                  + bytes([0x30, 5, 0, 1, ord("t"), ord("y"), ord("z")]))
        assert _paho.read_packet(c) == mqtt.MQTT_ERR_SUCCESS
        assert _paho.read_packet(c) == mqtt.MQTT_ERR_SUCCESS
        assert _paho.read_packet(c) == mqtt.MQTT_ERR_AGAIN
        assert got == [b"x", b"yz"]
    finally:
        a.close()
        b.close()


def test_handle_rc_and_drop_socket_close_and_forget_the_socket():
    c = client()
    closed: list[object] = []
    c.on_socket_close = lambda _c, _u, s: closed.append(s)
    a, b = socket.socketpair()
    try:
        _paho.swap_socket(c, a)
        _paho.drop_socket(c)
        assert c.socket() is None and closed == [a] and a.fileno() == -1
        a2, b2 = socket.socketpair()
        _paho.swap_socket(c, a2)
        _paho.handle_rc(c, mqtt.MQTT_ERR_CONN_LOST)
        assert c.socket() is None and a2.fileno() == -1
        b2.close()
    finally:
        b.close()


def test_lean_client_replaces_the_private_message_dispatch():
    """LeanClient overrides ``_handle_on_message(message)``, the one place paho calls
    ``on_message`` from, with ``self._userdata`` as the callback's second argument."""
    params = list(inspect.signature(mqtt.Client._handle_on_message).parameters)
    assert params == ["self", "message"], params
    src = inspect.getsource(mqtt.Client._handle_on_message)
    assert "on_message(self, self._userdata, message)" in src
    for caller in ("_handle_publish", "_handle_pubrel"):
        assert "self._handle_on_message(" in inspect.getsource(getattr(mqtt.Client, caller)), caller
    c = _paho.LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id="t", userdata="u")
    got: list[tuple[object, bytes]] = []
    c.on_message = lambda _c, u, m: got.append((u, m.payload))
    msg = mqtt.MQTTMessage(topic=b"t")
    msg.payload = b"x"
    c._handle_on_message(msg)
    assert got == [("u", b"x")]
