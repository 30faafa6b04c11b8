"""Astronomical clock: sunrise, sunset, civil/nautical twilight and virtual midnight.

Street lighting switches on at dusk and off at dawn, and dims around *virtual midnight* (the
midpoint between dusk and the next dawn, which drifts with the seasons and longitude unlike the
civil clock). This module computes those events for a site, vectorised over many days, without
any I/O and without a dependency beyond numpy and :mod:`zoneinfo`.

Algorithm
---------
The NOAA Global Monitoring Laboratory solar calculator equations ("NOAA_Solar_Calculations_day.xls",
https://gml.noaa.gov/grad/solcalc/calcdetails.html), themselves taken from Jean Meeus,
*Astronomical Algorithms* (2nd ed., 1998): chapter 25 (solar coordinates, low accuracy: geometric
mean longitude, mean anomaly, equation of the centre, apparent longitude, obliquity of the ecliptic
corrected for nutation, declination) and chapter 28 (equation of time). Event times solve
``hour angle(t) = +/- H0(decl(t))`` where ``cos H0 = (cos z - sin(lat) sin(decl)) / (cos(lat)
cos(decl))`` (Meeus ch. 15, "Rising, transit and setting"), iterated three times with the solar
position evaluated at the event itself (the spreadsheet evaluates it once at a fixed time of day;
iterating removes its ~1 min error at high latitude). Accuracy: better than one minute against the
NOAA calculator (and the ``astral`` package, which implements the same equations) up to 65 deg
latitude; tests/unit/test_astro.py checks a whole year for Dijon.

Zenith angles: sunrise/sunset 90.833 deg (34' standard refraction + 16' solar semi-diameter, the
NOAA and US Naval Observatory convention); civil twilight 96 deg; nautical twilight 102 deg.

Polar day and polar night (documented behaviour)
-----------------------------------------------
When the sun does not cross the event's altitude on a date, that event is ``NaN`` for the date
(so ``sunrise``/``sunset`` are NaN at Tromso in June and in December). ``virtual_midnight`` is
always defined: it is the midpoint between the sunset of the date and the sunrise of the next date
when both occur, else the solar midnight (anti-transit) following the date's solar noon, which is
the same thing the midpoint converges to near the polar circles. :func:`burning_hours` treats a
missing switch-on/off event by the physical situation: during polar night the lights burn all the
time (24 h per night), during polar day they do not burn (0 h); see its docstring.

Dates are *local* calendar dates in the site's time zone: the events of date ``d`` are the ones
around the local solar noon of ``d`` (the sunrise before it, the sunset after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

__all__ = [
    "EVENTS",
    "ZENITH",
    "burning_hours",
    "local_noon_utc",
    "solar_elevation",
    "sun_events",
    "to_dates",
]

#: Zenith angle (deg) of each rising/setting pair.
ZENITH = {"sun": 90.833, "civil": 96.0, "nautical": 102.0}

#: The keys of :func:`sun_events`.
EVENTS = (
    "sunrise",
    "sunset",
    "civil_dawn",
    "civil_dusk",
    "nautical_dawn",
    "nautical_dusk",
    "virtual_midnight",
)

_EPOCH_JD = 2440587.5  # Julian day of 1970-01-01T00:00:00Z
_J2000 = 2451545.0
_RAD = np.pi / 180.0
_EPOCH_ORD = date(1970, 1, 1).toordinal()


def _solar(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Declination (deg) and equation of time (minutes) at POSIX times ``t`` (Meeus ch. 25/28)."""
    jc = (t / 86400.0 + _EPOCH_JD - _J2000) / 36525.0
    l0 = np.mod(280.46646 + jc * (36000.76983 + jc * 0.0003032), 360.0)
    m = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    e = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    mr = m * _RAD
    c = (
        np.sin(mr) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + np.sin(2 * mr) * (0.019993 - 0.000101 * jc)
        + np.sin(3 * mr) * 0.000289
    )
    omega = (125.04 - 1934.136 * jc) * _RAD
    app_long = l0 + c - 0.00569 - 0.00478 * np.sin(omega)
    mean_obliq = (
        23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0
    )
    obliq = (mean_obliq + 0.00256 * np.cos(omega)) * _RAD
    decl = np.arcsin(np.sin(obliq) * np.sin(app_long * _RAD)) / _RAD
    y = np.tan(obliq / 2.0) ** 2
    l0r = l0 * _RAD
    eqt = (
        4.0
        / _RAD
        * (
            y * np.sin(2 * l0r)
            - 2 * e * np.sin(mr)
            + 4 * e * y * np.sin(mr) * np.cos(2 * l0r)
            - 0.5 * y * y * np.sin(4 * l0r)
            - 1.25 * e * e * np.sin(2 * mr)
        )
    )
    return decl, eqt


class _SolarTable:
    """Declination and equation of time sampled hourly over a time span, linearly interpolated.

    Both vary by less than 0.02 deg / 0.03 min per hour with a near-zero second derivative, so
    hourly linear interpolation adds well under a second of error while making a year for 2,000
    groups (hundreds of thousands of evaluations) a handful of ``np.interp`` calls.
    """

    def __init__(self, t_min: float, t_max: float):
        self.t0 = np.floor(t_min / 3600.0) * 3600.0 - 2 * 86400.0
        n = int((t_max - self.t0) / 3600.0) + 2 * 24 + 2
        self.grid = self.t0 + 3600.0 * np.arange(n)
        self.decl, self.eqt = _solar(self.grid)

    def __call__(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t, self.grid, self.decl), np.interp(t, self.grid, self.eqt)


def _solar_for(noon_guess: np.ndarray, size: int):
    """Direct evaluation for small problems, the interpolated table for large ones."""
    if size < 4096 or noon_guess.size == 0:
        return _solar
    return _SolarTable(float(noon_guess.min()), float(noon_guess.max()) + 86400.0)


def solar_elevation(lat: float | np.ndarray, lon: float | np.ndarray, t: np.ndarray) -> np.ndarray:
    """Geometric solar elevation (deg, no refraction) at POSIX times ``t``; vectorised.

    ``lat``/``lon`` (deg, east positive) broadcast against ``t``. Used for the photocell
    plausibility check and to tell polar day from polar night.
    """
    t = np.asarray(t, dtype=np.float64)
    decl, eqt = _solar(t)
    minutes = np.mod(t, 86400.0) / 60.0
    true_solar = np.mod(minutes + eqt + 4.0 * np.asarray(lon, dtype=np.float64), 1440.0)
    ha = (true_solar / 4.0 - 180.0) * _RAD
    latr = np.asarray(lat, dtype=np.float64) * _RAD
    dr = decl * _RAD
    cosz = np.sin(latr) * np.sin(dr) + np.cos(latr) * np.cos(dr) * np.cos(ha)
    return 90.0 - np.arccos(np.clip(cosz, -1.0, 1.0)) / _RAD


def to_dates(dates: np.ndarray | Sequence[date]) -> np.ndarray:
    """Local dates as int64 days since 1970-01-01 (accepts datetime64[D], date objects, ints)."""
    arr = np.asarray(dates)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[D]").astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return np.fromiter(
        (d.toordinal() - _EPOCH_ORD for d in arr.ravel()), dtype=np.int64, count=arr.size
    ).reshape(arr.shape)


@lru_cache(maxsize=64)
def _noon_table(tz: str, first: int, last: int) -> np.ndarray:
    zi = ZoneInfo(tz)
    out = np.empty(last - first + 1, dtype=np.float64)
    for i, d in enumerate(range(first, last + 1)):
        local = datetime.combine(date.fromordinal(d + _EPOCH_ORD), time(12), zi)
        out[i] = local.timestamp()
    return out


def local_noon_utc(days: np.ndarray, tz: str) -> np.ndarray:
    """POSIX time of 12:00 local (civil) time on each local date (days since epoch)."""
    days = np.asarray(days, dtype=np.int64)
    if days.size == 0:
        return np.empty(days.shape)
    first, last = int(days.min()), int(days.max())
    table = _noon_table(tz, first, last)
    return table[days - first]


def _transit(lat: np.ndarray, lon: np.ndarray, t_guess: np.ndarray, solar=_solar) -> np.ndarray:
    """POSIX time of the solar noon (upper transit) nearest to ``t_guess``."""
    t = t_guess
    for _ in range(3):
        _, eqt = solar(t)
        noon_min = 720.0 - 4.0 * lon - eqt
        day = np.floor((t_guess - noon_min * 60.0) / 86400.0 + 0.5)
        t = day * 86400.0 + noon_min * 60.0
    return t


def _crossing(
    lat: np.ndarray, lon: np.ndarray, noon: np.ndarray, zenith: float, sign: float, solar=_solar
) -> np.ndarray:
    """Time the sun crosses ``zenith`` before (sign -1) or after (sign +1) ``noon``; NaN if never."""
    day = np.floor(noon / 86400.0)
    latr = lat * _RAD
    cz = np.cos(zenith * _RAD)
    t = noon
    ok = np.ones(np.broadcast(noon, lat).shape, dtype=bool)
    for _ in range(3):
        decl, eqt = solar(t)
        dr = decl * _RAD
        cos_h = (cz - np.sin(latr) * np.sin(dr)) / (np.cos(latr) * np.cos(dr))
        ok = np.abs(cos_h) <= 1.0
        h = np.arccos(np.clip(cos_h, -1.0, 1.0)) / _RAD  # deg
        minutes = 720.0 - 4.0 * lon - eqt + sign * 4.0 * h
        t = day * 86400.0 + minutes * 60.0
        # keep the day that brackets this noon (events near 00:00 UTC at far longitudes)
        t = t + np.round((noon + sign * h * 240.0 - t) / 86400.0) * 86400.0
    return np.where(ok, t, np.nan)


def sun_events(
    lat: float | np.ndarray,
    lon: float | np.ndarray,
    dates: np.ndarray | Sequence[date],
    tz: str,
) -> dict[str, np.ndarray]:
    """Sun events of each local date, POSIX seconds (float64), NaN when the event does not occur.

    Keys: sunrise, sunset, civil_dawn, civil_dusk, nautical_dawn, nautical_dusk, virtual_midnight
    (midpoint between the sunset of the date and the sunrise of the next date; solar midnight
    during polar day/night: see the module docstring). Also ``solar_noon``. ``lat``/``lon`` (deg,
    east positive) may be arrays broadcasting against ``dates`` (e.g. shape (groups, 1) against
    dates of shape (days,)), so a year for 2,000 groups is one call.
    """
    days = to_dates(dates)
    lat_b = np.asarray(lat, dtype=np.float64)
    lon_b = np.asarray(lon, dtype=np.float64)
    if np.any(np.abs(lat_b) > 90.0) or np.any(np.abs(lon_b) > 180.0):
        raise ValueError(
            f"latitude must be within +/-90 and longitude within +/-180 deg, got {lat}, {lon}"
        )
    shape = np.broadcast_shapes(lat_b.shape, lon_b.shape, days.shape)
    pos = np.broadcast_shapes(lat_b.shape, lon_b.shape)
    if days.ndim == 1 and len(pos) >= 2 and pos[-1] == 1 and int(np.prod(pos)) > 1:
        # many groups usually share a handful of positions (one per site): compute each
        # distinct position once and gather
        pairs = np.stack(
            [np.broadcast_to(lat_b, pos).ravel(), np.broadcast_to(lon_b, pos).ravel()], 1
        )
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        if len(uniq) < len(pairs):
            ev = sun_events(uniq[:, :1], uniq[:, 1:], days, tz)
            inv = np.asarray(inv).reshape(-1)
            return {k: v[inv].reshape(shape) for k, v in ev.items()}
    guess = local_noon_utc(days, tz)
    solar = _solar_for(guess, int(np.prod(shape)))
    noon = _transit(lat_b, lon_b, guess, solar)
    noon_next = _transit(lat_b, lon_b, local_noon_utc(days + 1, tz), solar)
    out: dict[str, np.ndarray] = {}
    for prefix, z in (("", "sun"), ("civil_", "civil"), ("nautical_", "nautical")):
        rise = _crossing(lat_b, lon_b, noon, ZENITH[z], -1.0, solar)
        sett = _crossing(lat_b, lon_b, noon, ZENITH[z], +1.0, solar)
        out[prefix + ("dawn" if prefix else "sunrise")] = rise
        out[prefix + ("dusk" if prefix else "sunset")] = sett
    next_rise = _crossing(lat_b, lon_b, noon_next, ZENITH["sun"], -1.0, solar)
    vm = (out["sunset"] + next_rise) / 2.0
    out["virtual_midnight"] = np.where(np.isnan(vm), (noon + noon_next) / 2.0, vm)
    out["solar_noon"] = noon
    return {k: v if v.shape == shape else np.broadcast_to(v, shape).copy() for k, v in out.items()}


_ON = {"sunset": "sunset", "civil_dusk": "civil_dusk", "nautical_dusk": "nautical_dusk"}
_OFF = {"sunrise": "sunrise", "civil_dawn": "civil_dawn", "nautical_dawn": "nautical_dawn"}
_PAIR_ZENITH = {
    "sunset": "sun",
    "sunrise": "sun",
    "civil_dusk": "civil",
    "civil_dawn": "civil",
    "nautical_dusk": "nautical",
    "nautical_dawn": "nautical",
}


def night_bounds(
    lat: float | np.ndarray,
    lon: float | np.ndarray,
    dates: np.ndarray | Sequence[date],
    tz: str,
    on: str = "sunset",
    off: str = "sunrise",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(switch-on, switch-off, virtual midnight) POSIX times of the night starting on each date.

    Always finite. A missing event is replaced by the physical situation: on a polar-night date
    (sun below the event's altitude at solar noon) the night is taken to start at that date's
    solar noon and to end at the next date's solar noon (lights burn around the clock); on a
    polar-day date the switch-on/off collapses to the solar midnight (no burning).
    """
    if on not in _ON or off not in _OFF:
        raise ValueError(
            f"on must be one of {sorted(_ON)} and off one of {sorted(_OFF)}; got {on!r}, {off!r}"
        )
    days = to_dates(dates)
    ev = sun_events(lat, lon, days, tz)
    ev_next = sun_events(lat, lon, days + 1, tz)
    noon, noon_next = ev["solar_noon"], ev_next["solar_noon"]
    midnight = (noon + noon_next) / 2.0
    lat_b = np.asarray(lat, dtype=np.float64)
    lon_b = np.asarray(lon, dtype=np.float64)
    t_on = ev[on].copy()
    t_off = ev_next[off].copy()
    # missing events only (polar latitudes): polar night if the sun stays below the event's
    # altitude at solar noon, else polar day
    shape = t_on.shape
    lat_f = np.broadcast_to(lat_b, shape)
    lon_f = np.broadcast_to(lon_b, shape)
    for t, ref, alt_of in ((t_on, noon, on), (t_off, noon_next, off)):
        miss = np.isnan(t)
        if miss.any():
            alt = 90.0 - ZENITH[_PAIR_ZENITH[alt_of]]
            dark = solar_elevation(lat_f[miss], lon_f[miss], ref[miss]) < alt
            t[miss] = np.where(dark, ref[miss], midnight[miss])
    t_off = np.maximum(t_off, t_on)
    return t_on, t_off, ev["virtual_midnight"]


def burning_hours(
    lat: float | np.ndarray,
    lon: float | np.ndarray,
    dates: np.ndarray | Sequence[date],
    tz: str,
    on: str = "sunset",
    off: str = "sunrise",
    on_offset_s: float = 0.0,
    off_offset_s: float = 0.0,
) -> np.ndarray:
    """Hours the lights burn in the night that STARTS on each local date (dusk of d -> dawn of d+1).

    ``on``: sunset | civil_dusk | nautical_dusk; ``off``: sunrise | civil_dawn | nautical_dawn;
    offsets in seconds are added to the event (``on_offset_s=600``: switch on 10 min after sunset).
    Polar night gives 24 h, polar day 0 h (see :func:`night_bounds`). This is the baseline of
    the IPMVP option-C energy model: legacy lamps burning at full power from dusk to dawn.
    """
    t_on, t_off, _ = night_bounds(lat, lon, dates, tz, on, off)
    return np.clip((t_off + off_offset_s) - (t_on + on_offset_s), 0.0, None) / 3600.0


def night_of(t: float, tz: str) -> date:
    """The local date whose night contains ``t`` (before local noon: the previous date)."""
    local = datetime.fromtimestamp(t, ZoneInfo(tz))
    d = local.date()
    return d - timedelta(days=1) if local.hour < 12 else d
