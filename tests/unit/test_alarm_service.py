"""Notification rule matching (priority, area, category, local time of day), the alarm service
in a Runtime (health tags, out-of-service through the runtime, audit), config validation."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from scada import quality as Q
from scada.alarms import model as M
from scada.alarms.notify import in_window, matches
from scada.loader import load_site
from scada.operations import Identity
from scada.runtime import Runtime
from scada.sections.alarms import AlarmDef, NotificationsConfig, RuleConfig
from scada.tags import Batch
from tests.fixtures.alarms import write_site

PARIS = ZoneInfo("Europe/Paris")


def ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=PARIS).timestamp()


def ev(**kw) -> M.AlarmEvent:
    base = dict(seq=1, ts=ts("2026-01-10T20:00"), cond=0, alarm_id="centre/j/x", device="centre/j",
                area="centre", name="x", category="traffic", priority=1, severity=900,
                event="raise", state="UnackActive", active=1, acked=False, shelved=0,
                suppressed=False, oos=False, value=1.0, message="m")
    base.update(kw)
    return M.AlarmEvent(**base)


def test_time_windows_in_local_time_including_midnight_wrap() -> None:
    assert in_window("18:00-07:00", ts("2026-01-10T23:30"), PARIS)
    assert in_window("18:00-07:00", ts("2026-01-10T06:59"), PARIS)
    assert not in_window("18:00-07:00", ts("2026-01-10T07:00"), PARIS)
    assert in_window("08:00-18:00", ts("2026-07-10T08:00"), PARIS)  # summer time too
    assert not in_window("08:00-18:00", ts("2026-07-10T18:00"), PARIS)
    assert in_window(None, 0.0, PARIS)


def test_rule_filters() -> None:
    rule = RuleConfig(priorities=[1, 2], areas=["centre"], categories=["traffic"],
                      hours="18:00-07:00", channels=[])
    assert matches(rule, ev(), PARIS)
    assert not matches(rule, ev(priority=3), PARIS)
    assert not matches(rule, ev(area="north"), PARIS)
    assert not matches(rule, ev(category="lighting"), PARIS)
    assert not matches(rule, ev(ts=ts("2026-01-10T12:00")), PARIS)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="unknown channel 'sms'"):
        NotificationsConfig(channels={}, rules=[{"channels": ["sms"]}])
    with pytest.raises(ValidationError, match="HH:MM-HH:MM"):
        RuleConfig(hours="evening")
    with pytest.raises(ValidationError, match="needs 'to'"):
        NotificationsConfig(channels={"m": {"type": "smtp"}})
    with pytest.raises(ValidationError, match="needs 'reference'"):
        AlarmDef(name="d", kind="deviation", point="level")
    with pytest.raises(ValidationError, match="at least one of hihi"):
        AlarmDef(name="v", kind="limit", point="v")


def test_unknown_point_in_a_template_is_a_config_error(tmp_path) -> None:
    from scada.alarms.engine import build_from_site
    from scada.alarms.journal import Journal
    from scada.clock import SteppedClock
    from scada.errors import ConfigError
    from scada.tags import TagDatabase

    site = load_site(write_site(tmp_path, nlum=2), validate_drivers=False)
    site.config.profiles["lum"].alarms.append(AlarmDef(name="typo", point="lamp_failur"))
    db = TagDatabase(SteppedClock())
    for d in site.all_devices():
        db.add_device(d.path, site.schemas[d.profile_name])
    with pytest.raises(ConfigError, match="no point 'lamp_failur'"):
        build_from_site(site, db, SteppedClock(), Journal(str(tmp_path / "j")))


async def test_service_in_a_runtime_health_oos_and_audit(tmp_path, stepped_clock) -> None:
    site = load_site(write_site(tmp_path, nlum=2), validate_drivers=False)
    rt = Runtime(site, stepped_clock)
    rt.load_services(only=["alarms"])
    svc = rt.services["alarms"]
    db = rt.tagdb
    db.apply(Batch.of([db.index("centre/cab-1/comm_ok")], [1.0], Q.Good, stepped_clock.time()))
    db.apply(Batch.of([db.index("centre/cab-1/lum-01/lamp_failure"),
                       db.index("centre/cab-1/contactor")], [1.0, 1.0], Q.Good,
                      stepped_clock.time()))
    svc.publish_health()
    assert db.read("_system/alarms/active").value == 1
    assert db.read("_system/alarms/alarms").value == svc.engine.n
    ops = rt.operations
    olga, eve = Identity("olga", "operator"), Identity("eve", "engineer")
    out = await ops.set_out_of_service(olga, "north/cab-2", True, "x")
    assert out.status == Q.BadUserAccessDenied
    assert db.read("north/cab-2/power_w").quality != Q.BadOutOfService
    assert (await ops.set_out_of_service(eve, "north/cab-2", True, "rebuilt")).ok
    assert db.read("north/cab-2/power_w").quality == Q.BadOutOfService
    assert (await rt.write("north/cab-2/contactor_cmd", True)) == Q.BadOutOfService
    assert (await ops.set_out_of_service(eve, "north/cab-2", False, "done")).ok
    assert db.read("north/cab-2/power_w").quality != Q.BadOutOfService
    await svc.aclose()
    audit = [json.loads(x) for x in (tmp_path / "state" / "audit.log").read_text().splitlines()]
    assert [(a["action"], a["outcome"], a["user"]) for a in audit] == [
        ("device.out_of_service", "BadUserAccessDenied", "olga"),
        ("device.out_of_service", "Good", "eve"),
        ("device.out_of_service", "Good", "eve"),
    ]
    assert audit[1]["comment"] == "rebuilt"


def test_alarms_added_one_by_one_resolve_their_rules(tmp_path) -> None:
    """The incremental API (add_alarm) resolves templates' suppression rules like site loading."""
    from scada.alarms.engine import AlarmEngine
    from scada.alarms.journal import Journal
    from scada.clock import SteppedClock
    from scada.errors import ConfigError
    from scada.tags import PointDef, PointSchema, TagDatabase

    clock = SteppedClock()
    db = TagDatabase(clock)
    db.add_device("a/cab", PointSchema("cab", (PointDef("comm_ok", "bool"),)))
    db.add_device("a/cab/l1", PointSchema("lum", (PointDef("lamp_failure", "bool"),)))
    e = AlarmEngine(db, clock, Journal(str(tmp_path / "j")))
    e.add_alarm("a/cab", "a", AlarmDef(name="comm_lost", kind="quality", point="comm_ok"))
    e.add_alarm("a/cab/l1", "a", AlarmDef(name="lamp", point="lamp_failure",
                                          suppressed_by=[{"alarm": "comm_lost"}]),
                parent="a/cab")
    e.start()
    db.apply(Batch.of([0, 1], [1.0, 0.0], Q.Good, clock.time()))
    db.mark([0], Q.BadCommunicationError)
    db.apply(Batch.of([1], [1.0], Q.Good, clock.time()))
    assert e.view(e.find("a/cab/l1/lamp")).state == M.SUPPRESSED
    e.close()
    e2 = AlarmEngine(db, clock, Journal(str(tmp_path / "j2")))
    e2.add_alarm("a/cab/l1", "a", AlarmDef(name="lamp", point="lamp_failure",
                                           suppressed_by=[{"alarm": "nope"}]), parent="a/cab")
    with pytest.raises(ConfigError, match="names alarm 'nope' of a/cab"):
        e2.start()
    e2.close()
