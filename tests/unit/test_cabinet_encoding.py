"""Register encoding of the cabinet simulator and fault-spec parsing: pure, no sockets."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from simulators.cabinet import (
    BLOCK_SIZE,
    LIR_ENERGY,
    LIR_LEVEL,
    LIR_NOMINAL_W,
    LIR_OP_TIME,
    LIR_POWER,
    LIR_STARTS,
    LIR_STATUS,
    LIR_SUPPLY_V,
    LIR_TEMP,
    LST_SUPPLY,
    encode_luminaire_ir,
    i16,
    split32,
    u16,
    u32,
)
from simulators.faults import FaultError, FaultRouter, parse_fault_spec
from simulators.luminaire import FAULT_LAMP, FAULT_OVERVOLT, LuminaireBank


def test_split32_word_orders():
    w = split32(np.array([0x12345678, 0xFFFFFFFF, 0]))
    assert w.tolist() == [[0x1234, 0x5678], [0xFFFF, 0xFFFF], [0, 0]]
    assert split32(np.array([0x12345678]), high_first=False).tolist() == [[0x5678, 0x1234]]


def test_scaled_integers_round_and_clip():
    assert u16(np.array([230.04, 230.06, -5.0, 1e9]), 0.1).tolist() == [2300, 2301, 0, 0xFFFF]
    assert i16(np.array([-12.34, 12.34, -1e9]), 0.1).tolist() == [
        struct.unpack(">H", struct.pack(">h", -123))[0], 123, 0x8000]
    assert u32(np.array([5e9])).tolist() == [0xFFFFFFFF]


def test_luminaire_block_layout():
    b = LuminaireBank(3, np.array([40.0, 60.0, 100.0]), start_time=0.0,
                      operating_h=np.array([0.0, 10.0, 20_000.0]))
    b.set_powered(None, True, 0.0)
    b.command(None, 55.5, 0.0)
    b.step(7200.0)
    b.inject(2, FAULT_LAMP | FAULT_OVERVOLT)
    blk = encode_luminaire_ir(b, np.arange(3))
    assert blk.shape == (3, BLOCK_SIZE) and blk.dtype == np.uint16
    assert blk[0, LIR_LEVEL] == 555
    assert blk[1, LIR_POWER] == round(b.power_w[1] * 10)
    e = (int(blk[1, LIR_ENERGY]) << 16) | int(blk[1, LIR_ENERGY + 1])
    assert e == round(b.energy_wh[1] * 10)
    op = (int(blk[1, LIR_OP_TIME]) << 16) | int(blk[1, LIR_OP_TIME + 1])
    assert op == 12 * 3600                                # 10 h + 2 h lit, in seconds
    op2 = (int(blk[2, LIR_OP_TIME]) << 16) | int(blk[2, LIR_OP_TIME + 1])
    assert op2 == 20_002 * 3600 and blk[2, LIR_OP_TIME] > 0   # really spans two registers
    assert blk[0, LIR_STARTS + 1] == 1
    assert blk[0, LIR_TEMP] == round(b.driver_temp_c[0] * 10)
    assert blk[0, LIR_SUPPLY_V] == round(b.supply_v[0] * 10)
    assert blk[:, LIR_NOMINAL_W].tolist() == [40, 60, 100]
    st = int(blk[2, LIR_STATUS])
    assert st & FAULT_LAMP and st & FAULT_OVERVOLT and st & LST_SUPPLY
    assert blk[2, LIR_LEVEL] == 0                         # failed lamp: dark
    assert blk[:, 12:].sum() == 0                         # reserved registers read 0


@pytest.mark.parametrize("spec, expected", [
    ("lamp_failure:centre/cab-001/lum-03", ("lamp_failure", "centre/cab-001/lum-03", {})),
    ("slow:centre/cab-001:delay=1.5", ("slow", "centre/cab-001", {"delay": 1.5})),
    ("exception:a/c:code=11", ("exception", "a/c", {"code": 11})),
    ("mains_voltage:a/c:volts=190,note=sag", ("mains_voltage", "a/c", {"volts": 190, "note": "sag"})),
])
def test_parse_fault_spec(spec, expected):
    assert parse_fault_spec(spec) == expected


@pytest.mark.parametrize("spec", ["lamp_failure", ":a/b", "slow:a/b:delay", "x:a:=3"])
def test_parse_fault_spec_errors_say_the_format(spec):
    with pytest.raises(FaultError, match="fault spec"):
        parse_fault_spec(spec)


def test_router_answers_errors_instead_of_raising():
    class Site:
        def all_devices(self):
            return iter(())

    r = FaultRouter(Site(), {})
    assert r.handle_request({"op": "ping"}) == {"ok": True}
    assert r.handle_request([1])["ok"] is False
    ans = r.handle_request({"op": "inject", "path": "a/b", "fault": "x"})
    assert ans["ok"] is False and "unknown device" in ans["error"]
    assert "unknown op" in r.handle_request({"op": "nope"})["error"]


def test_luminaire_numbers_must_start_at_one(tmp_path):
    from pathlib import Path

    from scada.clock import SteppedClock
    from scada.loader import load_site
    from simulators.cabinet import World

    profiles = Path(__file__).resolve().parents[2] / "config" / "profiles"
    p = tmp_path / "site.yaml"
    p.write_text(f"""
site: {{name: t, latitude: 47.3, longitude: 5.0}}
areas: [{{id: a}}]
include: ["{profiles}/cabinet-modbus.yaml", "{profiles}/luminaire-modbus.yaml"]
devices:
  - {{id: c, profile: cabinet-modbus, area: a, connection: {{host: 127.0.0.1, port: 1502}},
     children: [{{profile: luminaire-modbus, count: 3, start: 0}}]}}
""", encoding="utf-8")
    site = load_site(p, validate_drivers=False)
    with pytest.raises(ValueError, match="a/c: luminaire numbers must be unique and start at 1"):
        World(SteppedClock(), site.devices, seed=1)
