"""Planned days, the tablet's visits of the day and the crews' reported positions, on a running
server (real HTTPS on loopback, stepped clock: "today" is the clock's day in the site's time
zone, never the machine's date).

* Orders get a planned day when scheduled or assigned (given, else today); the tablet shows the
  crew's visits planned today, the overdue ones (planned before, not done) first, each visit's
  tasks in trade order; a day later yesterday's visits are overdue.
* A tablet reports where its crew is (agent role, audited, journaled: it survives a restart);
  dispatch proposes from it while it is younger than ``position_max_age``, then falls back to
  the site file's base position and says so.
* In a real headless Chromium with a granted, overridden geolocation the tablet posts its
  position by itself and draws the visit's tasks on its embedded map (plain background: no
  tiles configured, no internet); the console's map shows the crew there; the console's visits
  page accepts a dispatch proposal in one click.
"""

from __future__ import annotations

from typing import Any

from scada.audit import AuditLog
from tests.fixtures.interventions import CAB, FAR, JUNC, PASSWORDS, POLE, start_city, wait_for
from tests.fixtures.web import browser  # noqa: F401 - fixture
from tests.system.test_interventions_e2e import page_login

DAY = 86400.0


async def login(web: Any, user: str) -> tuple[Any, dict[str, str]]:
    c = web.client()
    r = await c.post("/api/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"]}


async def create(op: Any, h: dict[str, str], device: str, trade: str, priority: int) -> str:
    r = await op.post("/api/wo", json={"devices": [device], "trade": trade, "priority": priority}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()["data"]["order"]["id"]


async def test_planned_day_and_the_tablets_visits_of_the_day(tmp_path) -> None:
    web = await start_city(tmp_path)
    svc = web.runtime.services["interventions"]
    try:
        op, h = await login(web, "op1")
        agent, _ = await login(web, "agent1")
        today = svc.today()
        assert today == "2026-01-01"  # the stepped clock's day in Europe/Paris
        pole = await create(op, h, POLE, "civil_works", 3)
        door = await create(op, h, CAB, "carpenter", 3)
        far = await create(op, h, FAR, "electrician", 2)
        # assigned without a day: planned today; with a day: that day (yesterday: overdue)
        r = await op.post(f"/api/wo/{pole}/assign", json={"crew": "crew-a"}, headers=h)
        assert r.status_code == 200 and r.json()["data"]["order"]["planned"] == today
        assert (await op.post(f"/api/wo/{door}/assign", json={"crew": "crew-a", "planned": "2026-01-02"},
                              headers=h)).status_code == 200
        assert (await op.post(f"/api/wo/{far}/assign", json={"crew": "crew-a", "planned": "2025-12-31"},
                              headers=h)).status_code == 200
        # bad days are refused with a sentence, and nothing changes
        r = await op.post(f"/api/wo/{door}/assign", json={"crew": "crew-a", "planned": "2026-13-01"}, headers=h)
        assert r.status_code == 400 and "YYYY-MM-DD" in r.json()["detail"]
        r = await op.post(f"/api/wo/{door}/transition", json={"to": "approved", "planned": "2026-01-03"}, headers=h)
        assert r.status_code == 400 and "scheduling" in r.json()["detail"]
        assert svc.store.orders[door].planned == "2026-01-02" and svc.store.orders[door].state == "draft"
        # scheduling keeps the planned day, or sets the one given
        for to in ("approved", "scheduled"):
            assert (await op.post(f"/api/wo/{pole}/transition", json={"to": to}, headers=h)).status_code == 200
        assert svc.store.orders[pole].planned == today
        assert (await op.post(f"/api/wo/{door}/transition", json={"to": "approved"}, headers=h)).status_code == 200
        r = await op.post(f"/api/wo/{door}/transition", json={"to": "scheduled", "planned": "2026-01-02"}, headers=h)
        assert r.status_code == 200 and r.json()["data"]["order"]["planned"] == "2026-01-02"
        planned_audit = [e for e in AuditLog.read(str(web.runtime.operations.audit.path))
                         if e["action"] == "wo.transition" and e.get("planned")]
        assert [(e["target"], e["planned"], e["outcome"]) for e in planned_audit] == [
            (door, "2026-01-03", "BadInvalidArgument"), (door, "2026-01-02", "Good")]
        # today: the overdue visit first, then today's; tomorrow's order is not there
        t = (await agent.get("/api/tablet")).json()
        assert t["day"] == today
        assert [([x["id"] for x in v["tasks"]], v["overdue"]) for v in t["visits"]] == [([far], True), ([pole], False)]
        # the next day (the clock moves, not the machine's date): the pole is overdue and shares
        # its visit with the door planned today, electrician..carpenter trade order inside
        await web.clock.advance(DAY)
        for c in (op, agent):  # the sessions of yesterday have expired (idle_timeout on the same clock)
            await c.aclose()
        op, h = await login(web, "op1")
        agent, _ = await login(web, "agent1")
        t = (await agent.get("/api/tablet")).json()
        assert t["day"] == "2026-01-02"
        assert [([x["id"] for x in v["tasks"]], v["overdue"]) for v in t["visits"]] == [
            ([far], True), ([pole, door], True)]
        # done orders leave the day's list
        for to in ("approved", "scheduled", "in_progress", "completed"):
            r = await op.post(f"/api/wo/{far}/transition", json={"to": to}, headers=h)
            assert r.status_code == 200 or to == "approved", r.text
        t = (await agent.get("/api/tablet")).json()
        assert [[x["id"] for x in v["tasks"]] for v in t["visits"]] == [[pole, door]]
        # the list and the order carry the planned day
        rows = (await op.get("/api/wo?crew=crew-a")).json()["orders"]
        assert {r["id"]: r["planned"] for r in rows}[door] == "2026-01-02"
        for c in (op, agent):
            await c.aclose()
    finally:
        await web.runtime.stop()


async def test_reported_positions_drive_dispatch_until_they_are_too_old(tmp_path) -> None:
    web = await start_city(tmp_path)
    svc = web.runtime.services["interventions"]
    try:
        op, h = await login(web, "op1")
        a1, h1 = await login(web, "agent1")
        a2, h2 = await login(web, "agent2")
        viewer, hv = await login(web, "viewer1")
        junc = await create(op, h, JUNC, "civil_works", 3)  # unassigned: dispatch proposes
        # with the base positions of the site file crew-a (50 m) beats crew-far (9 km)
        v = (await op.get("/api/visits")).json()["visits"][0]
        assert v["proposed_crew"] == "crew-a" and v["proposed_position"] == "base"
        assert "no position reported" in v["proposed_note"]
        # refusals: bad numbers, a crew the agent is not in, a viewer
        for bad in ({"lat": "47.3"}, {"lat": 95, "lon": 5.0}, {"lon": 5.0}, {"lat": float("nan"), "lon": 5}):
            r = await a1.post("/api/tablet/position", content=_json(bad), headers=h1 | {"Content-Type": "application/json"})
            assert r.status_code == 400, (bad, r.text)
        r = await a1.post("/api/tablet/position", json={"lat": 47.3, "lon": 5.0, "crew": "crew-far"}, headers=h1)
        assert r.status_code == 403
        r = await viewer.post("/api/tablet/position", json={"lat": 47.3, "lon": 5.0}, headers=hv)
        assert r.status_code == 403
        assert svc.store.positions == {}
        # crew-far's tablet is next to the junction, crew-a's 1 km away: crew-far is proposed
        r = await a2.post("/api/tablet/position", json={"lat": 47.32206, "lon": 5.04124, "accuracy": 8, "key": "p1"},
                          headers=h2)
        assert r.status_code == 200, r.text
        r = await a2.post("/api/tablet/position", json={"lat": 47.32206, "lon": 5.04124, "accuracy": 8, "key": "p1"},
                          headers=h2)
        assert r.json()["data"]["duplicate"] is True  # a replay is not recorded twice
        await web.clock.advance(60)
        r = await a1.post("/api/tablet/position", json={"lat": 47.3310, "lon": 5.0415}, headers=h1)
        assert r.status_code == 200
        crews = {c["id"]: c for c in (await op.get("/api/crews")).json()["crews"]}
        assert crews["crew-far"]["position_source"] == "reported" and crews["crew-far"]["lat"] == 47.32206
        assert crews["crew-far"]["reported"]["user"] == "agent2" and crews["crew-far"]["reported"]["age_s"] == 60
        v = (await op.get("/api/visits")).json()["visits"][0]
        assert v["proposed_crew"] == "crew-far" and v["proposed_position"] == "reported" and v["distance_m"] < 5
        # 31 minutes later (position_max_age: 30 min by default) both are too old: base positions
        await web.clock.advance(31 * 60)
        v = (await op.get("/api/visits")).json()["visits"][0]
        assert v["proposed_crew"] == "crew-a" and v["proposed_position"] == "base"
        assert "older than 30 min" in v["proposed_note"]
        # audited as field reports of the agents, from the web
        audit = [e for e in AuditLog.read(str(web.runtime.operations.audit.path))
                 if e["action"] == "wo.field" and e.get("what") == "position"]
        assert [(e["user"], e["target"]) for e in audit if e["outcome"] == "Good"] == [
            ("agent2", "crew-far"), ("agent1", "crew-a")]
        assert ("agent1", "crew-far", "BadUserAccessDenied") in [(e["user"], e["target"], e["outcome"]) for e in audit]
        assert any(e["user"] == "viewer1" and e["outcome"] == "BadUserAccessDenied" for e in audit)
        assert all(e["via"].startswith("web 127.0.0.1") for e in audit)
        assert svc.store.orders[junc].crew is None  # dispatch proposes; it did not assign
        for c in (op, a1, a2, viewer):
            await c.aclose()
    finally:
        await web.runtime.stop()
    # the last known positions survive a restart (journaled in the interventions store)
    web = await start_city(tmp_path)
    try:
        pos = web.runtime.services["interventions"].store.positions
        assert pos["crew-far"]["lat"] == 47.32206 and pos["crew-a"]["lat"] == 47.3310
        assert pos["crew-a"]["user"] == "agent1"
    finally:
        await web.runtime.stop()


async def test_dispatch_respects_shifts_and_plans_ahead(tmp_path) -> None:
    """crew-sig works 07:00-19:00 (Europe/Paris); the stepped clock starts at 01:00 local."""
    web = await start_city(tmp_path)
    try:
        op, h = await login(web, "op1")
        await create(op, h, JUNC, "signal_technician", 2)
        crews = {c["id"]: c for c in (await op.get("/api/crews")).json()["crews"]}
        assert crews["crew-sig"]["on_shift"] is False and crews["crew-sig"]["available"] is False
        v = (await op.get("/api/visits")).json()["visits"][0]
        assert v["proposed_crew"] is None  # the only signal technicians are off shift now
        # planning tomorrow: the crew's shift will come, it is proposed
        v = (await op.get("/api/visits?day=2026-01-02")).json()["visits"][0]
        assert v["proposed_crew"] == "crew-sig"
        for bad in ("2025-12-31", "tomorrow"):
            r = await op.get(f"/api/visits?day={bad}")
            assert r.status_code == 400 and "day" in r.json()["detail"]
        await web.clock.advance(6 * 3600)  # 07:00 in Dijon
        await op.aclose()  # the session has expired meanwhile (idle_timeout on the same clock)
        op, h = await login(web, "op1")
        v = (await op.get("/api/visits")).json()["visits"][0]
        assert v["proposed_crew"] == "crew-sig"
        await op.aclose()
    finally:
        await web.runtime.stop()


def _json(d: dict[str, Any]) -> bytes:
    import json

    return json.dumps(d).encode()


async def test_tablet_reports_its_position_and_maps_the_visit_in_chromium(tmp_path, browser) -> None:  # noqa: F811
    web = await start_city(tmp_path)
    svc = web.runtime.services["interventions"]
    try:
        op, h = await login(web, "op1")
        pole = await create(op, h, POLE, "civil_works", 3)
        door = await create(op, h, CAB, "carpenter", 3)
        # the console's visits: the proposal accepted in one click assigns every task of the visit
        _vctx, visits = await page_login(browser, web, "op1", "/visits")
        await visits.click('.visit button.assign[data-crew="crew-a"]')
        await wait_for(lambda: all((svc.store.orders[o].crew, svc.store.orders[o].planned) == ("crew-a", svc.today())
                                   for o in (pole, door)), "the visit's tasks assigned")
        await visits.wait_for_selector(".visit button.assign >> text=assigned")
        assigned = [e for e in AuditLog.read(str(web.runtime.operations.audit.path)) if e["action"] == "wo.assign"]
        assert sorted((e["target"], e["user"], e["crew"]) for e in assigned) == [(pole, "op1", "crew-a"), (door, "op1", "crew-a")]
        where = {"latitude": 47.3230, "longitude": 5.0420}
        tctx, tab = await page_login(browser, web, "agent1", "/tablet", viewport={"width": 412, "height": 915},
                                     is_mobile=True, has_touch=True, geolocation=where, permissions=["geolocation"])
        # the tablet posts where it is, by itself, through the operator API
        pos = await wait_for(lambda: svc.store.positions.get("crew-a"), "the tablet's position", limit_s=60)
        assert (pos["lat"], pos["lon"], pos["user"]) == (47.3230, 5.0420, "agent1")
        # throttled: a 10 m move within the minute is shown on the tablet but not sent; a 200 m
        # move is sent at once
        await tctx.set_geolocation({"latitude": 47.32309, "longitude": 5.0420})
        await tab.wait_for_function("() => window.scadaTablet.position && window.scadaTablet.position.lat === 47.32309")
        assert await tab.evaluate("() => window.scadaTablet.sent") == 1 and svc.store.positions["crew-a"]["lat"] == 47.3230
        await tctx.set_geolocation({"latitude": 47.3248, "longitude": 5.0420})
        await wait_for(lambda: svc.store.positions["crew-a"]["lat"] == 47.3248, "the 200 m move", limit_s=60)
        # the visit's tasks on its embedded map, in trade order, on the plain background
        await tab.wait_for_selector("canvas.visit-map")
        assert await tab.locator("a.map").count() == 0  # no link out to a web map
        m = await tab.evaluate("() => Object.values(window.scadaTablet.maps)[0]")
        assert [p[2] for p in m["points"]] == [pole, door] and m["background"] is True and m["tiles"] == 0
        box = await tab.locator("canvas.visit-map").bounding_box()
        for x, y, _ in m["points"]:
            assert 0 <= x <= box["width"] and 0 <= y <= box["height"]
        rgba = await tab.evaluate("""([x, y]) => { const c = document.querySelector('canvas.visit-map');
            const d = window.devicePixelRatio || 1;
            return Array.from(c.getContext('2d').getImageData(Math.round((x - 6) * d), Math.round(y * d), 1, 1).data); }""",
                                  m["points"][0][:2])
        assert rgba[0] > 200 and rgba[1] < 100, rgba  # the task's red dot is drawn there
        # the operator's map shows the crew where its tablet is
        _octx, console = await page_login(browser, web, "op1", "/map")
        await console.wait_for_function(
            "() => (window.scadaMap.crews || []).some(c => c.id === 'crew-a' && c.position_source === 'reported')")
        assert await console.evaluate("() => window.scadaMap.crewScreen('crew-a')") is not None
        # a position reported later reaches the open map live
        a2, h2 = await login(web, "agent2")
        assert (await a2.post("/api/tablet/position", json={"lat": 47.33, "lon": 5.05}, headers=h2)).status_code == 200
        await console.wait_for_function(
            "() => (window.scadaMap.crews || []).some(c => c.id === 'crew-far' && c.position_source === 'reported')")
        for c in (op, a2):
            await c.aclose()
        await tctx.close()
    finally:
        await web.runtime.stop()


async def test_tablet_map_draws_the_sites_own_tiles(tmp_path, browser, monkeypatch) -> None:  # noqa: F811
    """With web.map.tiles naming a local directory the tablet's visit map draws those tiles (the
    console map's configuration, served by the same server: no internet)."""
    import math

    import tests.fixtures.interventions as fx
    from tests.system.test_map import _png

    monkeypatch.setattr(fx, "SITE", fx.SITE.replace("web:\n  enabled: true\n",
                                                    "web:\n  enabled: true\n  map: {{tiles: tiles/}}\n"))
    for z in range(15, 20):  # a block of tiles around the crossing at every zoom the tablet may pick
        n = 2 ** z
        x0 = int((5.0412 + 180) / 360 * n)
        y0 = int((1 - math.asinh(math.tan(math.radians(47.3220))) / math.pi) / 2 * n)
        for x in range(x0 - 3, x0 + 4):
            d = tmp_path / "tiles" / str(z) / str(x)
            d.mkdir(parents=True, exist_ok=True)
            for y in range(y0 - 3, y0 + 4):
                (d / f"{y}.png").write_bytes(_png((10, 200, 30)))
    web = await fx.start_city(tmp_path)
    svc = web.runtime.services["interventions"]
    try:
        op, h = await login(web, "op1")
        pole = await create(op, h, POLE, "civil_works", 3)
        assert (await op.post(f"/api/wo/{pole}/assign", json={"crew": "crew-a"}, headers=h)).status_code == 200
        await op.aclose()
        tctx, tab = await page_login(browser, web, "agent1", "/tablet", viewport={"width": 412, "height": 915},
                                     is_mobile=True)
        await tab.wait_for_function("() => Object.values(window.scadaTablet.maps).some(m => m.tiles > 0)")
        rgba = await tab.evaluate("""() => { const c = document.querySelector('canvas.visit-map');
            const d = window.devicePixelRatio || 1;
            return Array.from(c.getContext('2d').getImageData(Math.round(10 * d), Math.round(10 * d), 1, 1).data); }""")
        assert rgba[:3] == [10, 200, 30]  # the site's tile, in the corner away from the task's dot
        assert svc.store.orders[pole].planned == svc.today()
        await tctx.close()
    finally:
        await web.runtime.stop()
