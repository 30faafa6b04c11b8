"""Modbus cabinet simulator over real sockets: a pymodbus client is the peer.

Each test writes a site with free loopback ports, serves it with ``simulators.cabinet`` on a
SteppedClock, and checks every documented register (docs/devices/modbus-cabinet.md): values,
scaling, word order, writes, and each injected fault as a Modbus client sees it.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from scada.loader import load_site
from simulators.cabinet import LINE_LOSS, serve_site
from simulators.faults import ControlServer, FaultError, FaultRouter, send_control
from tests.conftest import free_port

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "config" / "profiles"


def write_site(tmp_path: Path, p1: int, p2: int, extra: str = "") -> Path:
    """Cabinet c1 (20 luminaires in two lamp groups) alone on p1; c2 (unit 1) and c3 (unit 7)
    sharing p2, told apart by unit id."""
    text = f"""
site: {{name: simtest, latitude: 47.3, longitude: 5.0}}
areas: [{{id: a}}]
include: ["{PROFILES}/cabinet-modbus.yaml", "{PROFILES}/luminaire-modbus.yaml"]
{extra}
devices:
  - id: c1
    profile: cabinet-modbus
    area: a
    connection: {{host: 127.0.0.1, port: {p1}, unit: 1}}
    children:
      - {{profile: luminaire-modbus, id: "l{{n:02d}}", start: 1, count: 12, attrs: {{nominal_w: 60, legacy_lamp: SHP-150, legacy_w: 170, group: 1}}}}
      - {{profile: luminaire-modbus, id: "l{{n:02d}}", start: 13, count: 8, attrs: {{nominal_w: 100, legacy_lamp: SHP-250, legacy_w: 277, group: 1}}}}
  - id: c2
    profile: cabinet-modbus
    area: a
    connection: {{host: 127.0.0.1, port: {p2}, unit: 1}}
    children:
      - {{profile: luminaire-modbus, id: "l{{n:02d}}", count: 24, attrs: {{nominal_w: 30}}}}
  - id: c3
    profile: cabinet-modbus
    area: a
    connection: {{host: 127.0.0.1, port: {p2}, unit: 7}}
    children:
      - {{profile: luminaire-modbus, id: "l{{n:02d}}", count: 32, attrs: {{nominal_w: 40}}}}
"""
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Sim:
    def __init__(self, tmp_path: Path, clock):
        self.p1, self.p2 = free_port(), free_port()
        self.site = load_site(write_site(tmp_path, self.p1, self.p2), validate_drivers=False)
        self.clock = clock
        self.handle = None
        self.clients: list[AsyncModbusTcpClient] = []

    async def __aenter__(self) -> Sim:
        self.handle = await serve_site(self.site, self.clock, self.site.by_protocol()["modbus"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            c.close()
        await self.handle.aclose()

    async def client(self, port: int | None = None, answer_timeout: float = 1.0) -> AsyncModbusTcpClient:
        c = AsyncModbusTcpClient("127.0.0.1", port=port or self.p1, timeout=answer_timeout, retries=0,
                                 reconnect_delay=0)
        self.clients.append(c)
        assert await c.connect()
        return c

    @property
    def world(self):
        return self.handle.world

    def lum(self, path: str) -> int:
        return self.world.lum_path[path][1]


@pytest.fixture
async def sim(tmp_path, stepped_clock):
    async with Sim(tmp_path, stepped_clock) as s:
        yield s


def u32(hi_lo: list[int], high_first: bool = True) -> int:
    a, b = hi_lo
    return (a << 16 | b) if high_first else (b << 16 | a)


async def test_cabinet_registers_values_scaling_and_word_order(sim):
    c = await sim.client()
    ir = (await c.read_input_registers(0, count=18, device_id=1)).registers
    w = sim.world
    cab = w.by_path["a/c1"]
    assert ir[1] == 20                                   # luminaire count
    assert ir[0] == 0b11001                              # contactor, mains, comm ok
    for k in range(3):
        assert ir[2 + k] == round(cab.phase_v[k] * 10)  # voltage x0.1 V
        assert 220 < ir[2 + k] / 10 < 245
    assert 4990 <= ir[5] <= 5010                         # frequency x0.01 Hz
    lum_power = w.bank.power_w[cab.lum].sum()
    expected_w = lum_power * (1 + LINE_LOSS) + 6.0
    assert u32(ir[6:8]) / 10 == pytest.approx(expected_w, abs=0.05)   # uint32 high word first
    assert u32(ir[8:10], high_first=False) == round(cab.meter_wh)    # uint32 LOW word first
    assert ir[8] == round(cab.meter_wh) & 0xFFFF
    assert sum(ir[10:13]) / 100 == pytest.approx(expected_w / 231 / 0.95, rel=0.05)
    assert ir[16] == 0 and ir[17] == 0
    di = (await c.read_discrete_inputs(0, count=5, device_id=1)).bits[:5]
    assert di == [True, False, False, True, True]
    assert (await c.read_coils(0, count=1, device_id=1)).bits[0] is True
    assert (await c.read_holding_registers(0, count=2, device_id=1)).registers == [1000, 0]

    # one simulated hour at constant load: the meter advances by load x 1 h
    e0 = u32(ir[8:10], high_first=False)
    await sim.clock.advance(3600)
    ir = (await c.read_input_registers(0, count=18, device_id=1)).registers
    assert u32(ir[8:10], high_first=False) - e0 == pytest.approx(expected_w, abs=1.5)
    assert u32(ir[14:16]) == 3600                        # uptime s


async def test_luminaire_block_registers(sim):
    c = await sim.client()
    w = sim.world
    i = sim.lum("a/c1/l14")                              # second lamp group, 100 W
    await sim.clock.advance(600)
    regs = (await c.read_input_registers(1000 + 13 * 16, count=16, device_id=1)).registers
    b = w.bank
    assert regs[0] == 0x0300                             # powered, lamp on, no fault
    assert regs[1] == 1000                               # level 100.0 %
    assert regs[2] == round(b.power_w[i] * 10)
    assert 100.0 <= regs[2] / 10 <= 110.0                # 100 W + CLO ageing
    assert u32(regs[3:5]) == round(b.energy_wh[i] * 10)  # uint32 x0.1 Wh, high word first
    assert u32(regs[5:7]) == round(b.operating_h[i] * 3600)
    assert u32(regs[7:9]) == b.starts[i] == 1
    temp = struct.unpack(">h", struct.pack(">H", regs[9]))[0] / 10
    assert temp == pytest.approx(b.driver_temp_c[i], abs=0.05) and temp > 15.0
    assert regs[10] == round(b.supply_v[i] * 10)
    assert regs[11] == 100                               # nominal W
    assert regs[12:] == [0, 0, 0, 0]
    # a coalesced read across blocks gives the same words
    many = (await c.read_input_registers(1000, count=125, device_id=1)).registers
    first = (await c.read_input_registers(1000, count=16, device_id=1)).registers
    assert many[:16] == first and many[16 * 7 + 11] == 60
    # signed temperature: below zero in a winter night
    b.ambient_c[:] = -20.0
    b.driver_temp_c[:] = -12.3
    regs = (await c.read_input_registers(1000 + 9, count=1, device_id=1)).registers
    assert struct.unpack(">h", struct.pack(">H", regs[0]))[0] == -123


async def test_group_level_dims_every_luminaire_and_echoes_level_cmd(sim):
    c = await sim.client()
    assert not (await c.write_register(1, 100, device_id=1)).isError()    # fade 10.0 s
    assert not (await c.write_register(0, 200, device_id=1)).isError()    # 20.0 %
    await sim.clock.advance(5)
    levels = [(await c.read_input_registers(1000 + 16 * k + 1, count=1, device_id=1)).registers[0]
              for k in range(20)]
    assert levels == [600] * 20                          # half-way through the fade
    await sim.clock.advance(10)
    blocks = (await c.read_input_registers(1000, count=120, device_id=1)).registers
    assert [blocks[16 * k + 1] for k in range(7)] == [200] * 7
    hr = (await c.read_holding_registers(1000, count=125, device_id=1)).registers
    assert [hr[16 * k] for k in range(7)] == [200] * 7
    assert (await c.read_holding_registers(0, count=1, device_id=1)).registers == [200]
    # the other cabinet on the shared port is untouched
    c2 = await sim.client(sim.p2)
    assert (await c2.read_input_registers(1001, count=1, device_id=7)).registers == [1000]


async def test_per_luminaire_writes_single_and_multiple(sim):
    c = await sim.client(sim.p2)
    assert not (await c.write_register(1000 + 16 * 2, 333, device_id=7)).isError()
    assert not (await c.write_registers(1000 + 16 * 3, [250, 0], device_id=7)).isError()
    await sim.clock.advance(1)
    w = sim.world
    assert w.bank.level[sim.lum("a/c3/l03")] == pytest.approx(33.3)
    assert w.bank.level[sim.lum("a/c3/l04")] == pytest.approx(25.0)
    assert w.bank.level[sim.lum("a/c3/l05")] == 100.0
    rd = await c.read_holding_registers(1000 + 16 * 2, count=1, device_id=7)
    assert rd.registers == [333]
    # level and its fade time in one FC16 write: the fade applies to that level change
    assert not (await c.write_registers(1000 + 16 * 5, [500, 40], device_id=7)).isError()
    assert (await c.read_holding_registers(1000 + 16 * 5, count=2, device_id=7)).registers == [500, 40]
    await sim.clock.advance(2)
    assert (await c.read_input_registers(1000 + 16 * 5 + 1, count=1, device_id=7)).registers == [750]


async def test_contactor_coil_cuts_and_restores_power(sim):
    c = await sim.client()
    assert not (await c.write_coil(0, False, device_id=1)).isError()
    await sim.clock.advance(60)
    assert (await c.read_discrete_inputs(0, count=1, device_id=1)).bits[0] is False
    regs = (await c.read_input_registers(1000, count=3, device_id=1)).registers
    assert regs == [0, 0, 0]                              # unpowered, dark, 0 W
    ir = (await c.read_input_registers(0, count=8, device_id=1)).registers
    assert u32(ir[6:8]) == 60                            # only the controller's 6 W
    assert not (await c.write_coil(0, True, device_id=1)).isError()
    await sim.clock.advance(1)
    regs = (await c.read_input_registers(1000, count=9, device_id=1)).registers
    assert regs[1] == 1000 and u32(regs[7:9]) == 2       # second start


async def test_protocol_errors_answer_documented_exceptions(sim):
    c = await sim.client()
    r = await c.read_input_registers(40, count=2, device_id=1)        # between map areas
    assert r.isError() and r.exception_code == 0x02
    r = await c.read_input_registers(1000 + 20 * 16, count=1, device_id=1)  # no 21st luminaire
    assert r.isError() and r.exception_code == 0x02
    r = await c.write_register(0, 1001, device_id=1)                   # > 100.0 %
    assert r.isError() and r.exception_code == 0x03
    r = await c.write_register(5, 1, device_id=1)                      # reserved register
    assert r.isError() and r.exception_code == 0x02
    r = await c.write_register(1000 + 5, 1, device_id=1)               # read-only block slot
    assert r.isError() and r.exception_code == 0x02
    r = await c.read_input_registers(0, count=3, device_id=9)          # no such unit
    assert r.isError() and r.exception_code == 0x0B


@pytest.mark.parametrize("code", [0x02, 0x04, 0x06, 0x0B])
async def test_exception_fault(sim, code):
    c = await sim.client()
    sim.handle.inject("a/c1", "exception", code=code)
    r = await c.read_input_registers(0, count=2, device_id=1)
    assert r.isError() and r.exception_code == code
    r = await c.write_register(0, 10, device_id=1)
    assert r.isError() and r.exception_code == code
    sim.handle.clear("a/c1", "exception")
    assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()


async def test_lamp_and_driver_failures_show_in_status_bits(sim):
    c = await sim.client()
    sim.handle.inject("a/c1/l02", "lamp_failure")
    sim.handle.inject("a/c1/l03", "driver_failure")
    sim.handle.inject("a/c1/l04", "thermal_derating")
    sim.handle.inject("a/c1/l05", "undervoltage")
    await sim.clock.advance(60)
    blocks = (await c.read_input_registers(1016, count=64, device_id=1)).registers
    s2, s3, s4, s5 = (blocks[16 * k] for k in range(4))
    assert s2 & 0x01 and blocks[1] == 0 and blocks[2] == 5          # dark, 0.5 W standby
    assert s3 & 0x02 and blocks[16 + 1] == 0 and blocks[16 + 2] == 0
    assert s4 & 0x10 and blocks[32 + 1] == 600                      # derated to 60 %
    assert s5 & 0x20 and s5 & 0x80                                  # undervoltage, supply fault
    ir = (await c.read_input_registers(0, count=18, device_id=1)).registers
    assert ir[16] == 4 and ir[0] & 0x20
    sim.handle.clear("a/c1")
    await sim.clock.advance(1)
    assert (await c.read_input_registers(1016, count=1, device_id=1)).registers[0] == 0x0300


async def test_unreachable_luminaire_behind_reachable_cabinet(sim):
    c = await sim.client()
    sim.handle.inject("a/c1/l05", "unreachable")
    r = await c.read_input_registers(1000, count=125, device_id=1)   # covers l05
    assert r.isError() and r.exception_code == 0x0B
    r = await c.write_register(1000 + 4 * 16, 100, device_id=1)
    assert r.isError() and r.exception_code == 0x0B
    assert not (await c.read_input_registers(1000, count=64, device_id=1)).isError()   # l01-l04
    assert not (await c.read_input_registers(1000 + 5 * 16, count=16, device_id=1)).isError()
    assert (await c.read_discrete_inputs(4, count=1, device_id=1)).bits[0] is False   # comm_ok
    assert (await c.read_input_registers(17, count=1, device_id=1)).registers == [1]
    # a group command skips it: the controller cannot reach it
    await c.write_register(0, 400, device_id=1)
    assert sim.world.bank.target[sim.lum("a/c1/l05")] == 100.0
    sim.handle.clear("a/c1/l05", "unreachable")
    assert not (await c.read_input_registers(1000, count=125, device_id=1)).isError()


async def test_ignore_commands_and_energy_resets(sim):
    c = await sim.client()
    sim.handle.inject("a/c1/l01", "ignore_commands")
    await c.write_register(0, 300, device_id=1)
    regs = (await c.read_input_registers(1000, count=32, device_id=1)).registers
    assert regs[1] == 1000 and regs[16 + 1] == 300          # l01 did not follow, l02 did
    hr = (await c.read_holding_registers(1000, count=1, device_id=1)).registers
    assert hr == [300]                                      # but its setpoint was sent
    await sim.clock.advance(3600)
    sim.handle.inject("a/c1/l01", "energy_reset")
    sim.handle.inject("a/c1", "energy_reset")
    regs = (await c.read_input_registers(1003, count=2, device_id=1)).registers
    assert regs == [0, 0]
    ir = (await c.read_input_registers(8, count=2, device_id=1)).registers
    assert ir == [0, 0]
    await sim.clock.advance(3600)
    ir = (await c.read_input_registers(8, count=2, device_id=1)).registers
    assert 0 < u32(ir, high_first=False) < 2000              # counting again from zero


async def test_door_breaker_and_mains_faults(sim):
    c = await sim.client()
    sim.handle.inject("a/c1", "door_open")
    sim.handle.inject("a/c1", "breaker_trip")
    await sim.clock.advance(10)
    assert (await c.read_discrete_inputs(0, count=5, device_id=1)).bits[:5] == [
        True, True, True, True, True]
    assert (await c.read_input_registers(1000, count=3, device_id=1)).registers == [0, 0, 0]
    sim.handle.clear("a/c1", "breaker_trip")
    sim.handle.inject("a/c1", "mains_voltage", volts=190.0)
    await sim.clock.advance(10)
    regs = (await c.read_input_registers(1000, count=1, device_id=1)).registers
    assert regs[0] & 0x20 and regs[0] & 0x0100             # powered, undervoltage
    assert (await c.read_input_registers(2, count=3, device_id=1)).registers == [1900] * 3


async def test_silent_cabinet_times_out_and_others_answer(sim):
    c = await sim.client(answer_timeout=0.3)
    other = await sim.client(sim.p2)
    sim.handle.inject("a/c1", "silent")
    with pytest.raises(ModbusIOException):
        await c.read_input_registers(0, count=2, device_id=1)
    assert not (await other.read_input_registers(0, count=2, device_id=7)).isError()
    sim.handle.clear("a/c1", "silent")
    fresh = await sim.client(answer_timeout=1.0)
    assert not (await fresh.read_input_registers(0, count=2, device_id=1)).isError()


async def test_slow_cabinet_answers_after_its_delay(sim):
    sim.handle.inject("a/c1", "slow", delay=0.6)
    impatient = await sim.client(answer_timeout=0.2)
    with pytest.raises(ModbusIOException):
        await impatient.read_input_registers(0, count=2, device_id=1)
    patient = await sim.client(answer_timeout=3.0)
    r = await patient.read_input_registers(0, count=2, device_id=1)
    assert r.registers[1] == 20 and r.transaction_id == 1


async def test_offline_cabinet_refuses_connections_then_comes_back(sim):
    c = await sim.client()
    sim.handle.inject("a/c1", "offline")
    await sim.handle.settle()
    with pytest.raises(ModbusIOException):
        await c.read_input_registers(0, count=2, device_id=1)
    probe = AsyncModbusTcpClient("127.0.0.1", port=sim.p1, timeout=0.5, retries=0)
    assert not await probe.connect()                        # connection refused
    probe.close()
    # a unit sharing its port with a live one goes silent rather than closing the port
    sim.handle.inject("a/c2", "offline")
    await sim.handle.settle()
    shared = await sim.client(sim.p2, answer_timeout=0.3)
    with pytest.raises(ModbusIOException):
        await shared.read_input_registers(0, count=1, device_id=1)
    sim.handle.clear("a/c1")
    sim.handle.clear("a/c2")
    await sim.handle.settle()
    back = await sim.client()
    assert (await back.read_input_registers(0, count=2, device_id=1)).registers[1] == 20


async def test_fault_api_rejects_bad_requests(sim):
    h = sim.handle
    with pytest.raises(FaultError, match="unknown device"):
        h.inject("a/nope", "lamp_failure")
    with pytest.raises(FaultError, match="unknown luminaire fault"):
        h.inject("a/c1/l01", "door_open")
    with pytest.raises(FaultError, match="exception code"):
        h.inject("a/c1", "exception", code=99)
    with pytest.raises(FaultError, match="does not take"):
        h.inject("a/c1", "door_open", volts=3)
    h.inject("a/c2", "lamp_failure")                        # all 24 luminaires of c2
    assert np.count_nonzero(sim.world.bank.faults[sim.world.by_path["a/c2"].lum] & 1) == 24
    assert len(h.active_faults()) == 24


async def test_control_channel_injects_faults_from_another_client(sim):
    router = FaultRouter(sim.site, {"modbus": sim.handle})
    server = ControlServer(router)
    port = await server.start()
    try:
        answers = await asyncio.to_thread(
            send_control, "127.0.0.1", port,
            {"op": "inject", "path": "a/c1/l07", "fault": "led_open"},
            {"op": "inject", "path": "a/c1", "fault": "slow", "params": {"delay": 0.5}},
            {"op": "list"},
            {"op": "inject", "path": "a/zz", "fault": "led_open"},
            {"op": "clear", "path": "a/c1", "fault": "slow"},
            {"op": "bogus"},
        )
    finally:
        await server.aclose()
    assert [a["ok"] for a in answers] == [True, True, True, False, True, False]
    assert {(f["path"], f["fault"]) for f in answers[2]["faults"]} == {
        ("a/c1/l07", "led_open"), ("a/c1", "slow")}
    assert "unknown device" in answers[3]["error"]
    c = await sim.client()
    regs = (await c.read_input_registers(1000 + 6 * 16, count=2, device_id=1)).registers
    assert regs[0] & 0x04 and regs[1] == 0
