"""Astronomical clock against an independent reference (``astral``, computed at test time)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from scada import astro

astral = pytest.importorskip("astral")
from astral import LocationInfo  # noqa: E402
from astral.sun import dawn, dusk, sunrise, sunset  # noqa: E402

DIJON = (47.322, 5.041, "Europe/Paris")
TROMSO = (69.65, 18.96, "Europe/Oslo")


def _year(y: int) -> list[date]:
    d0 = date(y, 1, 1)
    return [d0 + timedelta(days=i) for i in range((date(y + 1, 1, 1) - d0).days)]


def test_dijon_whole_year_within_one_minute_of_astral():
    lat, lon, tz = DIJON
    days = _year(2026)
    ev = astro.sun_events(lat, lon, days, tz)
    obs = LocationInfo("Dijon", "France", tz, lat, lon).observer
    zi = ZoneInfo(tz)
    ref = {
        k: []
        for k in ("sunrise", "sunset", "civil_dawn", "civil_dusk", "nautical_dawn", "nautical_dusk")
    }
    for d in days:
        ref["sunrise"].append(sunrise(obs, d, tzinfo=zi).timestamp())
        ref["sunset"].append(sunset(obs, d, tzinfo=zi).timestamp())
        ref["civil_dawn"].append(dawn(obs, d, tzinfo=zi, depression=6).timestamp())
        ref["civil_dusk"].append(dusk(obs, d, tzinfo=zi, depression=6).timestamp())
        ref["nautical_dawn"].append(dawn(obs, d, tzinfo=zi, depression=12).timestamp())
        ref["nautical_dusk"].append(dusk(obs, d, tzinfo=zi, depression=12).timestamp())
    for key, values in ref.items():
        err = np.abs(ev[key] - np.array(values))
        assert err.max() < 60.0, (
            f"{key}: worst error {err.max():.1f} s on {days[int(err.argmax())]}"
        )
    # virtual midnight lies halfway between the sunset and the next sunrise, after 00:00 in winter
    nxt = np.array(ref["sunrise"][1:])
    vm = ev["virtual_midnight"][:-1]
    assert np.abs(vm - (np.array(ref["sunset"][:-1]) + nxt) / 2).max() < 60.0


def test_dijon_known_values_local_time():
    lat, lon, tz = DIJON
    ev = astro.sun_events(lat, lon, [date(2026, 6, 21), date(2026, 12, 21)], tz)
    zi = ZoneInfo(tz)
    sr = [datetime.fromtimestamp(t, zi) for t in ev["sunrise"]]
    ss = [datetime.fromtimestamp(t, zi) for t in ev["sunset"]]
    # summer solstice in Dijon: sunrise ~05:50 CEST, sunset ~21:40; winter ~08:30 / ~16:55 CET
    assert (sr[0].hour, ss[0].hour) == (5, 21)
    assert (sr[1].hour, ss[1].hour) == (8, 16)


def test_tromso_polar_day_and_night_defined():
    lat, lon, tz = TROMSO
    june = [date(2026, 6, d) for d in range(1, 31)]
    dec = [date(2026, 12, d) for d in range(1, 32)]
    ej = astro.sun_events(lat, lon, june, tz)
    ed = astro.sun_events(lat, lon, dec, tz)
    assert np.isnan(ej["sunrise"]).all() and np.isnan(ej["sunset"]).all()
    assert np.isnan(ed["sunrise"][5:]).all() and np.isnan(ed["sunset"][5:]).all()
    # civil twilight still occurs in mid-December at 69.65 N (sun reaches about -3 deg)
    assert np.isfinite(ed["civil_dawn"][20])
    # virtual midnight is always defined (solar midnight)
    assert np.isfinite(ej["virtual_midnight"]).all() and np.isfinite(ed["virtual_midnight"]).all()
    bj = astro.burning_hours(lat, lon, june, tz)
    bd = astro.burning_hours(lat, lon, dec, tz)
    assert (bj == 0).all()
    assert np.allclose(bd[10:25], 24.0, atol=0.05)
    # with civil twilight as switching events, December nights still have a short daylight gap
    bc = astro.burning_hours(lat, lon, dec[20:22], tz, on="civil_dusk", off="civil_dawn")
    assert (bc < 24).all() and (bc > 18).all()


def test_tromso_transition_matches_astral_where_events_exist():
    lat, lon, tz = TROMSO
    obs = LocationInfo("T", "N", tz, lat, lon).observer
    zi = ZoneInfo(tz)
    days = [date(2026, 11, d) for d in range(1, 20)]
    ev = astro.sun_events(lat, lon, days, tz)
    for i, d in enumerate(days):
        try:
            ref = sunset(obs, d, tzinfo=zi).timestamp()
        except ValueError:
            assert np.isnan(ev["sunset"][i])
            continue
        # near the polar circle the sun grazes the horizon: a minute of declination moves
        # the event by minutes, so only check the days that still have a proper sunset
        if np.isfinite(ev["sunset"][i]) and ev["sunset"][i] - ev["sunrise"][i] > 3 * 3600:
            assert abs(ev["sunset"][i] - ref) < 120


def test_burning_hours_dijon_year_and_offsets():
    lat, lon, tz = DIJON
    days = np.arange(np.datetime64("2026-01-01"), np.datetime64("2027-01-01"))
    bh = astro.burning_hours(lat, lon, days, tz)
    assert 4000 < bh.sum() < 4300  # ~4,100 h/year dusk-to-dawn at 47 N
    assert bh[0] > bh[171]  # winter night longer than summer night
    off = astro.burning_hours(lat, lon, days, tz, on_offset_s=600, off_offset_s=-600)
    assert np.allclose(bh - off, 20 / 60)


def test_broadcast_groups_by_days():
    lats = np.array([[43.3], [47.3], [50.6]])
    lons = np.array([[5.4], [5.0], [3.1]])
    days = np.arange(np.datetime64("2026-01-01"), np.datetime64("2026-01-11"))
    ev = astro.sun_events(lats, lons, days, "Europe/Paris")
    assert ev["sunset"].shape == (3, 10)
    single = astro.sun_events(50.6, 3.1, days, "Europe/Paris")
    assert np.allclose(ev["sunset"][2], single["sunset"])


def test_solar_elevation_sign_at_noon_and_midnight():
    lat, lon, tz = DIJON
    ev = astro.sun_events(lat, lon, [date(2026, 3, 20)], tz)
    noon = ev["solar_noon"][0]
    el = astro.solar_elevation(lat, lon, np.array([noon, noon + 43200]))
    assert 40 < el[0] < 45  # 90 - 47.3 + ~0 declination at the equinox
    assert el[1] < -40
    assert datetime.fromtimestamp(noon, UTC).hour in (11, 12)


def test_bad_coordinates_rejected():
    with pytest.raises(ValueError, match="latitude"):
        astro.sun_events(95.0, 0.0, [date(2026, 1, 1)], "UTC")


def test_many_groups_sharing_positions_match_single_site():
    days = np.arange(np.datetime64("2026-01-01"), np.datetime64("2026-03-01"))
    lats = np.array([[47.322], [47.322], [50.6], [47.322]])
    lons = np.array([[5.041], [5.041], [3.1], [5.041]])
    ev = astro.sun_events(lats, lons, days, "Europe/Paris")
    one = astro.sun_events(47.322, 5.041, days, "Europe/Paris")
    for k in astro.EVENTS:
        assert np.array_equal(ev[k][3], one[k])
    ev[k][0, 0] = 0.0  # results are writable arrays, not shared views
    assert ev[k][1, 0] != 0.0
    bh = astro.burning_hours(lats, lons, days, "Europe/Paris")
    assert bh.shape == (4, days.size)
    assert np.allclose(bh[0], astro.burning_hours(47.322, 5.041, days, "Europe/Paris"))
