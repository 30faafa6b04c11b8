"""Modbus driver against real servers on loopback, time stepped with a SteppedClock.

The poll schedule runs on the stepped clock (exact cycle counts); socket I/O and timeouts are
real (short). ``step`` advances one poll period and waits until every station's I/O is done,
so "within 2 poll periods" is asserted as "after at most 2 steps".
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from drivers.modbus.driver import ModbusDriver
from scada import quality as Q
from scada.errors import ConfigError
from scada.loader import load_site
from scada.runtime import Runtime

HEADER = """
site: {name: test, latitude: 47.3, longitude: 5.0}
areas: [{id: a}]
drivers:
  modbus: {OPTS}
"""
OPTS = "{timeout: 0.5, retries: 1, connect_timeout: 0.5, demote_after: 2, demote_base: 4, demote_cap: 8}"

# A meter from "another vendor": word-swapped float voltage, big-endian uint32 energy counter,
# signed temperature x0.1, an alarm bit in a status word, a relay coil, a setpoint x0.5, a
# serial number string. Integrated purely through this profile.
VENDOR_PROFILE = """
profiles:
  acme-meter:
    protocol: modbus
    kind: meter
    options: {poll_groups: {fast: 2s, slow: 60s}, default_poll: fast, max_gap: 4}
    points:
      - {name: voltage, unit: V, source: {table: input, address: 0, type: float32, word_order: little}}
      - {name: energy_wh, unit: Wh, source: {table: holding, address: 10, type: uint32, poll: slow}}
      - {name: temp_c, unit: degC, source: {table: holding, address: 20, type: int16, scale: 0.1}}
      - {name: alarm, type: bool, source: {table: holding, address: 21, bit: 3}}
      - {name: relay, type: bool, access: rw, source: {table: coil, address: 4}}
      - {name: setpoint, access: rw, source: {table: holding, address: 30, type: int16, scale: 0.5}}
      - {name: mode_bit, type: bool, access: rw, source: {table: holding, address: 31, bit: 2}}
      - {name: limit, access: rw, source: {table: holding, address: 32, type: float32}}
      - {name: door, type: bool, access: rw, source: {table: discrete, address: 7}}
      - {name: serial, type: string, source: {table: holding, address: 40, type: string, count: 4}}
"""


def fill_vendor(srv, unit: int = 1, volts: float = 231.5, energy: int = 0x0001_86A0, temp: int = -57):
    import struct

    hi, lo = struct.unpack(">HH", struct.pack(">f", volts))
    srv.set_registers("input", 0, [lo, hi], unit)          # word-swapped float
    srv.set_registers("holding", 10, [energy >> 16, energy & 0xFFFF], unit)
    srv.set_registers("holding", 20, [temp & 0xFFFF, 1 << 3], unit)
    srv.set_registers("holding", 30, [40, 0], unit)
    srv.set_registers("holding", 40, list(struct.unpack(">4H", b"AC-1234\x00")), unit)
    srv.set_bits("coil", 4, [True], unit)
    srv.set_bits("discrete", 7, [True], unit)


def write_site(tmp_path: Path, body: str, opts: str = OPTS) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(HEADER.replace("{OPTS}", opts) + body, encoding="utf-8")
    return p


class Harness:
    """A runtime with only the Modbus driver, run on a stepped clock."""

    def __init__(self, site_path: Path, clock):
        self.site = load_site(site_path)
        self.clock = clock
        self.rt = Runtime(self.site, clock)
        self.rt.load_drivers(only=["modbus"])
        self.drv: ModbusDriver = self.rt.drivers["modbus"]  # type: ignore[assignment]
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.drv.run(), name="test-modbus-driver")
        await self.clock.advance(0)
        await self.drv.wait_idle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.drv.aclose()

    async def step(self, seconds: float = 2.0, n: int = 1) -> None:
        for _ in range(n):
            await self.clock.advance(seconds)
            await self.drv.wait_idle()
            # a recovered station re-reads its slow groups at once: let that finish too
            await self.clock.advance(0)
            await self.drv.wait_idle()

    def read(self, path: str):
        return self.rt.tagdb.read(path)

    def health(self, name: str) -> float:
        self.drv._update_health(self.clock.time() - 10)
        return self.drv.ctx.health.get(name)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()


def vendor_site(tmp_path, *ports_units) -> Path:
    devs = "\ndevices:\n" + "".join(
        f"  - {{id: m{i}, profile: acme-meter, area: a, connection: {{host: 127.0.0.1, port: {p}, unit: {u}}}}}\n"
        for i, (p, u) in enumerate(ports_units, 1)
    )
    return write_site(tmp_path, VENDOR_PROFILE + devs)


async def test_other_vendor_device_integrated_by_profile_only(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step()
        assert h.read("a/m1/voltage").value == pytest.approx(231.5)
        assert h.read("a/m1/energy_wh").value == 100_000
        assert h.read("a/m1/temp_c").value == pytest.approx(-5.7)
        assert h.read("a/m1/alarm").value is True
        assert h.read("a/m1/relay").value is True
        assert h.read("a/m1/door").value is True
        assert h.read("a/m1/setpoint").value == pytest.approx(20.0)
        assert h.read("a/m1/serial").value == "AC-1234"
        for p in ("voltage", "energy_wh", "temp_c", "alarm", "serial"):
            assert h.read(f"a/m1/{p}").quality == Q.Good
            assert h.read(f"a/m1/{p}").source_ts == pytest.approx(stepped_clock.time())
        assert h.rt.tagdb.info("a/m1/voltage").point.unit == "V"
        # the counter changes: the fast group picks up temperature, energy waits for its group
        srv.set_registers("holding", 10, [0, 5])
        srv.set_registers("holding", 20, [250])
        await h.step()
        assert h.read("a/m1/temp_c").value == pytest.approx(25.0)
        assert h.read("a/m1/energy_wh").value == 100_000
        await h.step(2.0, n=30)
        assert h.read("a/m1/energy_wh").value == 5
        assert h.alive


async def test_poll_groups_coalesce_and_keep_their_rates(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        st = h.drv.stations[0]
        fast, slow = st.groups[2.0], st.groups[60.0]
        # fast: input 0-1 | holding 20-21 + 30-32 (gap 8 > 4 -> two) + 40-43 | coil | discrete
        assert [(r.table, r.start, r.count) for r in fast.reads] == [
            ("holding", 20, 2), ("holding", 30, 3 + 1), ("holding", 40, 4),
            ("input", 0, 2), ("coil", 4, 1), ("discrete", 7, 1)]
        assert [(r.table, r.start, r.count) for r in slow.reads] == [("holding", 10, 2)]
        before, cycles0 = h.health("requests"), h.health("cycles")
        await h.step(2.0, n=30)  # one minute
        sent = h.health("requests") - before
        assert sent == 30 * len(fast.reads) + len(slow.reads)
        assert h.health("cycles") - cycles0 == 30  # the 60 s group rides on a 2 s cycle
        assert h.health("late_cycles") == 0


async def test_device_down_goes_bad_keeps_last_value_and_recovers(tmp_path, modbus_server, stepped_clock, caplog):
    srv = await modbus_server()
    fill_vendor(srv)
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step()
        good = h.read("a/m1/voltage")
        assert good.quality == Q.Good
        await srv.stop()
        steps = 0
        while h.read("a/m1/voltage").quality == Q.Good and steps < 5:
            await h.step()
            steps += 1
        assert steps <= 2
        lost = h.read("a/m1/voltage")
        assert lost.quality == Q.BadCommunicationError
        assert lost.value == good.value and lost.source_ts == good.source_ts
        assert h.read("a/m1/energy_wh").quality == Q.BadCommunicationError  # slow group too
        await h.step(2.0, n=6)  # demoted: skipped, not hammering a dead device
        assert h.health("demoted") == 1
        assert h.health("connected") == 0
        await srv.start()
        fill_vendor(srv, volts=229.0)
        await h.step(2.0, n=6)  # longer than the demotion cap
        back = h.read("a/m1/voltage")
        assert back.quality == Q.Good and back.value == pytest.approx(229.0)
        assert h.read("a/m1/energy_wh").quality == Q.Good  # slow group re-read at once
        assert h.health("connected") == 1
        msgs = [r.getMessage() for r in caplog.records if r.name == "drivers.modbus"]
        assert sum("unavailable" in m for m in msgs) == 1
        assert sum("answers again" in m for m in msgs) == 1


async def test_silent_device_does_not_delay_the_others(tmp_path, modbus_server, bad_modbus_server, stepped_clock):
    srv = await modbus_server(units=(1, 2))
    fill_vendor(srv, unit=1)
    fill_vendor(srv, unit=2)
    silent = await bad_modbus_server()
    silent.mode = "silent"
    path = vendor_site(tmp_path, (srv.port, 1), (silent.port, 1), (srv.port, 2))
    async with Harness(path, stepped_clock) as h:
        stations = {s.devices[0].id: s for s in h.drv.stations}
        assert len(h.drv.links) == 2  # units 1 and 2 share one connection
        polls0 = {k: s.groups[2.0].polls for k, s in stations.items()}
        n = 10
        await h.step(2.0, n=n)
        # every healthy station completed exactly one poll per period, none late
        assert stations["m1"].groups[2.0].polls - polls0["m1"] == n
        assert stations["m3"].groups[2.0].polls - polls0["m3"] == n
        assert h.health("late_cycles") == 0
        assert h.read("a/m1/voltage").quality == Q.Good
        assert h.read("a/m3/voltage").quality == Q.Good
        assert h.read("a/m2/voltage").quality == Q.BadCommunicationError
        # demoted: without demotion it would be asked (n + 1) polls x 2 attempts = 22 times;
        # with it (skips of >= 2, 4, 4 ... s) at most 7 polls x 2 = 14
        assert silent.requests <= 14
        assert h.drv.links[(srv.host, srv.port)].stats["connects"] == 1


@pytest.mark.parametrize(
    "code, status",
    [(0x02, Q.BadConfigurationError), (0x04, Q.BadDeviceFailure),
     (0x06, Q.UncertainLastUsableValue), (0x0B, Q.BadCommunicationError)],
)
async def test_exception_answers_map_to_status_and_clear(tmp_path, modbus_server, stepped_clock, code, status):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step()
        v0 = h.read("a/m1/temp_c").value
        srv.exception[1] = code
        await h.step()
        s = h.read("a/m1/temp_c")
        assert s.quality == status and s.value == v0
        assert h.health("exceptions") >= 1
        srv.exception[1] = None
        await h.step()
        assert h.read("a/m1/temp_c").quality == Q.Good


async def test_writes_registers_coils_bits_and_refusals(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step()
        # through the runtime: type/range checks, then the driver
        assert await h.rt.write("a/m1/setpoint", 37.5) == Q.Good
        assert srv.registers("holding", 30, 1) == [75]
        await h.step(0)
        assert h.read("a/m1/setpoint").value == pytest.approx(37.5)
        assert await h.rt.write("a/m1/limit", -2.25) == Q.Good
        await h.step(0)
        assert h.read("a/m1/limit").value == pytest.approx(-2.25)
        assert await h.rt.write("a/m1/relay", False) == Q.Good
        await h.step(0)
        assert h.read("a/m1/relay").value is False
        srv.set_registers("holding", 31, [0b1000_0001])
        assert await h.rt.write("a/m1/mode_bit", True) == Q.Good
        assert srv.registers("holding", 31, 1) == [0b1000_0101]  # other bits untouched
        await h.step(0)
        assert h.read("a/m1/mode_bit").value is True
        # read-only in the profile: the runtime refuses
        assert await h.rt.write("a/m1/voltage", 1.0) == Q.BadNotWritable
        # rw in the profile but a discrete input on the device: the driver refuses
        door = h.rt.tagdb.index("a/m1/door")
        assert await h.drv.write(door, False) == Q.BadNotWritable
        # out of the register's range after scaling
        assert await h.drv.write(h.rt.tagdb.index("a/m1/setpoint"), 1e6) == Q.BadOutOfRange
        # the device refuses the value
        srv.exception[1] = 0x03
        assert await h.rt.write("a/m1/setpoint", 10.0) == Q.BadOutOfRange
        srv.exception[1] = None
        # the device accepts the value, then overrides it (local control): the read-back
        # differs and is counted
        assert await h.rt.write("a/m1/setpoint", 30.0) == Q.Good
        srv.set_registers("holding", 30, [20])
        await h.step(0)
        assert h.read("a/m1/setpoint").value == pytest.approx(10.0)
        assert h.health("write_mismatch") == 1
        # the device is gone: the writer hears it
        await srv.stop()
        assert await h.rt.write("a/m1/setpoint", 12.0) in (Q.BadCommunicationError, Q.BadTimeout)


CABINET = """
profiles:
  cab:
    protocol: modbus
    kind: cabinet
    options: {poll_groups: {status: 2s}}
    points:
      - {name: voltage_l1, unit: V, source: {table: input, address: 0, scale: 0.1}}
  lum:
    protocol: modbus
    kind: luminaire
    options: {poll_groups: {status: 2s, energy: 60s}, default_poll: status, block_base: 100, block_size: 16, max_gap: 12}
    points:
      - {name: level, unit: "%", source: {table: input, address: 0}}
      - {name: power_w, unit: W, source: {table: input, address: 1, scale: 0.1}}
      - {name: energy_wh, unit: Wh, source: {table: input, address: 2, type: uint32, poll: energy}}
      - {name: lamp_failure, type: bool, source: {table: input, address: 4, bit: 0}}
devices:
  - id: cab-1
    profile: cab
    area: a
    connection: {host: 127.0.0.1, port: PORT, unit: 1}
    children: [{profile: lum, count: 12}]
"""


async def test_children_blocks_and_one_unreachable_luminaire(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server()
    srv.set_registers("input", 0, [2301])
    for n in range(1, 13):
        b = 100 + (n - 1) * 16
        srv.set_registers("input", b, [n, 10 * n, 0, 1000 + n, 1 if n == 5 else 0])
    path = write_site(tmp_path, CABINET.replace("PORT", str(srv.port)))
    async with Harness(path, stepped_clock) as h:
        st = h.drv.stations[0]
        assert len(st.devices) == 13
        assert len(st.groups[2.0].reads) == 3  # cabinet + 2 requests for 12 blocks
        await h.step()
        assert h.read("a/cab-1/voltage_l1").value == pytest.approx(230.1)
        assert h.read("a/cab-1/lum-07/level").value == 7
        assert h.read("a/cab-1/lum-07/power_w").value == pytest.approx(7.0)
        assert h.read("a/cab-1/lum-12/energy_wh").value == 1012
        assert h.read("a/cab-1/lum-05/lamp_failure").value is True
        assert h.read("a/cab-1/lum-04/lamp_failure").value is False
        # luminaire 9 stops answering behind a reachable cabinet: gateway exception 0x0B
        srv.exception_range[1] = (100 + 8 * 16, 100 + 9 * 16, 0x0B)
        await h.step()
        assert h.read("a/cab-1/lum-09/level").quality == Q.BadCommunicationError
        for other in ("lum-08", "lum-10", "lum-01"):
            assert h.read(f"a/cab-1/{other}/level").quality == Q.Good
        assert h.read("a/cab-1/voltage_l1").quality == Q.Good
        del srv.exception_range[1]
        await h.step()
        assert h.read("a/cab-1/lum-09/level").quality == Q.Good


MODES = ["wrong_tid", "wrong_unit", "byte_count", "garbage", "half", "reset", "double", "bad_function"]


async def test_misbehaving_server_counted_never_crashes(tmp_path, modbus_server, bad_modbus_server, stepped_clock):
    good = await modbus_server()
    fill_vendor(good)
    bad = await bad_modbus_server()
    profile = """
profiles:
  plain:
    protocol: modbus
    options: {poll_groups: {fast: 2s}}
    points:
      - {name: r0, source: {address: 0}}
      - {name: r1, source: {address: 1}}
"""
    devs = f"""
devices:
  - {{id: bad, profile: plain, area: a, connection: {{host: 127.0.0.1, port: {bad.port}, retries: 0}}}}
  - {{id: ok, profile: plain, area: a, connection: {{host: 127.0.0.1, port: {good.port}}}}}
"""
    good.set_registers("holding", 0, [11, 12])
    path = write_site(tmp_path, profile + devs, "{timeout: 0.4, retries: 0, demote_after: 100}")
    async with Harness(path, stepped_clock) as h:
        await h.step()
        assert h.read("a/bad/r1").value == 101 and h.read("a/bad/r1").quality == Q.Good
        counted = {"wrong_tid": "stale", "wrong_unit": "stale", "byte_count": "malformed",
                   "garbage": "malformed", "half": "timeouts", "reset": "errors",
                   "double": "stale", "bad_function": "malformed"}
        for mode in MODES:
            bad.mode = mode
            before = h.health(counted[mode])
            resets = h.health("resets")
            await h.step()
            assert h.health(counted[mode]) > before, mode
            if mode != "double":  # two answers: the first was right, the value is good
                assert h.read("a/bad/r0").quality == Q.BadCommunicationError, mode
            assert h.health("resets") > resets or mode == "reset", mode
            assert h.read("a/ok/r0").quality == Q.Good and h.read("a/ok/r0").value == 11
            bad.mode = "ok"
            await h.step()
            assert h.read("a/bad/r0").quality == Q.Good, f"no recovery after {mode}"
        assert h.alive
        assert h.health("rejected") >= 5


async def test_bad_profile_is_refused_with_device_and_point(tmp_path):
    body = VENDOR_PROFILE.replace("poll: slow", "poll: hourly") + (
        "\ndevices:\n  - {id: m1, profile: acme-meter, area: a, connection: {host: 127.0.0.1, port: 1502}}\n")
    site = load_site(write_site(tmp_path, body))
    rt = Runtime(site)
    with pytest.raises(ConfigError, match=r"energy_wh.*hourly"):
        rt.load_drivers(only=["modbus"])


async def test_loader_reports_source_errors_with_lines(tmp_path):
    body = VENDOR_PROFILE.replace("type: uint32, poll: slow", "type: uint33, poll: slow").replace(
        "address: 20, type: int16", "address: 20, type: int16, colour: red")
    path = write_site(tmp_path, body + "\ndevices: []\n")
    with pytest.raises(ConfigError) as e:
        load_site(path)
    text = str(e.value)
    assert "site.yaml:" in text and "uint33" in text and "colour" in text


async def test_writes_never_interleave_with_polls_on_a_shared_connection(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server(units=(1, 2))
    fill_vendor(srv, unit=1)
    fill_vendor(srv, unit=2)
    async with Harness(vendor_site(tmp_path, (srv.port, 1), (srv.port, 2)), stepped_clock) as h:
        assert len(h.drv.links) == 1
        sp1 = h.rt.tagdb.index("a/m1/setpoint")
        sp2 = h.rt.tagdb.index("a/m2/setpoint")

        async def polls() -> None:
            for _ in range(10):
                await h.clock.advance(2.0)
                await asyncio.sleep(0.01)

        values = [0.5 * k for k in range(40)]
        results = await asyncio.gather(
            polls(), *(h.drv.write(sp1 if k % 2 else sp2, v) for k, v in enumerate(values)))
        await h.drv.wait_idle()
        assert results[1:] == [Q.Good] * len(values)
        assert srv.registers("holding", 30, 1, unit=1) == [int(values[-1] * 2)]
        assert srv.registers("holding", 30, 1, unit=2) == [int(values[-2] * 2)]
        assert h.health("stale") == 0 and h.health("malformed") == 0 and h.health("errors") == 0
        await h.step(0)
        assert h.read("a/m1/setpoint").value == values[-1]
        assert h.read("a/m2/setpoint").value == values[-2]


async def test_health_counters_are_system_tags(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step(1.0, n=2)  # the housekeeping runs on the clock, once a second
        h.rt.publish_health()
        assert h.read("_system/modbus/devices").value == 1
        assert h.read("_system/modbus/connected").value == 1
        assert h.read("_system/modbus/requests").value >= 6
        assert h.read("_system/modbus/timeouts").value == 0
        assert h.rt.tagdb.info("_system/modbus/stale").point.description


async def test_site_options_and_connection_errors_name_file_and_line(tmp_path):
    body = VENDOR_PROFILE + (
        "\ndevices:\n  - {id: m1, profile: acme-meter, area: a, connection: {host: 127.0.0.1, prot: 502}}\n")
    path = write_site(tmp_path, body, "{timeot: 1, retries: 9}")
    with pytest.raises(ConfigError) as e:
        load_site(path)
    text = str(e.value)
    assert "timeot" in text and "retries" in text and "prot" in text
    assert all(line.strip().startswith(str(path)) for line in text.splitlines()[1:])


async def test_write_during_a_poll_is_verified_by_the_next_poll_only(tmp_path, modbus_server, stepped_clock):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step()
        sp = h.rt.tagdb.index("a/m1/setpoint")
        assert h.read("a/m1/setpoint").value == 20.0
        srv.delay = 0.05  # each answer takes 50 ms: a poll of 6 reads takes ~300 ms
        before = srv.requests
        await h.clock.advance(2.0)  # a poll starts: holding 20, then holding 30 (setpoint), ...
        for _ in range(500):  # until the setpoint register has been read (old value)
            if srv.requests >= before + 3:
                break
            await asyncio.sleep(0.01)
        assert srv.requests >= before + 3
        assert await h.drv.write(sp, 30.0) == Q.Good
        await h.drv.wait_idle()
        await h.step(0)
        srv.delay = 0.0
        await h.step(0)
        assert h.read("a/m1/setpoint").value == 30.0
        assert h.health("write_mismatch") == 0


@pytest.mark.parametrize("max_in_flight", [8, 1])
async def test_silent_units_behind_one_gateway_are_detected_in_one_timeout(
        tmp_path, modbus_server, stepped_clock, max_in_flight):
    """Four silent unit ids and a healthy one behind one connection (issue 16: integrators saw
    4.4 to 8.5 s for four silent units). Requests to different units go out together, so the
    four are found dead within one timeout of each other; ``max_in_flight: 1`` (a gateway that
    cannot queue) is the old one-after-another behaviour."""
    srv = await modbus_server(units=(1, 2, 3, 4, 5))
    for u in range(1, 6):
        fill_vendor(srv, unit=u)
    opts = f"{{timeout: 0.5, retries: 0, connect_timeout: 0.5, stagger: false, max_in_flight: {max_in_flight}}}"
    path = write_site(tmp_path, VENDOR_PROFILE + "\ndevices:\n" + "".join(
        f"  - {{id: m{u}, profile: acme-meter, area: a, connection: {{host: 127.0.0.1, port: {srv.port}, unit: {u}}}}}\n"
        for u in range(1, 6)), opts=opts)
    async with Harness(path, stepped_clock) as h:
        assert all(h.read(f"a/m{u}/voltage").good for u in range(1, 6))
        srv.silent = {1, 2, 3, 4}
        lost: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        def seen(ch):
            for i in ch.indices[ch.quality == Q.BadCommunicationError].tolist():
                lost.setdefault(h.rt.tagdb.info(i).device, loop.time())

        h.rt.tagdb.subscribe(seen)
        await h.step()
        link = h.drv.links[(srv.host, srv.port)]
        assert sorted(lost) == [f"a/m{u}" for u in range(1, 5)]
        assert h.read("a/m5/voltage").quality == Q.Good
        spread = max(lost.values()) - min(lost.values())
        if max_in_flight > 1:
            assert link.stats["in_flight_peak"] == 5
            assert spread < 0.25, spread  # all four within half a timeout of each other
            assert link.stats["connects"] == 1  # a timeout with others in flight keeps the connection
        else:
            assert link.stats["in_flight_peak"] == 1
            assert spread >= 3 * 0.5 * 0.9, spread  # one after another: three more timeouts


async def test_answers_again_is_logged_after_an_exception_outage(tmp_path, modbus_server, stepped_clock, caplog):
    srv = await modbus_server()
    fill_vendor(srv)
    async with Harness(vendor_site(tmp_path, (srv.port, 1)), stepped_clock) as h:
        await h.step()
        caplog.set_level(logging.INFO, logger="drivers.modbus")
        srv.exception[1] = 0x04
        await h.step()

        def down() -> list[str]:
            return [r.getMessage() for r in caplog.records if "server device failure" in r.getMessage()]

        first = len(down())
        assert first >= 1
        await h.step(n=3)
        assert len(down()) == first  # once per failing request, not once per poll
        assert not any("answers again" in r.getMessage() for r in caplog.records)
        srv.exception[1] = None
        await h.step()
        back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
        assert len(back) == first and all("a/m1" in m for m in back), back
        assert h.read("a/m1/temp_c").quality == Q.Good
