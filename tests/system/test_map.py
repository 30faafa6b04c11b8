"""The live map (scada/web/map_api.py, static/map.js) against a real server over HTTPS and in a
real headless Chromium: an injected fault becomes a red dot at the device's position (read back
as the canvas pixel there), acknowledging it changes its colour, a restricted user's map and API
hold no other area's device; device states follow ISA-18.2 (out of service, shelved ...); the
GIS import through the console and through the real CLI process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from commands.gis import multipart
from scada.web.map_api import ACK_ACTIVE, OOS, SHELVED, STATES, UNACK_ACTIVE, UNACK_RTN
from tests.fixtures.web import PASSWORDS, browser_login

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
DOOR = "centre/cab-01/door_open"


def rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)]


async def open_map(browser, web, user):
    first = await browser_login(browser, web, user)
    page = await first.context.new_page()  # the session cookie; the alarm page left alone
    await first.close()
    await page.goto(web.url + "/map")
    await page.wait_for_function("() => window.scadaMap && window.scadaMap.ready")
    await page.wait_for_selector("#live.on")
    return page


async def pixel_at(page, path: str) -> list[int]:
    """The colour the canvas shows at the device's projected position (after a new frame)."""
    return await page.evaluate("""async (path) => {
        const M = window.scadaMap; M.focus(path, 18);
        const f = M.frames; while (M.frames === f) await new Promise(requestAnimationFrame);
        const [x, y] = M.screenOf(path); const c = document.getElementById('map-canvas');
        const d = window.devicePixelRatio || 1;
        return Array.from(c.getContext('2d').getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data.slice(0, 3));
    }""", path)


async def state_becomes(page, path: str, state: int) -> None:
    await page.wait_for_function("([p, s]) => window.scadaMap.stateOf(p) === s", arg=[path, state])


async def test_fault_red_dot_acknowledge_and_restricted_user(web, browser):
    page = await open_map(browser, web, "op1")
    assert await page.evaluate("() => window.scadaMap.stateOf('centre/cab-01')") == 0
    colours = await page.evaluate("() => window.scadaMap.colours")
    web.feed({DOOR: True})  # the injected fault
    await state_becomes(page, "centre/cab-01", UNACK_ACTIVE)
    assert await pixel_at(page, "centre/cab-01") == rgb(colours[UNACK_ACTIVE]) == [255, 0, 0]
    # the red dot stands where the site file puts the cabinet: projected the page's way
    xy = await page.evaluate("() => window.scadaMap.screenOf('centre/cab-01')")
    size = await page.evaluate("() => [document.getElementById('map-canvas').clientWidth, document.getElementById('map-canvas').clientHeight]")
    assert abs(xy[0] - size[0] / 2) < 1 and abs(xy[1] - size[1] / 2) < 1  # focused there
    # zoomed out with clustering (forced: the test city is small): the cluster holding the
    # red device is red and counts its members
    cl = await page.evaluate("""async () => {
        const M = window.scadaMap; M.clusterAbove = 0; M.focus('centre/cab-01', 3);
        const f = M.frames; while (M.frames === f) await new Promise(requestAnimationFrame);
        const c = M.clusters; M.clusterAbove = 15000; return c; }""")
    assert [c[3:] for c in cl] == [[UNACK_ACTIVE, 6]]  # the whole town in one red cluster of 6
    # click it: the popup links to the faceplate
    await pixel_at(page, "centre/cab-01")
    box = await page.locator("#map-canvas").bounding_box()
    await page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
    link = page.locator("#map-faceplate")
    assert await link.get_attribute("href") == "/devices/centre/cab-01"
    # acknowledge through the console's API (as the alarm list does): the dot changes colour
    status = await page.evaluate(f"""async () => (await fetch('/api/alarms/ack', {{method: 'POST',
        headers: {{'Content-Type': 'application/json',
                   'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}},
        body: JSON.stringify({{alarm_id: '{DOOR}'}})}})).status""")
    assert status == 200
    await state_becomes(page, "centre/cab-01", ACK_ACTIVE)
    assert await pixel_at(page, "centre/cab-01") == rgb(colours[ACK_ACTIVE])
    # returns to normal: the dot goes back to the normal colour
    web.feed({DOOR: False})
    await state_becomes(page, "centre/cab-01", 0)
    # a restricted user: no centre device in the API answer nor on the drawn map
    north = await open_map(browser, web, "north1")
    paths = await north.evaluate("() => window.scadaMap.paths()")
    assert sorted(paths) == ["north/cab-02", "north/j-01"]
    api = await north.evaluate("async () => (await (await fetch('/api/map/devices')).json())")
    assert api["areas"][api["area"][0]] == "north" and api["n"] == 2
    assert all(api["areas"][a] == "north" for a in api["area"])
    web.feed({DOOR: True})  # another area's fault never reaches the restricted map
    web.feed({"north/cab-02/door_open": True})
    await state_becomes(north, "north/cab-02", UNACK_ACTIVE)
    assert await north.evaluate("() => window.scadaMap.stateOf('centre/cab-01')") is None
    assert await pixel_at(north, "north/cab-02") == [255, 0, 0]
    st = await north.evaluate("async () => (await (await fetch('/api/map/states')).json()).d")
    assert [d[0] for d in st] == ["north/cab-02"]


async def test_states_api_isa_distinctions(web):
    c, _csrf = await web.login("eng1")
    try:
        r = await c.get("/api/map/states")
        assert r.status_code == 200 and r.json()["d"] == [] and r.json()["states"] == list(STATES)
        web.feed({DOOR: True, "centre/cab-01/lum-01/lamp_failure": True})

        async def states():
            for _ in range(200):
                d = {p: (s, pr) for p, s, pr in (await c.get("/api/map/states")).json()["d"]}
                if len(d) >= 2:
                    return d
                await asyncio.sleep(0.02)
            return d

        d = await states()
        assert d["centre/cab-01"] == (UNACK_ACTIVE, 1) and d["centre/cab-01/lum-01"] == (UNACK_ACTIVE, 3)
        ops = web.runtime.operations
        eng = ops.identity("eng1", "test")
        assert (await ops.shelve(eng, "centre/cab-01/lum-01/lamp_failure", "lamp known", 3600)).ok
        assert (await ops.acknowledge(eng, DOOR)).ok
        web.feed({DOOR: False})  # returns to normal acknowledged: normal
        assert (await ops.set_out_of_service(eng, "north/j-01", True, "works")).ok
        d = {p: (s, pr) for p, s, pr in (await c.get("/api/map/states")).json()["d"]}
        assert d == {"centre/cab-01/lum-01": (SHELVED, 3), "north/j-01": (OOS, 4)}
        # returned to normal unacknowledged
        web.feed({"north/cab-02/door_open": True})
        web.feed({"north/cab-02/door_open": False})
        d = {p: (s, pr) for p, s, pr in (await c.get("/api/map/states")).json()["d"]}
        assert d["north/cab-02"] == (UNACK_RTN, 1)
        # the devices table: compact, gzipped, cached with an ETag, refused without a session
        r = await c.get("/api/map/devices", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and r.json()["n"] == 6
        r2 = await c.get("/api/map/devices", headers={"If-None-Match": r.headers["etag"]})
        assert r2.status_code == 304
    finally:
        await c.aclose()
    async with web.client() as anon:
        r = await anon.get("/api/map/devices")
        assert r.status_code == 401 and "error" in r.json()


def _fc(*pts) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": i}, "geometry": {"type": "Point", "coordinates": [lon, lat]}}
        for i, lat, lon in pts]}).encode()


async def test_gis_import_through_the_console_and_the_cli(web):
    body = _fc(("centre/cab-01/lum-02", 47.3231, 5.0425), ("ghost", 47.3, 5.0))
    files = {"file": ("lamps.geojson", body, "application/geo+json")}
    v, vcsrf = await web.login("viewer1")
    e, csrf = await web.login("eng1")
    try:
        r = await v.post("/api/gis/import", files=files, headers={"X-CSRF-Token": vcsrf})
        assert r.status_code == 403 and r.json()["error"] == "BadUserAccessDenied"
        r = await e.post("/api/gis/import", files=files)  # no CSRF token
        assert r.status_code == 403 and r.json()["error"] == "csrf"
        r = await e.post("/api/gis/import", content=b"garbage", headers={"X-CSRF-Token": csrf,
                                                                       "Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code == 400 and "multipart" in r.json()["detail"]
        big, ctype = multipart({}, "big.geojson", b" " * 10_000)
        r = await e.post("/api/gis/import", content=big, headers={"X-CSRF-Token": csrf, "Content-Type": ctype})
        assert r.status_code == 413  # web.max_upload_bytes of the test site: 4096
        before = (await e.get("/api/map/devices")).json()
        r = await e.post("/api/gis/import", files=files, data={"id_field": "id"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        assert (d["updated"], d["unmatched"], d["rejected"]) == (1, 1, 0)
        after = (await e.get("/api/map/devices")).json()
        assert after["rev"] == before["rev"] + 1 and after["lat"] != before["lat"]
        r = await e.post("/api/gis/import", files=files, headers={"X-CSRF-Token": csrf})
        assert r.json()["data"]["unchanged"] == 1 and r.json()["data"]["updated"] == 0  # idempotent
    finally:
        await v.aclose()
        await e.aclose()
    # the real CLI, as an engineer runs it: logs in to the console, pins its certificate
    f = web.tmp / "moved.geojson"
    f.write_bytes(_fc(("centre/cab-01/lum-03", 47.3233, 5.0427)))
    env = {**os.environ, "SCADA_OPCUA_PASSWORD": PASSWORDS["eng1"]}
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "gis", "import", str(f), "--site", str(web.tmp / "site.yaml"),
        "--user", "eng1", cwd=str(REPO), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 0, out.decode() + err.decode()
    assert "1 updated" in out.decode()
    assert web.runtime.site.device("centre/cab-01/lum-03").location.lat == 47.3233
    audit = [a for a in web.audit() if a["action"] == "gis.import"]
    assert [(a["user"], a["outcome"]) for a in audit][-1] == ("eng1", "Good")


def _png(rgb_colour: tuple[int, int, int], size: int = 256) -> bytes:
    """A solid-colour PNG (zlib and CRCs by hand: the test needs no imaging library)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb_colour) * size
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))


async def test_local_tile_directory_as_base_map(tmp_path, browser, monkeypatch):
    """web.map.tiles naming a directory: the console serves its tiles, the map draws them under
    the devices (no internet needed)."""
    import math

    import tests.fixtures.web as fx

    monkeypatch.setattr(fx, "SITE", fx.SITE.replace(
        "web:\n  enabled: true\n", "web:\n  enabled: true\n  map: {{tiles: tiles/, attribution: Test tiles}}\n"))
    lat, lon, z = 47.322, 5.041, 15  # centre/cab-01
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    d = tmp_path / "tiles" / str(z) / str(x)
    d.mkdir(parents=True)
    (d / f"{y}.png").write_bytes(_png((10, 200, 30)))
    web = await fx.start_web(tmp_path)
    try:
        page = await open_map(browser, web, "viewer1")
        cfg = await page.evaluate("async () => (await fetch('/api/map/config')).json()")
        assert cfg["tiles"] == "/map/tiles/{z}/{x}/{y}.png" and cfg["attribution"] == "Test tiles"
        assert await page.evaluate("async () => (await fetch('/map/tiles/15/1/2.png')).status") == 204  # none
        assert await page.evaluate("async () => (await fetch('/map/tiles/a/1/2.png')).status") == 400
        colour = await page.evaluate("""async () => {
            const M = window.scadaMap; M.focus('centre/cab-01', 15);
            for (let k = 0; k < 100; k++) {
                const f = M.frames; while (M.frames === f) await new Promise(requestAnimationFrame);
                const [x, y] = M.screenOf('centre/cab-01'); const d = window.devicePixelRatio || 1;
                const px = document.getElementById('map-canvas').getContext('2d')
                    .getImageData(Math.round((x + 30) * d), Math.round((y + 30) * d), 1, 1).data;
                if (px[1] === 200) return Array.from(px.slice(0, 3));
                await new Promise((r) => setTimeout(r, 50)); M.focus('centre/cab-01', 15);
            }
            return null; }""")
        assert colour == [10, 200, 30]  # the tile, drawn beside the device
        assert await page.locator("#map-attr").inner_text() == "Test tiles"
    finally:
        await web.runtime.stop()


async def test_gis_import_from_the_map_page(web, browser, tmp_path):
    """An engineer imports a file from the map page; the device moves on the drawn map (the
    table is reloaded live); a viewer has no import form."""
    viewer = await open_map(browser, web, "viewer1")
    assert await viewer.locator("#map-gis").is_hidden()
    page = await open_map(browser, web, "eng1")
    await page.locator("#map-gis").wait_for(state="visible")
    lum = "centre/cab-01/lum-01"
    before = await page.evaluate("(p) => window.scadaMap.focus(p, 16) && window.scadaMap.screenOf(p)", lum)
    rev0 = await page.evaluate("() => window.scadaMap.rev")
    f = tmp_path / "poles.geojson"
    f.write_bytes(_fc((lum, 47.3225, 5.0420), ("centre/cab-01/lum-09", 47.3, 5.0), ("nowhere", 95.0, 5.0)))
    await page.set_input_files("#gis-file", str(f))
    await page.click("#gis-submit")
    report = page.locator("#gis-report")
    await page.wait_for_function("() => /created|refused/.test(document.getElementById('gis-report').textContent)")
    text = await report.inner_text()
    assert "1 updated" in text and "1 unmatched" in text and "1 rejected" in text, text
    await page.wait_for_function("(r) => window.scadaMap.rev > r", arg=rev0)  # map.reload, live
    after = await page.evaluate("(p) => window.scadaMap.focus(p, 16) && window.scadaMap.screenOf(p)", lum)
    assert after == before  # focused on its new place ...
    moved = await page.evaluate("""(p) => { const M = window.scadaMap; return M.screenOf('centre/cab-01'); }""", lum)
    assert moved != after  # ... no longer on its cabinet's
    assert [a["outcome"] for a in web.audit() if a["action"] == "gis.import"] == ["Good"]
