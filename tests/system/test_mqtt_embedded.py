"""The embedded amqtt broker (``broker: embedded``) that lets ``scada demo`` run with no system
broker: shared and reference-counted between simulator and driver, MQTT 3.1.1 only, and stopped
without leaving tasks behind. Also the MQTT 5 -> 3.1.1 fallback against a 3.1.1-only front."""

from __future__ import annotations

import asyncio
import socket

import pytest

from drivers.mqtt.broker import ensure_embedded_broker, running_brokers
from scada import quality as Q
from tests.conftest import free_port
from tests.fixtures.mqtt import DaliSystem, eventually, load_dali_site

pytestmark = pytest.mark.system


def _listening(port: int) -> bool:
    """Is something bound to the port? (probed by binding: a TCP probe connection that never
    sends CONNECT would be left open by amqtt at shutdown)"""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def test_embedded_broker_is_refcounted_and_stops_cleanly():
    port = free_port()
    a = await ensure_embedded_broker("127.0.0.1", port)
    b = await ensure_embedded_broker("127.0.0.1", port)
    assert running_brokers().count(("127.0.0.1", port)) == 1
    assert _listening(port)
    await a.release()
    assert _listening(port)  # still one user
    await a.release()  # idempotent
    assert _listening(port)
    await b.release()
    assert ("127.0.0.1", port) not in running_brokers()
    assert not _listening(port)


async def test_embedded_broker_port_taken_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*embedded_port"):
            await ensure_embedded_broker("127.0.0.1", port)
    assert ("127.0.0.1", port) not in running_brokers()


async def test_a_broker_of_another_process_on_the_embedded_port_is_used(mosquitto):
    """Simulators in their own process run the embedded broker; the server's driver finds
    the port taken by a broker that answers MQTT and uses it instead of failing."""
    lease = await ensure_embedded_broker("127.0.0.1", mosquitto.port)
    assert not lease.owned
    assert ("127.0.0.1", mosquitto.port) not in running_brokers()
    await lease.release()
    assert mosquitto.running


async def test_demo_path_simulator_and_driver_through_the_embedded_broker(tmp_path, stepped_clock):
    port = free_port()
    site = load_dali_site(tmp_path, "embedded", {"gw-e": [(1, 4)]},
                          drivers=f"drivers:\n  mqtt: {{embedded_port: {port}}}")
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()  # simulator first (it starts the broker), then the runtime
        await s.tick(1)
        db = s.db
        await eventually(lambda: all(db.read(f"centre/gw-e/lum-{n:03d}/power_w").good for n in range(1, 5)),
                         what="states through amqtt")
        conn = s.driver.connection("centre/gw-e")
        assert conn.protocol == 4  # paho MQTTv311: amqtt speaks 3.1.1 only
        assert await s.rt.write("centre/gw-e/broadcast_level", 60) == Q.Good
        await eventually(lambda: db.read("centre/gw-e/lum-004/level_cmd").value == 60.0, what="echo")
        assert running_brokers() == [("127.0.0.1", port)]
    finally:
        await s.stop()
    assert ("127.0.0.1", port) not in running_brokers()


class V311OnlyFront:
    """A TCP front of a real Mosquitto that behaves like a 3.1.1-only broker: a CONNECT with
    protocol level 5 gets the 3.1.1 CONNACK "unacceptable protocol version" (MQTT 3.1.1
    §3.2.2.3, return code 1) and is closed; level 4 connections are piped to Mosquitto."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.refused = 0
        self.piped = 0
        self.server = None
        self.tasks: set = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader, writer) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            head = await reader.readexactly(2)
            rem, mult, last = head[1] & 0x7F, 128, head[1]
            extra = b""
            while last & 0x80:
                b = await reader.readexactly(1)
                extra += b
                last = b[0]
                rem += (last & 0x7F) * mult
                mult *= 128
            body = await reader.readexactly(rem)
            level = body[2 + int.from_bytes(body[:2], "big")]
            if level == 5:
                self.refused += 1
                writer.write(bytes((0x20, 0x02, 0x00, 0x01)))
                await writer.drain()
                return
            self.piped += 1
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            uw.write(head + extra + body)

            async def pipe(r, w):
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                finally:
                    w.close()

            await asyncio.gather(pipe(reader, uw), pipe(ur, writer), return_exceptions=True)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    async def aclose(self) -> None:
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def test_mqtt5_falls_back_to_311_when_the_broker_refuses_v5(tmp_path, mosquitto, stepped_clock):
    front = V311OnlyFront(mosquitto.port)
    port = await front.start()
    site = load_dali_site(tmp_path, f"127.0.0.1:{port}", {"gw-f": [(1, 2)]})
    s = DaliSystem(site, stepped_clock)
    try:
        await s.start()
        await s.tick(1)
        await eventually(lambda: s.db.read("centre/gw-f/lum-002/level").good, what="states via the front")
        assert s.driver.connection("centre/gw-f").protocol == 4
        assert front.refused >= 2 and front.piped >= 2  # simulator and driver both fell back
    finally:
        await s.stop()
        await front.aclose()
