"""The issue's end-to-end scenario on the small simulated city, with the agent's tablet in a real
headless Chromium: a lamp failure and a door open on one cabinet plus a damaged pole at the same
junction become one visit with tasks in trade order; the agent reports "arrived" (alarms are
shelved: maintenance mode), goes offline, reports "done" with note and photo, comes back online;
the queue replays, the journal and the audit show each step once (a second replay of the same
actions is recognised); the operator's console sees the changes live; the lamp's alarm comes
back because the fault remains, and its order cannot close until the simulated fault clears."""

from __future__ import annotations

import base64
import json
from typing import Any

from scada.audit import AuditLog
from tests.fixtures.interventions import CAB, LUM, PASSWORDS, POLE, start_city, wait_for
from tests.fixtures.web import browser  # noqa: F401 - fixture

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


async def page_login(browser: Any, web: Any, user: str, path: str, **ctx_kw: Any) -> tuple[Any, Any]:  # noqa: F811
    ctx = await browser.new_context(ignore_https_errors=True, **ctx_kw)
    page = await ctx.new_page()
    await page.goto(web.url + "/login?next=" + path)
    await page.fill("#user", user)
    await page.fill("#password", PASSWORDS[user])
    await page.click("#submit")
    await page.wait_for_url(web.url + path)
    return ctx, page


async def test_one_visit_offline_tablet_and_verified_close(tmp_path, browser) -> None:  # noqa: F811
    web = await start_city(tmp_path)
    rt = web.runtime
    svc = rt.services["interventions"]
    eng = rt.operations.alarms
    try:
        # the faults: lamp failure and door open on the cabinet, damaged pole at the same crossing
        web.feed({f"{LUM}/lamp_failure": 1, f"{CAB}/door_open": 1, f"{POLE}/tilt_alarm": 1})
        await wait_for(lambda: len(svc.store.orders) == 3, "three automatic orders")
        op = web.client()
        r = await op.post("/api/login", json={"user": "op1", "password": PASSWORDS["op1"]})
        h = {"X-CSRF-Token": r.json()["csrf"]}
        v = (await op.get("/api/visits")).json()
        assert v["total"] == 1, v
        visit = v["visits"][0]
        assert [t["trade"] for t in visit["tasks"]] == ["electrician", "civil_works", "carpenter"]
        assert visit["proposed_crew"] == "crew-a" and visit["distance_m"] < 100
        ids = [t["id"] for t in visit["tasks"]]
        for oid in ids:
            for to in ("approved", "scheduled"):
                assert (await op.post(f"/api/wo/{oid}/transition", json={"to": to}, headers=h)).status_code == 200
            assert (await op.post(f"/api/wo/{oid}/assign", json={"crew": visit["proposed_crew"]},
                                  headers=h)).status_code == 200
        # the operator's console, live
        _octx, console = await page_login(browser, web, "op1", "/workorders")
        await console.wait_for_selector(f'tr[data-order="{ids[0]}"] td.state >> text=scheduled')
        # the agent's tablet (phone-sized)
        tctx, tab = await page_login(browser, web, "agent1", "/tablet", viewport={"width": 412, "height": 915},
                                     is_mobile=True, has_touch=True)
        await tab.wait_for_selector(".visit")
        assert await tab.eval_on_selector_all(".task", "els => els.map(e => e.dataset.order)") == ids
        assert (await tab.evaluate("fetch('/tablet.webmanifest').then(r => r.json())"))["display"] == "standalone"
        # the electrician ticks the first step of the lamp's checklist
        await tab.check(f'.task[data-order="{ids[0]}"] input.step[data-step="s1"]')
        await wait_for(lambda: svc.store.orders[ids[0]].checklist[0]["done"], "the checklist step")
        assert svc.store.orders[ids[0]].checklist[0]["user"] == "agent1"
        for oid in ids:
            await tab.click(f'.task[data-order="{oid}"] button.arrived')
        await wait_for(lambda: all(svc.store.orders[i].state == "in_progress" for i in ids), "arrived x3")
        # maintenance mode: the devices' alarms are shelved, visibly, with the order's reference
        for aid in (f"{LUM}/lamp_failure", f"{CAB}/door_open", f"{POLE}/damaged"):
            c = eng.by_id.get(aid)
            assert eng.view(c).state == "Shelved" and eng.shelve_info[c][1].startswith("maintenance: WO-")
        await console.wait_for_selector(f'tr[data-order="{ids[0]}"] td.state >> text=in_progress')
        # offline: the three "done" reports wait in the tablet's queue
        await tctx.set_offline(True)
        await tab.wait_for_selector("#net.off")
        before = len(svc.store.journal())
        for k, oid in enumerate(ids):
            await tab.fill(f'.task[data-order="{oid}"] textarea.note', f"repaired {k}")
            if k == 0:
                await tab.set_input_files(f'.task[data-order="{oid}"] input.photo',
                                          files=[{"name": "lamp.png", "mimeType": "image/png", "buffer": PNG}])
            await tab.click(f'.task[data-order="{oid}"] button.done')
            await tab.wait_for_selector(f'#queued[data-count="{k + 1}"]', state="attached")
        queued = json.loads(await tab.evaluate("localStorage.getItem('scada-tablet-queue:agent1')"))
        assert [q["what"] for q in queued] == ["done"] * 3 and len({q["key"] for q in queued}) == 3
        assert len(svc.store.journal()) == before  # nothing reached the server
        # back online: the queue replays in order
        await tctx.set_offline(False)
        await tab.wait_for_selector('#queued[data-count="0"]', state="attached", timeout=30000)
        await wait_for(lambda: all(svc.store.orders[i].state == "completed" for i in ids), "done x3")
        await console.wait_for_selector(f'tr[data-order="{ids[2]}"] td.state >> text=completed')
        # a second replay of the same actions (a lost answer) changes nothing
        a = web.client()
        r = await a.post("/api/login", json={"user": "agent1", "password": PASSWORDS["agent1"]})
        ha = {"X-CSRF-Token": r.json()["csrf"]}
        for q in queued:
            r = await a.post("/api/tablet/action", json={k: q[k] for k in ("order", "what", "note", "photo", "key")},
                             headers=ha)
            assert r.status_code == 200 and r.json()["data"]["duplicate"] is True
        for oid in ids:
            recs = svc.store.journal(oid)
            fields = [x.get("field") for x in recs if x["op"] == "transition" and x.get("field")]
            assert fields == ["arrived", "done"], (oid, recs)
            assert [n["user"] for n in svc.store.orders[oid].notes] == ["agent1"]
        assert len(svc.store.orders[ids[0]].photos) == 1
        audit = [e for e in AuditLog.read(str(rt.operations.audit.path)) if e["action"] == "wo.field"]
        assert sorted((e["target"], e.get("what") or e["op"]) for e in audit) == sorted(
            [(i, "arrived") for i in ids] + [(i, "done") for i in ids] + [(ids[0], "check")])
        assert all(e["user"] == "agent1" and e["via"].startswith("web 127.0.0.1") for e in audit)
        # the photo is served to the console
        photo = svc.store.orders[ids[0]].photos[0]["file"]
        assert (await op.get(f"/api/wo/photos/{photo}")).content == PNG
        # the works are over: the alarms are back; the lamp's fault remains, so it is annunciated
        lamp = eng.view(eng.by_id.get(f"{LUM}/lamp_failure"))
        assert not lamp.shelved and lamp.active
        r = await op.post(f"/api/wo/{ids[0]}/transition", json={"to": "closed"}, headers=h)
        assert r.status_code == 409 and "still active" in r.json()["detail"]
        web.feed({f"{LUM}/lamp_failure": 0, f"{CAB}/door_open": 0, f"{POLE}/tilt_alarm": 0})
        for oid in ids:
            r = await op.post(f"/api/wo/{oid}/transition", json={"to": "closed", "resolution": "repaired"}, headers=h)
            assert r.status_code == 200, r.text
        assert (await op.get("/api/visits")).json()["total"] == 0
        # this tablet was not allowed the geolocation: it reported no position
        assert svc.store.positions == {}
        # another agent (another crew) may not report on these orders
        b = web.client()
        r = await b.post("/api/login", json={"user": "agent2", "password": PASSWORDS["agent2"]})
        r = await b.post("/api/tablet/action", json={"order": ids[0], "what": "arrived"},
                         headers={"X-CSRF-Token": r.json()["csrf"]})
        assert r.status_code == 403
        for cl in (op, a, b):
            await cl.aclose()
    finally:
        await rt.stop()


async def test_console_procedure_checklist_and_order_page(tmp_path, browser) -> None:  # noqa: F811
    """The checklist is shown with the alarm in the console's alarm list (and in the alarm API)
    and on the procedures page; ticking a step records the user and is audited; the order page
    offers only the transitions the table allows, shows why closing waits, and assigns a crew
    for a planned day."""
    web = await start_city(tmp_path)
    rt = web.runtime
    svc = rt.services["interventions"]
    aid = f"{LUM}/lamp_failure"
    try:
        web.feed({f"{LUM}/lamp_failure": 1})
        wo = await wait_for(lambda: svc.store.open_for(LUM, "lamp_failure"), "the automatic order")
        # the alarm list: the procedure's progress in the row, its checklist under it
        _ctx, page = await page_login(browser, web, "op1", "/alarms")
        row = f'tr[data-alarm="{aid}"]'
        await page.wait_for_selector(f'{row} button[data-proc] >> text=0/2')
        await page.click(f'{row} button[data-proc]')
        sec = f'tr.procedure-row .procedure[data-alarm="{aid}"]'
        await page.wait_for_selector(f"{sec} >> text=Create a work order")
        await page.click(f'{sec} button[data-step="s2"]')
        await wait_for(lambda: svc.store.steps.get(aid, {}).get("s2"), "the step ticked from the alarm list")
        assert svc.store.steps[aid]["s2"]["user"] == "op1"
        await page.wait_for_selector(f'{row} button[data-proc] >> text=1/2')
        await page.wait_for_selector(f'{sec} li[data-step="s2"][data-done="1"] .step-by >> text=op1')
        audit = [e for e in AuditLog.read(str(rt.operations.audit.path)) if e["action"] == "procedure.step"]
        assert [(e["target"], e["step"], e["user"], e["outcome"]) for e in audit] == [(aid, "s2", "op1", "Good")]
        assert audit[0]["via"].startswith("web 127.0.0.1")
        # the alarm API carries the same checklist
        op = web.client()
        await op.post("/api/login", json={"user": "op1", "password": PASSWORDS["op1"]})
        a = next(x for x in (await op.get("/api/alarms")).json()["alarms"] if x["alarm_id"] == aid)
        assert [(s["id"], s["done"], s["user"]) for s in a["procedure"]["steps"]] == [
            ("s1", False, None), ("s2", True, "op1")]
        assert a["procedure"]["steps"][1]["ts"] == rt.clock.time()
        await op.aclose()
        # the procedures page: every active alarm's checklist
        await page.goto(f"{web.url}/procedures")
        sec = f'.procedure[data-alarm="{LUM}/lamp_failure"]'
        await page.wait_for_selector(f"{sec} >> text=Check the cabinet's contactor")
        await page.click(f'{sec} button[data-step="s1"]')
        await wait_for(lambda: svc.store.steps.get(f"{LUM}/lamp_failure", {}).get("s1"), "the step")
        assert svc.store.steps[f"{LUM}/lamp_failure"]["s1"]["user"] == "op1"
        await page.goto(f"{web.url}/workorders/{wo.id}")
        await page.wait_for_selector("#wo-state >> text=draft")
        buttons = await page.eval_on_selector_all("#wo-actions button[data-to]", "els => els.map(e => e.dataset.to)")
        assert buttons == ["approved", "cancelled"]
        await page.click('#wo-actions button[data-to="approved"]')
        await page.fill("#confirm-extra", "go")
        await page.click("#confirm-ok")
        await page.wait_for_selector("#wo-state >> text=approved")
        assert svc.store.orders[wo.id].history[-1]["comment"] == "go"
        # dispatch from the order page: a crew with the trade, for a planned day
        await page.wait_for_selector('#wo-plan-crew option[value="crew-a"]', state="attached")
        assert await page.input_value("#wo-plan-day") == svc.today()
        await page.select_option("#wo-plan-crew", "crew-far")
        await page.fill("#wo-plan-day", "2026-01-05")
        await page.click("#wo-plan-submit")
        await page.wait_for_selector("#wo-planned >> text=2026-01-05")
        assert (svc.store.orders[wo.id].crew, svc.store.orders[wo.id].planned) == ("crew-far", "2026-01-05")
        # the device's faceplate lists its work orders (issue 19), and its parent's does too
        for dev in (LUM, LUM.rsplit("/", 1)[0]):
            await page.goto(f"{web.url}/devices/{dev}")
            await page.wait_for_selector(f'#dev-wo tr[data-wo="{wo.id}"] >> text=approved')
    finally:
        await rt.stop()
