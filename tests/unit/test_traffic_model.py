"""The junction controller model (pure): fixed-time plans, safety, alarms, commands."""

from __future__ import annotations

import itertools

import pytest

from scada import quality as Q
from simulators.traffic import (
    AMBER_S,
    MODE_DARK,
    MODE_FLASHING,
    MODE_MANUAL,
    MODE_NORMAL,
    SG_AMBER,
    SG_DARK,
    SG_FLASHING_AMBER,
    SG_GREEN,
    SG_RED,
    JunctionModel,
    fixed_time_plans,
)

T0 = 1_767_225_600.0


@pytest.mark.parametrize("groups", [4, 8, 12])
def test_no_conflicting_greens_in_any_second_of_any_plan(groups):
    """Safety: groups of different phases are never green (or amber) at the same time."""
    m = JunctionModel("J", groups, T0)
    for plan in m.plans.values():
        m.plan = plan.number
        for s in range(plan.cycle_s):
            st = m.plan_states(T0 + s)
            moving = {m.phase_of(g + 1) for g, x in enumerate(st) if x in (SG_GREEN, SG_AMBER)}
            assert len(moving) <= 1, (plan.number, s, st)
        # every group gets green once per cycle
        seen = {g for s in range(plan.cycle_s) for g, x in enumerate(m.plan_states(T0 + s)) if x == SG_GREEN}
        assert seen == set(range(groups))


def test_plan_timing_green_amber_red():
    m = JunctionModel("J", 4, T0)
    p = fixed_time_plans(4)[1]
    start, green = p.greens[1]
    sg2 = 2  # phase 1
    assert m.plan_states(T0 + start - 1)[sg2 - 1] == SG_RED
    assert m.plan_states(T0 + start)[sg2 - 1] == SG_GREEN
    assert m.plan_states(T0 + start + green)[sg2 - 1] == SG_AMBER
    assert m.plan_states(T0 + start + green + AMBER_S)[sg2 - 1] == SG_RED


def test_cycle_counter_and_plan_change_at_cycle_end():
    m = JunctionModel("J", 8, T0)
    assert m.select_plan(3) == Q.Good
    m.step(T0 + 89)
    assert (m.plan, m.cycle_counter) == (1, 0)
    m.step(T0 + 90)
    assert (m.plan, m.cycle_counter) == (3, 1)
    # a long jump counts every cycle of the new plan (120 s)
    m.step(T0 + 90 + 120 * 5 + 1)
    assert m.cycle_counter == 6
    assert m.cycle_start == T0 + 90 + 600


def test_commands_refused_with_device_status():
    m = JunctionModel("J", 8, T0)
    assert m.select_plan(9) == Q.BadOutOfRange
    assert m.select_plan(True) == Q.BadTypeMismatch
    assert m.select_plan("2") == Q.BadTypeMismatch
    assert m.set_flashing(1) == Q.BadTypeMismatch
    assert m.plan_request == 1 and not m.forced_flash


def test_conflict_latches_fail_safe_flashing_until_reset_after_repair():
    m = JunctionModel("J", 8, T0)
    m.apply_fault("conflict", True, T0)
    assert m.mode == MODE_FLASHING
    assert m.states(T0) == (SG_FLASHING_AMBER,) * 8
    assert m.reset(T0 + 1) == Q.BadInvalidState  # cause still present
    m.apply_fault("conflict", False, T0 + 2)
    assert m.mode == MODE_FLASHING  # latched
    assert m.reset(T0 + 3) == Q.Good
    assert m.mode == MODE_NORMAL
    assert m.cycle_start == T0 + 3  # restarts from the start of a cycle
    assert m.states(T0 + 3)[0] == SG_GREEN


def test_red_lamp_failure_is_critical_amber_is_not():
    m = JunctionModel("J", 8, T0)
    m.apply_fault("amber_lamp_failure", True, T0, group=3)
    assert m.mode == MODE_NORMAL
    assert m.values(T0)["SignalGroups.SG03.AmberLampFailure"] is True
    m.apply_fault("red_lamp_failure", True, T0, group=5)
    assert m.mode == MODE_FLASHING
    assert m.values(T0)["SignalGroups.SG05.RedLampFailure"] is True
    assert m.reset(T0) == Q.BadInvalidState
    m.apply_fault("red_lamp_failure", False, T0, group=5)
    assert m.reset(T0) == Q.Good and m.mode == MODE_NORMAL
    with pytest.raises(ValueError, match="signal groups 1-8; got group=9"):
        m.apply_fault("red_lamp_failure", True, T0, group=9)


def test_mains_failure_dark_manual_hold_and_alarm_bits():
    m = JunctionModel("J", 4, T0)
    m.apply_fault("mains_failure", True, T0)
    assert m.mode == MODE_DARK and m.states(T0) == (SG_DARK,) * 4
    m.apply_fault("mains_failure", False, T0 + 10)
    assert m.mode == MODE_NORMAL
    held = m.states(T0 + 10)
    m.apply_fault("manual", True, T0 + 10)
    assert m.mode == MODE_MANUAL
    assert all(m.states(T0 + 10 + s) == held for s in range(0, 200, 7))
    m.apply_fault("manual", False, T0 + 20)
    for fault, bit in (("door_open", 3), ("detector_fault", 4), ("coordination_loss", 5)):
        m.apply_fault(fault, True, T0)
        assert m.unit_alarm_status & (1 << bit)
    m.apply_fault("clock_drift", True, T0, seconds=-3.0)
    assert m.values(T0)["Alarms.ClockDrift"] == -3.0
    assert m.unit_alarm_status & (1 << 6)
    with pytest.raises(ValueError, match="unknown fault 'meteor'"):
        m.apply_fault("meteor", True, T0)


def test_values_cover_every_group_with_distinct_names():
    m = JunctionModel("J", 12, T0)
    v = m.values(T0)
    assert len(v) == 14 + 4 * 12
    assert [k for k in v if k.endswith(".State")] == [f"SignalGroups.SG{g:02d}.State" for g in range(1, 13)]
    assert len(set(itertools.chain(v))) == len(v)


def test_coordination_offset_shifts_the_cycle():
    m = JunctionModel("J", 4, T0, offset_s=100.0)  # plan 1: 90 s cycle -> 10 s into a cycle
    assert m.cycle_start == T0 - 10
    assert m.plan_states(T0) == JunctionModel("J", 4, T0 - 10).plan_states(T0)
    m.step(T0 + 80)
    assert m.cycle_counter == 1
