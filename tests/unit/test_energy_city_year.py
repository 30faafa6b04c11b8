"""A year of a small simulated city (500 luminaires behind 10 cabinets) through the tag database,
the recorder, the spool and the embedded store, then the KPI - checked against the luminaire
model's own energy integration (the ground truth) and 170 W x astronomical burning hours.

The LED model (simulators/luminaire.py) is switched on at sunset at 100 %, dimmed to 50 % at
virtual midnight, switched off at sunrise; readings every hour, as the Modbus poll group
``energy`` would deliver them. One luminaire's counter is reset in June (a driver swap).
"""

from __future__ import annotations

import asyncio
from datetime import date

import numpy as np

from historian.energy import compute, inventory_from_site
from historian.service import HistorianService
from scada import astro
from scada import quality as Q
from scada.clock import SteppedClock
from scada.runtime import Runtime
from scada.tags import Batch
from simulators.luminaire import LuminaireBank
from tests.fixtures.historian import make_site

LAT, LON, TZ = 47.322, 5.0415, "Europe/Paris"


async def test_city_year_through_recorder_to_kpi(tmp_path):
    site = make_site(tmp_path, cabinets=10, lamps=50, historian="  snapshot: 0\n  options: {fsync: false}")
    days = astro.to_dates([date(2024, 12, 31)])[0] + np.arange(367)  # carry night + 2025 + 1
    noon = astro.local_noon_utc(days, TZ)
    on, off, vm = astro.night_bounds(LAT, LON, days, TZ)
    clock = SteppedClock(noon[0])
    rt = Runtime(site, clock)
    h = HistorianService(rt)
    lums = [d for d in site.all_devices() if d.kind == "luminaire"]
    cabs = [d for d in site.all_devices() if d.kind == "cabinet"]
    n = len(lums)
    e_idx = np.array([rt.tagdb.index(f"{d.path}/energy_wh") for d in lums])
    p_idx = np.array([rt.tagdb.index(f"{d.path}/power_w") for d in lums])
    c_idx = np.array([rt.tagdb.index(f"{d.path}/energy_wh") for d in cabs])
    cab_of = np.array([cabs.index(next(c for c in cabs if c.path == d.parent)) for d in lums])
    bank = LuminaireBank(n, 40.0, start_time=noon[0])
    bank.operating_h[:] = 0.0
    reset_at = astro.local_noon_utc(astro.to_dates([date(2025, 6, 1)]), TZ)[0]
    events = [(t, "read") for t in np.arange(noon[0] + 3600, noon[-1] + 1, 3600.0)]
    events += [(t, "on") for t in on[:-1]] + [(t, "dim") for t in vm[:-1]] + [(t, "off") for t in off[:-1]]
    events.append((reset_at, "reset"))
    events.append((noon[1], "start"))
    events.sort()
    lost_at_reset = 0.0
    day_end = noon[1]
    for t, what in events:
        if what == "on":
            bank.set_powered(None, True, t)
            bank.command(None, 100.0, t)
        elif what == "dim":
            bank.command(None, 50.0, t)
        elif what == "off":
            bank.command(None, 0.0, t)
            bank.set_powered(None, False, t)
        elif what == "start":  # noon 1 Jan 2025: the carry night is over, lights off
            bank.step(t)
            carry_wh = float(bank.energy_wh.sum())
        elif what == "reset":
            bank.step(t)
            lost_at_reset = float(bank.energy_wh[7])  # counted already; the counter restarts
            bank.reset_energy(7)
        else:
            bank.step(t)
            await clock.advance_to(t)  # a reading is never stamped ahead of the server's clock
            cab_e = np.bincount(cab_of, weights=bank.energy_wh, minlength=len(cabs)) + lost_at_reset * (
                np.arange(len(cabs)) == cab_of[7])  # the cabinet meter does not reset
            rt.tagdb.apply(Batch.of(np.concatenate([e_idx, p_idx, c_idx]),
                                    np.concatenate([bank.energy_wh, bank.power_w, cab_e]), Q.Good, t))
        if t >= day_end:  # one block per simulated day
            await clock.advance_to(t)
            await h.spool_now()
            await h.forward_now()
            day_end += 86400.0
    await h.flush()
    recorded = h.recorder.recorded
    await h.aclose()
    await asyncio.sleep(0)

    # the model's own integral over the nights of 1 Jan - 31 Dec 2025
    truth_wh = float(bank.energy_wh.sum()) + lost_at_reset - carry_wh
    hours = astro.burning_hours(LAT, LON, days[1:366], TZ)
    base_wh = 170.0 * n * hours.sum()
    from historian.embedded import EmbeddedBackend

    reader = EmbeddedBackend(h.backend.path)
    assert reader.count() == recorded  # every recorded point stored, none twice
    res = compute(reader, inventory_from_site(site), lat=LAT, lon=LON, tz=TZ,
                  d0=date(2025, 1, 1), d1=date(2025, 12, 31), convention="night")
    reader.close()
    b = res.summary[1]
    assert b["baseline_kwh"] == round(base_wh / 1000, 4)
    assert abs(b["actual_kwh"] - truth_wh / 1000) < 1e-3
    assert b["measured_pct"] == 100.0
    assert abs(b["savings_pct"] - 100 * (1 - truth_wh / base_wh)) < 1e-3
    lum7 = res.luminaires[7]
    assert lum7["counter_resets"] == 1 and lum7["savings_pct_b"] == res.luminaires[8]["savings_pct_b"]
    c = res.summary[2]
    assert c["option"].startswith("C") and abs(c["actual_kwh"] - truth_wh / 1000) < 1e-3
    assert len(res.monthly) == 12 and res.contract_years[0]["savings_pct_b"] == b["savings_pct"]
