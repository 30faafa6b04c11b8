"""The console of a redundant pair (issue 22, docs/redundancy.md "Web console"): /api/ha
answers 200 on the active and 503 on the standby (a load balancer's health check), the
standby's pages say so and link to the active, and a page whose server dies goes to the other
server's console by itself. Two real consoles over HTTPS, in Debian's headless Chromium; the
roles are set directly (the election is tested with a real etcd in test_ha_lease/test_ha_pair)."""

from __future__ import annotations

import asyncio

import pytest

from scada.ha.role import HaState, Role
from scada.sections.ha import HaConfig
from tests.fixtures.web import browser_login, start_web

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


async def pair_of_consoles(tmp_path):
    wa = await start_web(tmp_path / "a")
    try:
        wb = await start_web(tmp_path / "b")
    except BaseException:
        await wa.runtime.stop()
        raise
    cfg = HaConfig(etcd=["http://127.0.0.1:2379"], nodes={"a": {"web": wa.url}, "b": {"web": wb.url}})
    for w in (wa, wb):
        w.runtime.site.config.ha = cfg
    wa.runtime.ha = HaState("a", Role.STARTING)
    await wa.runtime.ha.promote(7)
    wb.runtime.ha = HaState("b", Role.STARTING)
    await wb.runtime.ha.demote(Role.STANDBY, "a holds the lease")
    wb.runtime.ha.set_holder("a", {"node": "a", "web": wa.url, "token": 7})
    return wa, wb


async def test_api_ha_and_the_standby_banner(tmp_path, browser):
    wa, wb = await pair_of_consoles(tmp_path)
    try:
        async with wa.client() as ca, wb.client() as cb:
            ra, rb = await ca.get("/api/ha"), await cb.get("/api/ha")
        assert ra.status_code == 200 and ra.json()["role"] == "active"
        assert rb.status_code == 503, rb.text
        j = rb.json()
        assert (j["node"], j["role"], j["holder"], j["holder_web"]) == ("b", "standby", "a", wa.url)
        assert j["nodes"] == {"a": {"web": wa.url}, "b": {"web": wb.url}}

        page = await browser_login(browser, wb, "op1")
        banner = page.locator("#ha-banner")
        await banner.wait_for(state="visible", timeout=15_000)
        text = await banner.inner_text()
        assert "STANDBY" in text and "The active server is a" in text, text
        assert await page.locator("#ha-active-link").get_attribute("href") == wa.url
        page_a = await browser_login(browser, wa, "op1")
        await asyncio.sleep(0)
        assert await page_a.locator("#ha-banner").is_hidden()
    finally:
        await wa.runtime.stop()
        await wb.runtime.stop()


async def test_a_page_whose_server_dies_goes_to_the_other_console(tmp_path, browser):
    wa, wb = await pair_of_consoles(tmp_path)
    try:
        page = await browser_login(browser, wa, "op1")
        await page.locator("#live.on").wait_for(timeout=15_000)  # the live stream is up
        await wa.runtime.stop()  # the active's process goes away
        await page.wait_for_url(wb.url + "/login**", timeout=60_000)
        assert await page.locator("#user").is_visible()
    finally:
        await wa.runtime.stop()
        await wb.runtime.stop()
