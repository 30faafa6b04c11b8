"""Calendars, holidays, priorities, profile planning and config validation (pure, no runtime)."""

from __future__ import annotations

import textwrap
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError

from scada.errors import ConfigError
from scada.loader import load_site
from scada.schedules import calendar
from scada.schedules.planner import (
    Anchors,
    Scope,
    build_plan,
    day_number,
    night_energy_per_w,
    plan_profile,
    power_fraction,
)
from scada.sections.schedules import Profile, Rule, SchedulesConfig, parse_at

PARIS = ZoneInfo("Europe/Paris")


def test_easter_and_french_holidays():
    assert calendar.easter(2026) == date(2026, 4, 5)
    assert calendar.easter(2027) == date(2027, 3, 28)
    assert calendar.easter(2000) == date(2000, 4, 23)
    h = calendar.french_holidays(2026)
    assert len(h) == 11
    assert h[date(2026, 4, 6)] == "Lundi de Pâques"
    assert h[date(2026, 5, 14)] == "Ascension"
    assert h[date(2026, 5, 25)] == "Lundi de Pentecôte"
    assert calendar.holiday_name(date(2026, 7, 13), eve=True) == "eve of Fête nationale"
    assert calendar.holiday_name(date(2026, 7, 13)) is None


def test_parse_at():
    assert parse_at("dusk") == ("dusk", 0.0)
    assert parse_at("midnight-1h") == ("midnight", -3600.0)
    assert parse_at("dawn + 10min") == ("dawn", 600.0)
    assert parse_at("22:00") == ("clock", 79200.0)
    assert parse_at("midnight+1h30min") == ("midnight", 5400.0)
    for bad in ("noon", "25:00", "dusk+", "22h00", 5):
        with pytest.raises(ValueError):
            parse_at(bad)


def test_date_mask_weekdays_holidays_ranges():
    rules = [
        Rule(name="we", profile="p", days=["sat", "sun"]),
        Rule(name="hol", profile="p", holidays="FR"),
        Rule(name="eve", profile="p", holidays="FR", eve=True),
        Rule(name="summer", profile="p", **{"from": date(2026, 7, 1), "to": date(2026, 8, 31)}),
        Rule(name="one", profile="p", dates=[date(2026, 6, 21)]),
    ]
    days = [date(2026, 7, 13), date(2026, 7, 14), date(2026, 6, 21), date(2026, 9, 1)]
    m = calendar.date_mask(rules, days)
    assert m.tolist() == [
        [False, False, True, True, False],  # Monday, eve of 14 July, in the summer range
        [False, True, False, True, False],  # Tuesday 14 July
        [True, False, False, False, True],  # Sunday, festival
        [False, False, False, False, False],
    ]


def test_resolve_priority_then_file_order():
    rules = [
        Rule(name="a", profile="p", priority=10),
        Rule(name="b", profile="p", priority=20, areas=["centre"]),
        Rule(name="c", profile="p", priority=20),  # same priority as b, listed later
        Rule(name="d", profile="p", priority=99, groups=[3]),
    ]
    sm = calendar.scope_mask(rules, ["centre", "centre", "nord"], ["x/1", "x/2", "y/1"], [1, 3, 1])
    dm = calendar.date_mask(rules, [date(2026, 1, 1)])
    won = calendar.resolve(dm, sm, [r.priority for r in rules])
    assert won[:, 0].tolist() == [1, 3, 2]


def test_scope_devices_prefix():
    rules = [Rule(name="a", profile="p", devices=["centre/cab-1"])]
    sm = calendar.scope_mask(
        rules, ["c"] * 3, ["centre/cab-1/l1", "centre/cab-10/l1", "centre/cab-1"], [0, 0, 0]
    )
    assert sm[:, 0].tolist() == [True, False, True]


def _anchors(days, cfg=None):
    cfg = cfg or SchedulesConfig()
    return Anchors.compute(
        47.322, 5.041, "Europe/Paris", np.array([day_number(d) for d in days]), cfg
    )


def test_plan_profile_steps_until_and_clipping():
    prof = Profile(
        steps=[
            {"at": "dusk", "level": 100},
            {"at": "22:00", "level": 70},
            {"at": "midnight-1h", "until": "midnight+4h", "level": 40},
        ],
        switch_off="dawn+10min",
    )
    a = _anchors([date(2026, 12, 21), date(2026, 6, 21)])
    np_ = plan_profile(prof, a)
    loc = [
        [datetime.fromtimestamp(t, PARIS).strftime("%H:%M") for t in row if np.isfinite(t)]
        for row in np_.times
    ]
    assert loc[0] == ["16:51", "22:00", "23:38", "04:38", "08:34"]
    assert np_.levels[0][:5].tolist() == [100, 70, 40, 70, 0]
    # June: dusk 21:40 -> 22:00 still after it; midnight+4h (05:41) is before dawn+10 (05:53)
    assert np_.levels[1][:5].tolist() == [100, 70, 40, 70, 0]
    assert float(np_.level_at(a.dusk[0] - 60, 0)) == 0.0
    assert float(np_.level_at(a.dusk[0] + 60, 0)) == 100.0
    assert float(np_.level_at(a.midnight[0], 0)) == 40.0
    # energy: f(100)=1, f(70)=0.661, f(40)=0.376
    assert power_fraction(np.array([0, 100]))[1] == pytest.approx(1.0)
    e = night_energy_per_w(np_, 0)
    hours = (a.dawn[0] + 600 - a.dusk[0]) / 3600
    assert 0.376 * hours < e < hours


def test_step_before_switch_on_sets_level_at_switch_on():
    # in June at 47 N dusk is 21:40: a "21:00 -> 50 %" step is already past at switch-on
    prof = Profile(steps=[{"at": "dusk", "level": 100}, {"at": "21:00", "level": 50}])
    a = _anchors([date(2026, 6, 21), date(2026, 12, 21)])
    np_ = plan_profile(prof, a)
    assert np_.levels[0][0] == 100.0  # dusk step comes later than 21:00 -> wins at switch-on
    prof2 = Profile(steps=[{"at": "21:00", "level": 50}, {"at": "dusk-2h", "level": 80}])
    np2 = plan_profile(prof2, a)
    assert np2.levels[0][0] == 50.0  # latest breakpoint before switch-on (21:00 > 19:40)


def test_build_plan_classes_default_and_unscheduled():
    cfg = SchedulesConfig(
        profiles={
            "std": {"steps": [{"at": "dusk", "level": 80}]},
            "full": {"steps": [{"at": "dusk", "level": 100}]},
        },
        calendars=[
            {"name": "hol", "profile": "full", "holidays": "FR", "priority": 5, "areas": ["a"]}
        ],
        default_profile="std",
    )
    scope = Scope(["a/1", "a/2", "b/1"], ["a", "a", "b"], [0, 0, 0])
    a = _anchors([date(2026, 7, 13), date(2026, 7, 14)], cfg)
    plan = build_plan(cfg, a, scope)
    assert plan.klass.tolist()[0] == plan.klass.tolist()[1]
    t = a.dusk[1] + 3600
    assert plan.levels(t, 1).tolist() == [100, 100, 80]
    assert plan.levels(a.dusk[0] + 3600, 0).tolist() == [80, 80, 80]


def test_config_errors_name_the_field(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        textwrap.dedent("""
    site: {name: t, latitude: 47, longitude: 5}
    areas: [{id: a}]
    schedules:
      profiles:
        p:
          steps:
            - {at: dusk, level: 100}
            - {at: "noon", level: 50}
            - {at: dawn, levle: 3}
      calendars:
        - {name: c, profile: p, days: [monday]}
    """)
    )
    with pytest.raises(ConfigError) as ei:
        load_site(p)
    text = str(ei.value)
    assert "s.yaml:9" in text and "schedules.profiles.p.steps[1].at" in text
    assert "s.yaml:10" in text and "levle" in text
    assert "s.yaml:12" in text and "days" in text


def test_unknown_profile_and_hysteresis_rejected():
    with pytest.raises(ValidationError, match="unknown schedule profile 'nope'"):
        SchedulesConfig(profiles={}, calendars=[{"name": "c", "profile": "nope"}])
    with pytest.raises(ValidationError, match="hysteresis"):
        SchedulesConfig(photocell={"tag": "a/b/lux", "on_lux": 50, "off_lux": 10})
    with pytest.raises(ValidationError, match="before its start"):
        Rule(name="r", profile="p", **{"from": date(2026, 2, 1), "to": date(2026, 1, 1)})


def test_unknown_profile_reported_at_the_rule_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        textwrap.dedent("""
    site: {name: t, latitude: 47, longitude: 5}
    areas: [{id: a}]
    schedules:
      profiles:
        p: {steps: [{at: dusk, level: 100}]}
      calendars:
        - {name: c, profile: p}
        - {name: d, profile: nope}
      default_profile: also-missing
    """)
    )
    with pytest.raises(ConfigError) as ei:
        load_site(p)
    text = str(ei.value)
    assert "s.yaml:9: schedules.calendars[1].profile: unknown schedule profile 'nope'" in text
    assert "s.yaml:10: schedules.default_profile: unknown schedule profile 'also-missing'" in text
