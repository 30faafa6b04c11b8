"""`scada demo` serves the console: it prints the console's URL and the demo accounts, and the
README's injected fault is in the alarm list of a real browser logged in with one of them."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from playwright.async_api import expect

from tests.conftest import free_port
from tests.fixtures.process import ScadaProcess
from tests.system.test_demo_faults import demo_site, readme_fault

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(300)]


async def test_demo_prints_console_and_shows_the_fault(tmp_path, browser):
    fault, device = readme_fault()
    site = demo_site(tmp_path)
    demo = ScadaProcess("demo", "--site", str(site), "--opcua-port", str(free_port()),
                        "--start", "2026-12-21T22:00", "--fault", f"{fault}:{device}")
    try:
        await asyncio.to_thread(demo.wait_for, "Press Ctrl+C", 150)
        out = demo.output
        m = re.search(r"web: console (https://127\.0\.0\.1:\d+/)", out)
        assert m, out
        url = m.group(1).rstrip("/")
        accounts = dict(re.findall(r"^\s+(operator)\s+operator\s+password (\S+)$", out, re.M))
        assert "operator" in accounts, out
        alarm = f"{device}/{fault}"
        async with httpx.AsyncClient(base_url=url, verify=False, timeout=10) as c:
            r = await c.post("/login", json={"user": "operator", "password": accounts["operator"]})
            assert r.status_code == 200, r.text
            for _ in range(600):
                ids = [a["alarm_id"] for a in (await c.get("/api/alarms")).json()["alarms"]]
                if alarm in ids:
                    break
                assert demo.proc.poll() is None, demo.output[-3000:]
                await asyncio.sleep(0.2)
            assert alarm in ids
        ctx = await browser.new_context(ignore_https_errors=True)
        page = await ctx.new_page()
        await page.goto(url + "/alarms")
        await page.fill("#user", "operator")
        await page.fill("#password", accounts["operator"])
        await page.click("#submit")
        await page.wait_for_url(url + "/alarms")
        await expect(page.locator(f'tr[data-alarm="{alarm}"] td.state')).to_have_text("unacknowledged")
        assert await asyncio.to_thread(demo.stop) == 0, demo.output[-3000:]
    finally:
        await asyncio.to_thread(demo.kill)


