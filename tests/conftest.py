"""Shared fixtures: stepped clock, free loopback ports, and a health check that fails any test
leaving asyncio tasks or threads behind (the pymodbus / ophyd-async habit).

Protocol-specific fixtures live in ``tests/fixtures/<name>.py`` (listed in ``pytest_plugins``)
so system tests of any package can start a real Mosquitto, VictoriaMetrics, pymodbus or asyncua
server on a free port.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from scada.clock import SteppedClock

pytest_plugins = [
    "tests.fixtures.modbus",
    "tests.fixtures.mqtt",
    "tests.fixtures.opcua",
    "tests.fixtures.historian",
    "tests.fixtures.alarms",
    "tests.fixtures.hmi",
    "tests.fixtures.web",
    "tests.fixtures.etcd",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on loopback right now (the OS picks it; never a fixed number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def device_ports(n: int = 200) -> int:
    """First of ``n`` consecutive ports, all free on loopback now, for a generated city's
    simulated devices. Drawn below Linux's ephemeral range (32768-60999), where outgoing
    connections would otherwise take a listening port from under a simulator."""
    import random

    for _ in range(50):
        base = random.randrange(20000, 32000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {n} consecutive free ports below 32000 on loopback")


@pytest.fixture
def stepped_clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    before = {t.ident for t in threading.enumerate()}
    yield
    # give library threads (executors) a moment to wind down
    for _ in range(50):
        leaked = [t for t in threading.enumerate()
                  if t.ident not in before and t.is_alive() and not t.daemon
                  and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
        if not leaked:
            return
        threading.Event().wait(0.05)
    pytest.fail(f"test left threads running: {[t.name for t in leaked]}")


@pytest.fixture(autouse=True)
async def _no_leaked_tasks(request):
    """Fail an async test that leaves tasks running on its loop."""
    if not asyncio.iscoroutinefunction(getattr(request.node, "function", None)):
        yield
        return
    me = asyncio.current_task()
    before = set(asyncio.all_tasks())
    yield
    for _ in range(20):
        here = asyncio.current_task()  # pytest-asyncio may run teardown in another task
        leaked = [t for t in asyncio.all_tasks()
                  if t not in before and t is not me and t is not here and not t.done()]
        if not leaked:
            return
        await asyncio.sleep(0.05)
    for t in leaked:
        t.cancel()
    pytest.fail(f"test left tasks running: {[t.get_name() for t in leaked]}")
