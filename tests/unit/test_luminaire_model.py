"""Physics of the shared LED luminaire model (simulators/luminaire.py): pure, no sockets."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.luminaire import (
    FAULT_DRIVER,
    FAULT_LAMP,
    FAULT_LED_OPEN,
    FAULT_LED_SHORT,
    FAULT_OVERVOLT,
    FAULT_THERMAL,
    FAULT_UNDERVOLT,
    STANDBY_W,
    THERMAL_CAP,
    LuminaireBank,
    power_fraction,
)

T0 = 1_767_225_600.0


def lit_bank(n: int = 4, nominal: float = 40.0, level: float = 100.0, **kw) -> LuminaireBank:
    b = LuminaireBank(n, nominal, start_time=T0, **kw)
    b.set_powered(None, True, T0)
    b.command(None, level, T0)
    return b


def test_energy_of_constant_40w_for_10h_is_400wh():
    b = lit_bank()
    b.step(T0 + 10 * 3600)
    np.testing.assert_allclose(b.power_w, 40.0, rtol=1e-6)  # CLO adds only 0.002 % at 10 h
    np.testing.assert_allclose(b.energy_wh, 400.0, rtol=1e-4)


def test_energy_does_not_depend_on_step_size():
    coarse, fine = lit_bank(level=70.0), lit_bank(level=70.0)
    coarse.step(T0 + 7200)
    for k in range(1, 121):
        fine.step(T0 + 60 * k)
    # only the constant-light-output drift (power grows with hours) separates the two
    np.testing.assert_allclose(coarse.energy_wh, fine.energy_wh, rtol=1e-5)


def test_command_between_steps_is_integrated_at_the_command_time():
    b = lit_bank(n=1, level=100.0)
    b.command(0, 0.0, T0 + 3600)            # 1 h at 40 W, then standby
    b.step(T0 + 7200)
    assert b.energy_wh[0] == pytest.approx(40.0 + STANDBY_W, rel=1e-4)


def test_fade_is_linear_and_its_energy_is_close_to_the_fine_integral():
    b = lit_bank(n=1, level=0.0)
    b.command(0, 100.0, T0 + 10, fade_s=100.0)
    b.step(T0 + 60)
    assert b.level[0] == pytest.approx(50.0)
    b.step(T0 + 1000)
    assert b.level[0] == pytest.approx(100.0)
    # reference: integrate the same ramp finely
    t = np.linspace(0, 100, 100_001)
    ref_ws = np.trapezoid(40.0 * power_fraction(t), t)
    expected_wh = (10 * STANDBY_W + ref_ws + 890 * 40.0) / 3600
    assert b.energy_wh[0] == pytest.approx(expected_wh, rel=2e-3)


def test_power_is_not_linear_in_level_and_standby_when_off():
    b = lit_bank(n=3, nominal=100.0)
    b.command(None, np.array([10.0, 50.0, 0.0]), T0 + 1)
    ratio = b.power_w[:2] / 100.0
    assert 0.13 <= ratio[0] <= 0.17          # 10 % light still draws ~15 %
    assert ratio[1] < 0.5 and ratio[1] > 0.4
    assert b.power_w[2] == pytest.approx(STANDBY_W)
    b.set_powered(None, False, T0 + 2)
    assert (b.power_w == 0).all() and (b.level == 0).all()


def test_constant_light_output_raises_power_with_hours():
    b = lit_bank(n=2, operating_h=np.array([0.0, 50_000.0]))
    assert b.power_w[1] / b.power_w[0] == pytest.approx(1.10, rel=1e-6)
    assert b.level[1] == 100.0  # light unchanged: that is the point of CLO


def test_operating_hours_and_starts():
    b = LuminaireBank(2, 30.0, start_time=T0)
    b.command(None, 80.0, T0)
    assert (b.starts == 0).all()           # no mains yet: no light, no start
    b.set_powered(None, True, T0)
    assert (b.starts == 1).all()
    b.step(T0 + 7200)
    np.testing.assert_allclose(b.operating_h, 2.0)
    b.set_powered(0, False, T0 + 7200)
    b.step(T0 + 10800)
    b.set_powered(0, True, T0 + 10800)
    assert list(b.starts) == [2, 1]
    np.testing.assert_allclose(b.operating_h, [2.0, 3.0])
    b.command(1, 0.0, T0 + 10800)
    b.command(1, 20.0, T0 + 10801)
    assert list(b.starts) == [2, 2]


@pytest.mark.parametrize("bits, light, power", [
    (FAULT_LAMP, 0.0, STANDBY_W),
    (FAULT_LED_OPEN, 0.0, STANDBY_W),
    (FAULT_DRIVER, 0.0, 0.0),
])
def test_failures_give_no_light(bits, light, power):
    b = lit_bank(n=2)
    b.inject(0, bits)
    assert b.level[0] == light and b.power_w[0] == pytest.approx(power)
    assert b.faults[0] & bits and b.faults[1] == 0 and b.level[1] == 100.0
    b.step(T0 + 3600)
    assert b.energy_wh[0] == pytest.approx(power, rel=1e-6)
    b.clear(0, bits)
    assert b.level[0] == 100.0 and b.faults[0] == 0


def test_led_short_keeps_light_at_lower_power():
    b = lit_bank(n=1)
    b.inject(0, FAULT_LED_SHORT)
    assert b.level[0] == 100.0 and b.power_w[0] == pytest.approx(32.0, rel=1e-4)


def test_thermal_fault_caps_level_and_heats_driver():
    b = lit_bank(n=2)
    b.inject(0, FAULT_THERMAL)
    assert b.level[0] == THERMAL_CAP and b.level[1] == 100.0
    b.step(T0 + 4 * 3600)
    assert b.driver_temp_c[0] > b.driver_temp_c[1] + 30
    b.clear(0)
    b.step(T0 + 20 * 3600)
    assert b.level[0] == 100.0


def test_driver_temperature_settles_above_ambient_with_load():
    b = lit_bank(n=2, ambient_c=20.0)
    b.command(1, 0.0, T0)
    b.step(T0 + 6 * 3600)
    assert 40 < b.driver_temp_c[0] < 60
    assert b.driver_temp_c[1] < 21


def test_supply_voltage_faults_derive_from_mains():
    b = lit_bank(n=3)
    b.set_mains(0, 180.0, T0 + 1)
    b.set_mains(1, 260.0, T0 + 1)
    assert b.faults[0] & FAULT_UNDERVOLT and b.faults[1] & FAULT_OVERVOLT and b.faults[2] == 0
    assert b.supply_v[2] < 230.0  # cable drop under load


def test_ignore_commands_and_energy_reset():
    b = lit_bank(n=2, level=100.0)
    b.ignore_commands[1] = True
    b.command(None, 30.0, T0 + 10)
    assert list(b.level) == [30.0, 100.0] and b.target[1] == 100.0
    b.step(T0 + 3600)
    b.reset_energy(0)
    assert b.energy_wh[0] == 0.0 and b.energy_wh[1] > 0


def test_index_forms_and_time_going_backwards():
    b = lit_bank(n=6, level=0.0)
    b.command(slice(0, 2), 10.0, T0)
    b.command(np.array([2, 3]), np.array([20.0, 30.0]), T0)
    b.command(np.array([False, False, False, False, True, False]), 40.0, T0)
    assert list(b.level) == [10, 10, 20, 30, 40, 0]
    with pytest.raises(ValueError, match="backwards"):
        b.step(T0 - 1)


def test_status_word_bits():
    b = lit_bank(n=2)
    b.inject(1, FAULT_LAMP)
    s = b.status_word()
    assert s[0] == 0x0300 and s[1] == 0x0100 | FAULT_LAMP
