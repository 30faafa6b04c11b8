"""ISA-18.2 / OPC UA Part 9 state transitions of the alarm engine, driven by real tag changes
(TagDatabase.apply / mark) on a stepped clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from scada import quality as Q
from scada.alarms import model as M
from scada.alarms.journal import journal_files
from tests.fixtures.alarms import AlarmEnv, make_env

CAB = "centre/cab-1"
LUM = "centre/cab-1/lum-01"


@contextlib.asynccontextmanager
async def running(env: AlarmEnv):
    """The engine's timer task (delays, stale, shelve expiry) for the duration of a test."""
    task = asyncio.create_task(env.engine.run())
    await env.clock.advance(0)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def healthy(env: AlarmEnv) -> None:
    env.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1, f"{CAB}/voltage_l1": 230,
             f"{CAB}/door_open": 0, f"{CAB}/power_w": 1000})
    env.set({f"{LUM}/level": 100, f"{LUM}/level_cmd": 100, f"{LUM}/lamp_failure": 0,
             f"{LUM}/power_w": 50})


def events_of(env: AlarmEnv, alarm_id: str) -> list[tuple[str, str]]:
    return [(e.event, e.state) for e in env.events if e.alarm_id == alarm_id]


def test_raise_ack_clear_normal(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    aid = f"{LUM}/lamp_failure"
    assert env.state(aid) == M.NORMAL
    env.set({f"{LUM}/lamp_failure": 1})
    assert env.state(aid) == M.UNACK_ACTIVE
    assert [a.alarm_id for a in env.engine.active()] == [aid]
    env.engine.acknowledge(aid, user="olga", comment="crew sent")
    assert env.state(aid) == M.ACK_ACTIVE
    env.set({f"{LUM}/lamp_failure": 0})
    assert env.state(aid) == M.NORMAL
    assert env.engine.active() == []
    assert events_of(env, aid) == [("raise", M.UNACK_ACTIVE), ("ack", M.ACK_ACTIVE),
                                   ("clear", M.NORMAL)]
    ack = next(e for e in env.journal() if e["event"] == "ack")
    assert (ack["user"], ack["comment"], ack["alarm_id"]) == ("olga", "crew sent", aid)


def test_return_to_normal_unacknowledged_is_latched_until_ack(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    aid = f"{LUM}/lamp_failure"
    env.set({f"{LUM}/lamp_failure": 1})
    env.set({f"{LUM}/lamp_failure": 0})
    assert env.state(aid) == M.UNACK_RTN
    assert [a.alarm_id for a in env.engine.active()] == [aid]  # still a red dot
    env.engine.acknowledge(aid, user="olga")
    assert env.state(aid) == M.NORMAL
    with pytest.raises(M.InvalidAlarmState):
        env.engine.acknowledge(aid, user="olga")


def test_unknown_alarm_is_refused(alarm_env: AlarmEnv) -> None:
    """Role checks are the operator API's now (tests/unit/test_operations.py); the engine
    still refuses what does not exist."""
    env = alarm_env
    healthy(env)
    with pytest.raises(M.UnknownAlarm):
        env.engine.acknowledge("centre/nope/x", user="olga")


async def test_on_delay_and_off_delay(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    aid = f"{CAB}/door_open"
    async with running(env):
        healthy(env)
        # a door open for less than the 5 s on-delay never raises
        env.set({f"{CAB}/door_open": 1})
        await env.clock.advance(4)
        env.set({f"{CAB}/door_open": 0})
        await env.clock.advance(10)
        assert events_of(env, aid) == []
        # held for 5 s: raises exactly at the deadline
        env.set({f"{CAB}/door_open": 1})
        await env.clock.advance(4.9)
        assert env.state(aid) == M.NORMAL
        await env.clock.advance(0.1)
        assert env.state(aid) == M.UNACK_ACTIVE
        # off-delay 3 s: a short close does not clear
        env.set({f"{CAB}/door_open": 0})
        await env.clock.advance(2)
        env.set({f"{CAB}/door_open": 1})
        await env.clock.advance(10)
        assert env.state(aid) == M.UNACK_ACTIVE
        env.set({f"{CAB}/door_open": 0})
        await env.clock.advance(2.9)
        assert env.state(aid) == M.UNACK_ACTIVE
        await env.clock.advance(0.1)
        assert env.state(aid) == M.UNACK_RTN
    raise_ev = [e for e in env.journal() if e["alarm_id"] == aid and e["event"] == "raise"]
    assert len(raise_ev) == 1


def test_limit_levels_and_deadband(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    aid = f"{CAB}/voltage"
    v = f"{CAB}/voltage_l1"
    env.set({v: 246})
    assert env.engine.view(env.engine.find(aid)).active == 1
    env.engine.acknowledge(aid, user="o")
    env.set({v: 254})  # High -> HighHigh: needs a new acknowledgement
    view = env.engine.view(env.engine.find(aid))
    assert (view.active, view.state) == (2, M.UNACK_ACTIVE)
    assert "HighHigh voltage 254 V" in view.message
    env.engine.acknowledge(aid, user="o")
    env.set({v: 252})  # inside HiHi but within the 2 V deadband: stays HighHigh
    assert env.engine.view(env.engine.find(aid)).active == 2
    env.set({v: 250})  # back to High: no new ack needed
    assert env.state(aid) == M.ACK_ACTIVE
    env.set({v: 244})  # below 245 but within deadband (243): stays High
    assert env.engine.view(env.engine.find(aid)).active == 1
    env.set({v: 242})
    assert env.state(aid) == M.NORMAL
    env.set({v: 195})
    assert env.engine.view(env.engine.find(aid)).active == -2
    env.set({v: 197})  # LowLow until 198
    assert env.engine.view(env.engine.find(aid)).active == -2
    env.set({v: 200})
    assert env.engine.view(env.engine.find(aid)).active == -1
    evs = [e.event for e in env.events if e.alarm_id == aid]
    assert evs == ["raise", "ack", "level", "ack", "level", "clear", "raise", "level"]


async def test_timed_shelve_expires_and_one_shot_ends_on_return_to_normal(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    aid = f"{LUM}/lamp_failure"
    async with running(env):
        healthy(env)
        env.set({f"{LUM}/lamp_failure": 1})
        env.engine.shelve(aid, user="eve", comment="lamp ordered",
                          duration=3600)
        assert env.state(aid) == M.SHELVED
        assert env.engine.active() == []
        assert env.engine.counts()["shelved"] == 1
        await env.clock.advance(3599)
        assert env.state(aid) == M.SHELVED
        await env.clock.advance(1)
        assert env.state(aid) == M.UNACK_ACTIVE
        unshelve = [e for e in env.events if e.alarm_id == aid and e.event == "unshelve"]
        assert unshelve[0].comment == "timed shelve expired"
        # one-shot: lasts until the alarm returns to normal
        env.engine.shelve(aid, user="eve", comment="until repaired")
        await env.clock.advance(7200)
        assert env.state(aid) == M.SHELVED
        env.set({f"{LUM}/lamp_failure": 0})
        assert env.engine.view(env.engine.find(aid)).shelved == M.UNSHELVED
        assert env.state(aid) == M.UNACK_RTN
        with pytest.raises(M.InvalidAlarmState):
            env.engine.unshelve(aid, user="eve")
        with pytest.raises(ValueError, match="reason"):
            env.engine.shelve(aid, user="eve", comment="")


def test_out_of_service_hides_device_alarms_and_calls_runtime(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    env.set({f"{CAB}/voltage_l1": 250})
    assert len(env.engine.active()) == 1
    evs = env.engine.set_out_of_service(CAB, True, user="eve",
                                        comment="cabinet replaced")
    assert env.oos_calls == [(CAB, True)]
    assert {e.event for e in evs} == {"out_of_service"}
    assert env.state(f"{CAB}/voltage") == M.OUT_OF_SERVICE_STATE
    assert env.engine.active() == []
    # what the runtime does: its tags read BadOutOfService; no comm-lost alarm from that
    env.mark(CAB, Q.BadOutOfService)
    assert env.engine.view(env.engine.find(f"{CAB}/comm_lost")).active == 0
    env.engine.set_out_of_service(CAB, False, user="eve", comment="done")
    assert env.oos_calls[-1] == (CAB, False)
    assert env.state(f"{CAB}/voltage") == M.UNACK_ACTIVE
    dev_lines = [e for e in env.journal() if e["name"] == "" and e["device"] == CAB]
    assert [d["event"] for d in dev_lines] == ["out_of_service", "in_service"]


def test_cabinet_comm_loss_one_red_dot_not_64(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    # the driver marks the luminaires first, then the cabinet (worst order)
    for n in range(1, 65):
        env.mark(f"{CAB}/lum-{n:02d}", Q.BadCommunicationError)
    env.mark(CAB, Q.BadCommunicationError)
    active = env.engine.active()
    assert [a.alarm_id for a in active] == [f"{CAB}/comm_lost"]
    lum_comm = [env.engine.view(env.engine.find(f"{CAB}/lum-{n:02d}/comm_lost"))
                for n in range(1, 65)]
    assert all(v.active and v.suppressed and v.state == M.SUPPRESSED for v in lum_comm)
    assert env.engine.counts()["suppressed"] == 64
    assert env.engine.counts()["active"] == 1
    # back: the cabinet clears, luminaires clear and are unsuppressed
    env.set({f"{CAB}/comm_ok": 1})
    for n in range(1, 65):
        env.set({f"{CAB}/lum-{n:02d}/level": 100})
    assert env.engine.counts()["suppressed"] == 0
    assert [a.alarm_id for a in env.engine.active()] == [f"{CAB}/comm_lost"]  # Unack-RTN


async def test_lamp_failure_suppressed_while_contactor_off(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    aid = f"{LUM}/lamp_failure"
    async with running(env):
        healthy(env)
        env.set({f"{CAB}/contactor": 0})
        env.set({f"{LUM}/lamp_failure": 1})
        assert env.state(aid) == M.SUPPRESSED
        assert env.engine.active() == []
        # switched on; the lamp's next poll (5 s later) still reports the failure: red dot
        # once the unsuppress delay (10 s) is over, not before
        env.set({f"{CAB}/contactor": 1})
        await env.clock.advance(5)
        env.set({f"{LUM}/lamp_failure": 1})
        await env.clock.advance(4)
        assert env.state(aid) == M.SUPPRESSED
        await env.clock.advance(1)
        assert env.state(aid) == M.UNACK_ACTIVE
        # suppressed silently while Normal, raised silently while suppressed (no journal line,
        # no event); annunciated when the suppression ends
        assert [(e.event, e.state) for e in env.events if e.alarm_id == aid] == [
            ("unsuppress", M.UNACK_ACTIVE)]
        assert [e["event"] for e in env.journal() if e["alarm_id"] == aid] == ["unsuppress"]
        # a lamp that recovers within the delay never shows
        lum2 = "centre/cab-1/lum-02/lamp_failure"
        env.set({f"{CAB}/contactor": 0})
        env.set({lum2: 1})
        env.set({f"{CAB}/contactor": 1})
        await env.clock.advance(3)
        env.set({lum2: 0, aid: 1})  # the next poll: lamp 2 recovered, lamp 1 still failed
        await env.clock.advance(20)
        assert env.state(lum2) == M.NORMAL
        assert [a.alarm_id for a in env.engine.active()] == [aid]
        assert not [e for e in env.events if e.alarm_id == lum2]


async def test_a_lamp_off_by_day_makes_no_event(alarm_env: AlarmEnv) -> None:
    """Issue 23: the contactor opens at dawn; the dark luminaire's "dimming not followed"
    (level 0, command 100) goes active behind its suppression after its on-delay, stays so all
    day, and clears when the luminaire reports its light at dusk: not one journal line nor
    event, whatever the number of polls in between."""
    env = alarm_env
    aid = f"{LUM}/dimming_not_followed"
    async with running(env):
        healthy(env)
        env.set({f"{CAB}/contactor": 0})                   # dawn
        for _ in range(60):                                # a poll a minute for an hour
            env.set({f"{LUM}/level": 0, f"{LUM}/level_cmd": 100, f"{LUM}/lamp_failure": 0})
            await env.clock.advance(60)
        v = env.engine.view(env.engine.find(aid))
        assert v.active and v.suppressed and v.state == M.SUPPRESSED
        assert env.engine.counts()["suppressed"] == 1
        assert not [a for a in env.engine.active() if a.device == LUM]
        env.set({f"{CAB}/contactor": 1})                   # dusk
        await env.clock.advance(30)                        # the luminaire's next poll: lit
        env.set({f"{LUM}/level": 100, f"{LUM}/level_cmd": 100})
        await env.clock.advance(60)
        assert env.state(aid) == M.NORMAL
        assert env.engine.counts()["suppressed"] == 0
        assert not [a for a in env.engine.active() if a.device == LUM]
        assert not [e for e in env.events if e.device == LUM]
        assert not [e for e in env.journal() if e["device"] == LUM]
        assert env.engine.stats["hidden_transitions"] == 2


async def test_unsuppress_waits_for_the_devices_report(alarm_env: AlarmEnv) -> None:
    """A still-active alarm whose suppression cause cleared is annunciated once its own point
    has reported again (and the unsuppress delay is over), or after unsuppress_max_wait
    (5 min) if the device stays silent; never while the old value is all there is."""
    env = alarm_env
    lamps = [f"{CAB}/lum-{n:02d}" for n in (1, 2, 3)]
    async with running(env):
        healthy(env)
        env.set({f"{CAB}/contactor": 0})
        env.set({f"{p}/lamp_failure": 1 for p in lamps})   # all three report a failure by day
        env.set({f"{CAB}/contactor": 1})                   # dusk
        await env.clock.advance(30)
        env.set({f"{lamps[0]}/lamp_failure": 1, f"{lamps[1]}/lamp_failure": 0})  # polled
        await env.clock.advance(1)
        assert env.state(f"{lamps[0]}/lamp_failure") == M.UNACK_ACTIVE  # confirmed: red dot
        assert env.state(f"{lamps[1]}/lamp_failure") == M.NORMAL        # cleared silently
        assert env.state(f"{lamps[2]}/lamp_failure") == M.SUPPRESSED    # not heard from yet
        await env.clock.advance(300 - 31 - 1)
        assert env.state(f"{lamps[2]}/lamp_failure") == M.SUPPRESSED
        await env.clock.advance(1)
        assert env.state(f"{lamps[2]}/lamp_failure") == M.UNACK_ACTIVE  # silent 5 min: shown
        assert [(e.alarm_id, e.event) for e in env.events] == [
            (f"{lamps[0]}/lamp_failure", "unsuppress"), (f"{lamps[2]}/lamp_failure", "unsuppress")]


def test_commanded_flashing_is_not_an_alarm(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    aid = "north/j-1/flashing"
    env.set({"north/j-1/flash_cmd": 1, "north/j-1/flashing": 0})
    env.set({"north/j-1/flashing": 1})  # flashing because the operator asked for it
    assert env.state(aid) == M.SUPPRESSED
    env.set({"north/j-1/flashing": 0})
    env.set({"north/j-1/flash_cmd": 0})
    assert env.state(aid) == M.NORMAL
    env.set({"north/j-1/flashing": 1})  # fail-safe flashing nobody commanded: red dot
    assert env.state(aid) == M.UNACK_ACTIVE


def test_site_rule_of_self_selects_alarms(tmp_path, stepped_clock) -> None:
    """A site-wide `of: self` rule (the default hides `flashing` while `force_flash_cmd`)
    hides only the named alarms of the device."""
    env = make_env(tmp_path, stepped_clock, alarms_extra=(
        "suppressed_by:\n"
        "  - {of: self, point: force_flash_cmd, equals: true, alarms: [flashing2]}\n"))
    env.set({"north/j-1/force_flash_cmd": 1, "north/j-1/flashing": 0, "north/j-1/conflict": 0})
    env.set({"north/j-1/flashing": 1, "north/j-1/conflict": 1})
    assert env.state("north/j-1/flashing2") == M.SUPPRESSED
    assert env.state("north/j-1/conflict") == M.UNACK_ACTIVE  # not selected: still a red dot
    env.engine.close()


def test_parent_faults_hide_all_child_alarms_by_site_default(alarm_env: AlarmEnv) -> None:
    """alarms.suppressed_by (default: the parent's comm_lost, mains_failure,
    breaker_tripped, offline; contactor off for the lighting faults) needs no rule in the
    luminaire's templates."""
    env = alarm_env
    healthy(env)
    aid = f"{LUM}/dimming_not_followed"  # its template has no suppressed_by
    env.set({f"{CAB}/comm_ok": 0.0}, quality=0x80050000)  # the cabinet is lost...
    env.set({f"{LUM}/level_cmd": 30})  # ...and a stale command mismatch appears
    assert env.engine.view(env.engine.find(aid)).suppressed


def test_children_suppression_can_be_turned_off(tmp_path, stepped_clock) -> None:
    env = make_env(tmp_path, stepped_clock, alarms_extra="suppressed_by: []\n")
    healthy(env)
    env.set({f"{CAB}/comm_ok": 0.0}, quality=0x80050000)
    env.set({f"{LUM}/level_cmd": 30})
    assert not env.engine.view(env.engine.find(f"{LUM}/dimming_not_followed")).suppressed
    env.engine.close()


async def test_deviation_dimming_not_followed(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    aid = f"{LUM}/dimming_not_followed"
    async with running(env):
        healthy(env)
        env.set({f"{LUM}/level_cmd": 50})  # commanded 50 %, still at 100 %
        await env.clock.advance(59)
        assert env.state(aid) == M.NORMAL
        await env.clock.advance(1)
        assert env.state(aid) == M.UNACK_ACTIVE
        env.set({f"{LUM}/level": 59})  # 9 % off: inside tolerance but not deadband (8 %)
        assert env.engine.view(env.engine.find(aid)).active == 1
        env.set({f"{LUM}/level": 55})
        assert env.state(aid) == M.UNACK_RTN


async def test_stale_when_no_sample_for_timeout(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    aid = f"{CAB}/meter_stale"
    async with running(env):
        healthy(env)
        await env.clock.advance(599)
        assert env.state(aid) == M.NORMAL
        await env.clock.advance(1)
        assert env.state(aid) == M.UNACK_ACTIVE
        # the same value again: no change is published, but last_seen moves: clears
        env.set({f"{CAB}/power_w": 1000})
        await env.clock.advance(200)
        assert env.state(aid) == M.UNACK_RTN


async def test_rate_of_change(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    aid = f"{LUM}/power_jump"

    async def step(dt: float, v: float) -> None:
        await env.clock.advance(dt)
        env.set({f"{LUM}/power_w": v})

    await step(10, 60)   # 1 W/s
    assert env.state(aid) == M.NORMAL
    await step(1, 80)    # 20 W/s
    assert env.state(aid) == M.UNACK_ACTIVE
    await step(10, 81)
    assert env.state(aid) == M.UNACK_RTN


def test_bad_quality_holds_the_last_decision(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    aid = f"{LUM}/lamp_failure"
    env.set({f"{LUM}/lamp_failure": 1})
    env.set({f"{LUM}/lamp_failure": 0}, quality=Q.BadCommunicationError)
    assert env.engine.view(env.engine.find(aid)).active == 1  # not cleared by a bad value


def test_chattering_flags_and_auto_shelves(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    healthy(env)
    aid = f"{LUM}/lamp_failure"
    for _ in range(3):
        env.set({f"{LUM}/lamp_failure": 1})
        env.set({f"{LUM}/lamp_failure": 0})
    evs = [e.event for e in env.events if e.alarm_id == aid]
    assert evs.count("chatter") == 1 and "shelve" in evs
    assert env.engine.counts()["chattering"] == 1
    assert env.state(aid) == M.SHELVED


def test_external_condition_from_another_service(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    env.engine.set_condition(LUM, "schedule_not_followed", True, priority=2,
                             category="lighting", message="level 100 % but 50 % scheduled")
    aid = f"{LUM}/schedule_not_followed"
    v = env.engine.view(env.engine.find(aid))
    assert (v.state, v.priority, v.category, v.message) == (
        M.UNACK_ACTIVE, 2, "lighting", "level 100 % but 50 % scheduled")
    env.engine.set_condition(LUM, "schedule_not_followed", True)  # idempotent
    env.engine.set_condition(LUM, "schedule_not_followed", False)
    assert env.state(aid) == M.UNACK_RTN
    assert [e.event for e in env.events if e.alarm_id == aid] == ["raise", "clear"]
    env.engine.set_condition(LUM, "never_raised", False)
    assert f"{LUM}/never_raised" not in env.engine.by_id


async def test_external_condition_merges_into_a_tag_based_alarm(alarm_env: AlarmEnv) -> None:
    """The schedule engine reports "dimming not followed" for a luminaire whose profile has a
    deviation alarm of that name: one alarm, active while either source says so."""
    env = alarm_env
    aid = f"{LUM}/dimming_not_followed"
    async with running(env):
        healthy(env)  # level == level_cmd: the tags say normal
        env.engine.set_condition(LUM, "dimming_not_followed", True, message="group step missed")
        # at once: the schedule engine's fade + verify_after timed it; the profile's on_delay
        # (60 s) is the tag condition's only
        assert env.state(aid) == M.UNACK_ACTIVE
        env.set({f"{LUM}/level": 99})  # a tag change does not clear what the schedule reports
        assert env.state(aid) == M.UNACK_ACTIVE
        env.engine.set_condition(LUM, "dimming_not_followed", False)
        assert env.state(aid) == M.UNACK_RTN
        assert f"{LUM}/dimming_not_followed" in env.engine.by_id
        assert [e.event for e in env.events if e.alarm_id == aid] == ["raise", "clear"]
        # the tag condition pending its on_delay does not hold back the external one
        env.set({f"{LUM}/level": 40})  # deviates from level_cmd: 60 s on_delay starts
        await env.clock.advance(20)
        assert env.state(aid) == M.UNACK_RTN  # not active yet: the tags' on_delay runs
        env.engine.set_condition(LUM, "dimming_not_followed", True)
        assert env.state(aid) == M.UNACK_ACTIVE


def test_restart_restores_states_exactly_without_duplicates(tmp_path, stepped_clock) -> None:
    env = make_env(tmp_path, stepped_clock)
    healthy(env)
    e = env.engine
    env.set({f"{LUM}/lamp_failure": 1})                     # UnackActive
    env.set({f"{CAB}/voltage_l1": 250})                     # AckActive
    e.acknowledge(f"{CAB}/voltage", user="o")
    env.set({"centre/cab-1/lum-02/lamp_failure": 1})        # UnackRTN
    env.set({"centre/cab-1/lum-02/lamp_failure": 0})
    env.set({"centre/cab-1/lum-03/lamp_failure": 1})        # shelved
    e.shelve("centre/cab-1/lum-03/lamp_failure", user="eve", comment="c",
             duration=7200)
    e.set_out_of_service("north/cab-2", True, user="eve", comment="works")
    e.set_condition(LUM, "schedule_not_followed", True, priority=2)
    before = {a: e.view(c) for a, c in e.by_id.items()}
    seq = e.seq
    e.close()

    env2 = make_env(tmp_path, stepped_clock)
    e2 = env2.engine
    assert e2.seq == seq
    for aid, v in before.items():
        w = e2.view(e2.find(aid))
        assert (w.state, w.active, w.acked, w.shelved, w.shelve_until, w.oos) == (
            v.state, v.active, v.acked, v.shelved, v.shelve_until, v.oos), aid
    assert env2.oos_calls == [("north/cab-2", True)]
    # data comes back with the same faults: nothing raised twice
    env2.set({f"{CAB}/comm_ok": 1, f"{CAB}/contactor": 1, f"{CAB}/voltage_l1": 250,
              f"{CAB}/door_open": 0, f"{LUM}/lamp_failure": 1,
              "centre/cab-1/lum-02/lamp_failure": 0, "centre/cab-1/lum-03/lamp_failure": 1})
    assert [x for x in env2.events if x.event == "raise"] == []
    assert env2.state(f"{CAB}/voltage") == M.ACK_ACTIVE
    e2.close()


def test_snapshot_at_rotation_bounds_the_replay(tmp_path, stepped_clock) -> None:
    """Old journal files can be archived: the snapshot written at each rotation restores
    what they held."""
    import os

    from scada.alarms.journal import SNAPSHOT, journal_files

    env = make_env(tmp_path, stepped_clock, alarms_extra="rotate_mb: 0.004\n")
    healthy(env)
    e = env.engine
    env.set({f"{LUM}/lamp_failure": 1})
    e.shelve(f"{LUM}/lamp_failure", user="eve", comment="ordered", duration=600)
    e.set_out_of_service("north/cab-2", True, user="eve", comment="works")
    e.set_condition(CAB, "schedule_missed", True, priority=2)
    for k in range(30):  # churn on other alarms: several rotations
        env.set({"centre/cab-1/lum-02/lamp_failure": k % 2})
    before = {a: e.view(c) for a, c in e.by_id.items()}
    e.close()
    d = e.journal.directory
    files = journal_files(d)
    assert len(files) > 3 and os.path.exists(os.path.join(d, SNAPSHOT))
    for f in files[:-1]:  # archive everything but the current file
        os.remove(f)
    env2 = make_env(tmp_path, stepped_clock, alarms_extra="rotate_mb: 0.004\n")
    e2 = env2.engine
    for aid, v in before.items():
        w = e2.view(e2.find(aid))
        assert (w.state, w.active, w.acked, w.shelved, w.shelve_until, w.oos) == (
            v.state, v.active, v.acked, v.shelved, v.shelve_until, v.oos), aid
    assert e2.find(f"{CAB}/schedule_missed") >= 0
    e2.close()


def test_vectorised_evaluation_matches_reference_loop(alarm_env: AlarmEnv) -> None:
    env = alarm_env
    t = env.engine.cond
    rng = np.random.default_rng(7)
    rows = np.arange(t.n, dtype=np.int64)
    tagdb = env.tagdb
    for _ in range(20):
        n = len(tagdb)
        value = rng.choice([0.0, 1.0, 50.0, 100.0, 195.0, 200.0, 230.0, 250.0, 260.0], size=n)
        quality = rng.choice(np.array([Q.Good, Q.BadCommunicationError, Q.BadOutOfService,
                                       Q.BadWaitingForInitialData], dtype=np.uint32), size=n)
        rt_v, rt_t = t.rate_v.copy(), t.rate_t.copy()
        fast = t.evaluate(rows, value, quality, 1000.0)
        t.rate_v[:], t.rate_t[:] = rt_v, rt_t
        slow = t.evaluate_loop(rows, value, quality, 1000.0)
        np.testing.assert_array_equal(fast, slow)
        t.raw[rows] = fast


def test_journal_lines_match_announced_events_in_mixed_floods(alarm_env: AlarmEnv) -> None:
    """Bulk raise/clear lines are formatted separately from the events: they must agree."""
    env = alarm_env
    healthy(env)
    lamps = {f"{CAB}/lum-{n:02d}/lamp_failure": 1 for n in range(1, 65)}
    env.engine.shelve(f"{CAB}/lum-05/lamp_failure", user="e", comment="x",
                      duration=3600)
    env.engine.shelve(f"{CAB}/lum-06/lamp_failure", user="e", comment="y")
    env.set({f"{CAB}/contactor": 0})
    env.set(dict.fromkeys(list(lamps)[:10], 1))          # suppressed raises
    env.set({f"{CAB}/contactor": 1})
    env.set(lamps)                                         # the rest: unhidden raises
    env.engine.acknowledge(f"{CAB}/lum-20/lamp_failure", user="o")
    env.set(dict.fromkeys(lamps, 0))                       # mixed clears
    keys = ("seq", "event", "state", "active", "acked", "shelved", "shelve_until", "suppressed",
            "oos", "user", "comment", "value")
    journal = {e["seq"]: tuple(e[k] for k in keys) for e in env.journal()}
    # unhidden flood lines leave the default members out (the reader restores them)
    raw = [json.loads(x) for f in journal_files(env.engine.journal.directory)
           for x in Path(f).read_text(encoding="utf-8").splitlines()]
    assert any("oos" not in e and e["event"] == "raise" for e in raw)
    assert all("oos" in e for e in raw if e["state"] == M.SUPPRESSED)
    for ev in env.events:
        d = ev.as_dict()
        assert journal[ev.seq] == tuple(d[k] for k in keys), ev
    assert len(journal) == len(env.events)
    assert {e.event for e in env.events} >= {"raise", "clear", "unshelve", "ack"}
    # a raise behind designed suppression is not journaled nor announced; shelved ones are
    assert not any(e.event == "raise" and e.state == M.SUPPRESSED for e in env.events)
    assert any(e.event == "raise" and e.state == M.SHELVED for e in env.events)
