"""The energy view: /api/energy over a real HTTPS socket answers the figure `scada report
energy` computes (historian.energy.compute, same inventory from the site's device attrs, same
period) from counter readings written through the historian backend; the page renders the
table and the chart in a real headless Chromium; without a historian the answer says why."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import date

import numpy as np
import pytest
from playwright.async_api import expect

from historian.base import Points
from historian.energy import compute, inventory_from_site
from scada import astro
from tests.fixtures.web import browser_login, start_web

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

LAT, LON, TZ = 47.32, 5.04, "Europe/Paris"


def _counter(watts: float, first: date, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Readings every 15 min of a counter burning ``watts`` dusk to dawn, nights ``first`` on."""
    d = astro.to_dates([first])[0] + np.arange(days)
    on, off, _ = astro.night_bounds(LAT, LON, d, TZ)
    t = np.arange(astro.local_noon_utc(d[:1], TZ)[0], off[-1], 900.0)
    lit = np.concatenate(([0.0], np.cumsum(off - on)))
    k = np.searchsorted(on, t, side="right") - 1
    kk = np.maximum(k, 0)
    return t, watts * (lit[kk] + np.where(k >= 0, np.clip(t - on[kk], 0, (off - on)[kk]), 0)) / 3600


async def _write_december(web) -> list[str]:
    """The luminaires' counters for the nights of 2025-11-30 .. 2025-12-31 (legacy 170 W, LED
    40 W and 60 W: savings near 76 % and 65 %)."""
    inv = inventory_from_site(web.runtime.site)
    keys = [f"{p.path}/energy_wh" for p in inv.points]
    assert len(keys) == 3
    t, e = _counter(1.0, date(2025, 11, 30), 33)
    watts = [40.0, 40.0, 60.0]
    pts = Points.of(keys, np.concatenate([np.full(len(t), j) for j in range(len(keys))]),
                    np.tile(t, len(keys)), np.concatenate([w * e for w in watts]))
    hist = web.runtime.services["historian"]
    await asyncio.to_thread(hist.backend.write, pts, "test-december")
    return keys


async def test_api_energy_matches_the_report(web):
    await _write_december(web)
    c, _ = await web.login("viewer1")
    async with aclosing(c):
        r = await c.get("/api/energy", params={"year": 2025})
        assert r.status_code == 200, r.text
        j = r.json()
    # the report's own computation, same inputs (site inventory, site position, same period)
    hist = web.runtime.services["historian"]
    ref = await asyncio.to_thread(compute, hist.backend, inventory_from_site(web.runtime.site), lat=LAT, lon=LON,
                                  tz=TZ, d0=date(2025, 1, 1), d1=date(2025, 12, 31))
    assert j["available"] and j["year"] == 2025 and j["target_pct"] == 65.0
    assert j["headline"] == ref.headline and j["headline"].startswith("DATA INSUFFICIENT")
    assert j["savings_pct"] == ref.summary[1]["savings_pct"]
    assert [m["month"] for m in j["months"]] == [f"2025-{k:02d}" for k in range(1, 13)]
    dec = {m["month"]: m for m in ref.monthly}["2025-12"]
    got = j["months"][-1]
    assert got["savings_pct"] == dec["savings_pct_b"] and got["measured_pct"] == dec["measured_pct"]
    assert got["measured_pct"] >= 99.0 and got["verdict"] == "met"
    assert 70.0 < got["savings_pct"] < 75.0  # (3 x 170 - 140) / (3 x 170) = 72.5 %
    assert j["months"][0]["verdict"] == "DATA INSUFFICIENT"  # no reading in January
    assert [(x["month"], x["area"]) for x in j["cells"]][-1] == ("2025-12", "centre")
    assert j["cells"][-1]["savings_pct"] == got["savings_pct"]
    assert [a["area"] for a in j["areas"]] == ["centre"]
    # the same question again is answered from the cache (server clock), same figures
    c, _ = await web.login("viewer1")
    async with aclosing(c):
        assert (await c.get("/api/energy", params={"year": 2025})).json() == j
        # bad input: a clear 4xx
        r = await c.get("/api/energy", params={"year": "soon"})
        assert r.status_code == 400 and "year" in r.text
        r = await c.get("/api/energy", params={"year": 2025, "area": "nowhere"})
        assert r.status_code == 404
        # an area without luminaires with a legacy_w: said, not an error
        j2 = (await c.get("/api/energy", params={"year": 2025, "area": "north"})).json()
        assert not j2["available"] and "north" in j2["detail"]
        # the current year: no whole day has passed on the server clock (2026-01-01)
        j3 = (await c.get("/api/energy")).json()
        assert j3["year"] == 2026 and not j3["available"]


async def test_api_energy_without_historian(tmp_path):
    w = await start_web(tmp_path, services=("alarms", "web"))
    try:
        c, _ = await w.login("viewer1")
        async with aclosing(c):
            j = (await c.get("/api/energy", params={"year": 2025})).json()
        assert not j["available"] and "historian" in j["detail"] and j["target_pct"] == 65.0
    finally:
        await w.runtime.stop()


async def test_energy_page_renders_table_and_chart(web, browser):
    await _write_december(web)
    page = await browser_login(browser, web, "viewer1")
    await page.goto(web.url + "/energy?year=2025")
    table = page.locator("#energy-table")
    await table.wait_for()
    dec = table.locator("tbody tr", has_text="2025-12").first
    await expect(dec).to_contain_text("met")
    assert "%" in await dec.locator("td").nth(2).inner_text()
    assert await table.locator("tbody tr").count() == 12  # one area: one row per month
    await expect(page.locator("#e-chart")).to_have_attribute("data-bars", "12")
    assert "DATA INSUFFICIENT" in await page.locator("#e-headline").inner_text()
