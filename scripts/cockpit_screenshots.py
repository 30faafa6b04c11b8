"""Screenshots of the console's main views for docs/cockpit.md (docs/img/cockpit-*.png).

Starts the test site of tests/fixtures/web.py (a real runtime with the console on a free
loopback port), injects a few faults, records two hours of power readings, and photographs
each view in Debian's headless Chromium driven by Playwright:

    .venv/bin/python scripts/cockpit_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.async_api import async_playwright

from tests.fixtures.web import CHROMIUM, CHROMIUM_ARGS, browser_login, start_web


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        web = await start_web(Path(tmp))
        try:
            hist = web.runtime.services["historian"]
            for k in range(1, 181):
                await web.clock.advance(60)
                web.feed({"centre/cab-01/power_w": 1200.0 + 150 * ((k // 20) % 3) + 7 * (k % 11)})
            await hist.spool_now()
            await hist.forward_now()
            web.feed({"centre/cab-01/door_open": True, "north/j-01/conflict": True,
                      "centre/cab-01/lum-02/lamp_failure": True})
            await web.clock.advance(5)
            web.feed({"north/cab-02/door_open": True})
            ops = web.runtime.operations
            await ops.acknowledge(ops.identity("op1", "web"), "north/j-01/conflict", "crew sent")
            async with async_playwright() as pw:
                b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                ctx = await b.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 720})
                page = await ctx.new_page()
                await page.goto(web.url + "/login")
                await page.screenshot(path=str(out / "cockpit-login.png"))
                page = await browser_login(b, web, "eng1")
                await page.locator("tr[data-alarm]").first.wait_for()
                await page.screenshot(path=str(out / "cockpit-alarms.png"))
                await page.goto(web.url + "/devices/centre/cab-01")
                await page.locator("tr[data-tag]").first.wait_for()
                await page.select_option("#trend-range", "3600")
                await page.select_option("#trend-tag", "centre/cab-01/power_w")
                for _ in range(100):
                    if int(await page.locator("#trend").get_attribute("data-points") or 0) > 10:
                        break
                    await asyncio.sleep(0.05)
                await page.screenshot(path=str(out / "cockpit-faceplate.png"))
                await page.goto(web.url + "/junctions")
                await page.locator("[data-junction]").first.wait_for()
                await page.screenshot(path=str(out / "cockpit-junctions.png"))
                await page.goto(web.url + "/schedules")
                await page.locator("#steps tbody tr").first.wait_for()
                await page.screenshot(path=str(out / "cockpit-schedules.png"))
                await page.goto(web.url + "/system")
                await page.locator("[data-group]").first.wait_for()
                await page.screenshot(path=str(out / "cockpit-system.png"))
                await page.goto(web.url + "/map")
                await page.wait_for_function("() => window.scadaMap && window.scadaMap.ready")
                await page.wait_for_selector("#live.on")
                await page.screenshot(path=str(out / "cockpit-map.png"))
                await b.close()
        finally:
            await web.runtime.stop()


def report(out: Path) -> None:
    for p in sorted(out.glob("cockpit-*.png")):
        print(f"wrote {p} ({p.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"))
    target = Path(ap.parse_args().out)
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
    report(target)
