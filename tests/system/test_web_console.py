"""The console in a real headless Chromium (Debian's, driven by Playwright) against a real
server over HTTPS: log in, see an injected fault, acknowledge it and watch it change live,
refused actions for a viewer, a restricted user's view, the faceplate's trend."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from tests.fixtures.web import browser_login

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

DOOR = "centre/cab-01/door_open"


async def test_login_fault_acknowledge_live(web, browser):
    page = await browser_login(browser, web, "op1")
    await page.wait_for_selector("#live.on")  # the live stream is open
    web.feed({"centre/cab-01/door_open": True})  # the injected fault
    row = page.locator(f'tr[data-alarm="{DOOR}"]')
    await row.wait_for()
    assert await row.locator("td.state").inner_text() == "unacknowledged"
    banner = page.locator("#banner")
    await banner.wait_for()
    assert DOOR in await banner.inner_text()  # priority 1: the banner
    await row.locator('button[data-do="ack"]').click()
    await expect(row.locator("td.state")).to_have_text("acknowledged")
    # another operator's acknowledgement arrives live too: a second alarm, acked over the API
    web.feed({"north/cab-02/door_open": True})
    row2 = page.locator('tr[data-alarm="north/cab-02/door_open"]')
    await row2.wait_for()
    out = await web.runtime.operations.acknowledge(
        web.runtime.operations.identity("eng1", "test"), "north/cab-02/door_open")
    assert out.ok
    await expect(row2.locator("td.state")).to_have_text("acknowledged")
    acks = [e for e in web.audit() if e["action"] == "alarm.acknowledge" and e["user"] == "op1"]
    assert acks and acks[-1]["via"].startswith("web ")


async def test_viewer_buttons_disabled_and_server_refuses(web, browser):
    web.feed({"centre/cab-01/door_open": True})
    page = await browser_login(browser, web, "viewer1")
    row = page.locator(f'tr[data-alarm="{DOOR}"]')
    await row.wait_for()
    for what in ("ack", "comment", "shelve", "oos"):
        assert await row.locator(f'button[data-do="{what}"]').is_disabled(), what
    # the server refuses as well, whatever the page shows: a forged request from the page
    status = await page.evaluate(f"""async () => {{
        const r = await fetch('/api/alarms/ack', {{method: 'POST', headers: {{'Content-Type': 'application/json',
            'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}},
            body: JSON.stringify({{alarm_id: '{DOOR}'}})}});
        return r.status; }}""")
    assert status == 403
    refused = [e for e in web.audit() if e["action"] == "alarm.acknowledge"]
    assert refused[-1]["user"] == "viewer1" and refused[-1]["outcome"] == "BadUserAccessDenied"


async def test_restricted_user_sees_only_their_area(web, browser):
    web.feed({"centre/cab-01/door_open": True, "north/cab-02/door_open": True})
    page = await browser_login(browser, web, "north1")
    await page.locator('tr[data-alarm="north/cab-02/door_open"]').wait_for()
    assert await page.locator('tr[data-alarm^="centre/"]').count() == 0
    await page.goto(web.url + "/devices")
    await page.locator('tr[data-device="north/cab-02"]').wait_for()
    paths = await page.locator("tr[data-device]").evaluate_all("rs => rs.map(r => r.dataset.device)")
    assert sorted(paths) == ["north/cab-02", "north/j-01"]
    r = await page.goto(web.url + "/devices/centre/cab-01")
    assert r.status == 404
    status = await page.evaluate("async () => (await fetch('/api/devices/centre/cab-01')).status")
    assert status == 404


async def test_faceplate_trend_from_the_historian(web, browser):
    hist = web.runtime.services["historian"]
    for k in range(1, 121):  # two hours of power readings, one a minute
        await web.clock.advance(60)
        web.feed({"centre/cab-01/power_w": 1000.0 + 10 * (k % 30)})
    await hist.spool_now()
    await hist.forward_now()
    page = await browser_login(browser, web, "op1")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(web.url + "/devices/centre/cab-01")
    await page.locator('tr[data-tag="centre/cab-01/power_w"]').wait_for(timeout=10000)
    await page.select_option("#trend-tag", "centre/cab-01/power_w")
    canvas = page.locator("#trend")
    for _ in range(200):
        if int(await canvas.get_attribute("data-points") or 0) > 100:
            break
        await asyncio.sleep(0.05)
    assert int(await canvas.get_attribute("data-points") or 0) > 100
    # the canvas really has ink on it: count the non-white pixels of the plotted line's colour
    blue = await page.evaluate("""() => {
        const c = document.getElementById('trend'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 60 && d[i + 2] > 150) n++; return n; }""")
    assert blue > 200
    # live values with quality and source time
    q = page.locator('tr[data-tag="centre/cab-01/power_w"] td.q')
    assert await q.inner_text() == "Good"
    assert errors == []


async def test_write_with_confirmation_and_junction_view(web, browser):
    page = await browser_login(browser, web, "eng1")
    await page.goto(web.url + "/devices/centre/cab-01")
    row = page.locator('tr[data-tag="centre/cab-01/group_level"]')
    await row.wait_for()
    await row.locator("button[data-write]").click()
    dialog = page.locator("dialog#confirm")
    await expect(dialog).to_be_visible()
    await page.fill("#confirm-extra", "35")
    await page.click("#confirm-ok")
    await expect(row.locator("td.val")).to_have_text("35 %")
    assert ("centre/cab-01/group_level", 35.0) in web.writes or ("centre/cab-01/group_level", 35) in web.writes
    # cancelling the dialog writes nothing
    n = len(web.writes)
    await row.locator("button[data-write]").click()
    await page.fill("#confirm-extra", "36")
    await page.click("#confirm-cancel")
    await expect(dialog).to_be_hidden()
    assert not [w for w in web.writes[n:] if w[0] == "centre/cab-01/group_level"]
    # junctions: mode, plan, signal groups; a conflict makes the card a fault
    web.feed({"north/j-01/conflict": True})
    await page.goto(web.url + "/junctions")
    card = page.locator('[data-junction="north/j-01"]')
    await card.wait_for()
    await expect(card.locator(".mode")).to_have_text("normal")
    assert await card.locator(".sg").count() == 2
    await expect(card).to_have_class("card fault")
    assert "conflict" in await card.locator(".faults").inner_text()


async def test_schedule_override_from_the_page(web, browser):
    page = await browser_login(browser, web, "op1")
    await page.goto(web.url + "/schedules")
    await page.locator("#steps tbody tr").first.wait_for()
    assert await page.locator("#ov-create").is_disabled()  # operators may not override
    page = await browser_login(browser, web, "eng1")
    await page.goto(web.url + "/schedules")
    await page.locator("#steps tbody tr").first.wait_for()
    assert not await page.locator("#ov-create").is_disabled()
    await page.fill("#ov-level", "20")
    await page.fill("#ov-reason", "street party")
    await page.click("#ov-create")
    await page.click("#confirm-ok")
    row = page.locator("tr[data-override]")
    await row.wait_for()
    assert "street party" in await row.inner_text()
    await row.locator("button[data-cancel]").click()
    await page.click("#confirm-ok")
    await expect(page.locator("tr[data-override]")).to_have_count(0)
    acts = [(e["user"], e.get("cancel", False)) for e in web.audit() if e["action"] == "schedule.override"
            and e["outcome"] == "Good"]
    assert ("eng1", False) in acts and ("eng1", True) in acts


async def test_every_page_loads_without_a_script_error_and_logout(web, browser):
    from scada.web.pages import NAV

    web.feed({"centre/cab-01/door_open": True})
    page = await browser_login(browser, web, "eng1")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    ready = {"/alarms": "#alarms tbody tr", "/alarms/history": "#history tbody tr",
             "/devices": "#devices tbody tr", "/junctions": "[data-junction]",
             "/schedules": "#steps tbody tr", "/energy": "#energy p", "/system": "[data-group]"}
    # the work-order pages need an interventions: section this site does not configure
    for path, _label in [(p, label) for p, label in NAV if p != "/workorders"]:
        r = await page.goto(web.url + path)
        assert r.status == 200, path
        if path in ready:  # the page's script has fetched and rendered its data
            await page.locator(ready[path]).first.wait_for()
    # the history page finds the raise; the shelved view lists a shelved alarm
    await page.goto(web.url + "/alarms/history")
    await page.fill("#h-text", "door")
    await page.click("#h-go")
    await expect(page.locator("#history tbody tr").first).to_contain_text("raise")
    out = await web.runtime.operations.shelve(web.runtime.operations.identity("eng1", "t"),
                                              "centre/cab-01/door_open", "works", 3600)
    assert out.ok
    await page.goto(web.url + "/alarms")
    await page.click('#views button[data-view="shelved"]')
    row = page.locator('tr[data-alarm="centre/cab-01/door_open"]')
    await expect(row.locator("td.state")).to_have_text("shelved")
    await expect(row.locator('button[data-do="unshelve"]')).to_be_enabled()
    assert errors == []
    await page.click("#logout")
    await page.wait_for_url("**/login")
    r = await page.goto(web.url + "/alarms")
    assert "/login" in page.url
