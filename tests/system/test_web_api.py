"""The console's JSON API over a real HTTPS socket (httpx): login, sessions, CSRF, rate limits,
areas as tenants, malformed and oversized requests, every action through the operator API."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from tests.fixtures.web import PASSWORDS, start_web

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


async def test_login_me_and_alarm_list(web):
    c, csrf = await web.login("op1")
    async with aclosing(c):
        me = (await c.get("/api/me")).json()
        assert me["user"] == "op1" and me["role"] == "operator" and me["areas"] is None
        assert me["csrf"] == csrf
        assert me["allowed"]["alarm.acknowledge"] and not me["allowed"]["alarm.shelve"]
        web.feed({"centre/cab-01/door_open": True})
        r = await c.get("/api/alarms")
        assert r.status_code == 200
        rows = r.json()["alarms"]
        assert [a["alarm_id"] for a in rows] == ["centre/cab-01/door_open"]
        assert rows[0]["isa_state"] == "unacknowledged" and rows[0]["priority"] == 1
        # acknowledge through the operator API: audited with the identity and via web
        r = await c.post("/api/alarms/ack", json={"alarm_id": "centre/cab-01/door_open"},
                         headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["ok"]
        rows = (await c.get("/api/alarms")).json()["alarms"]
        assert rows[0]["isa_state"] == "acknowledged"
    acks = [e for e in web.audit() if e["action"] == "alarm.acknowledge"]
    assert acks[-1]["user"] == "op1" and acks[-1]["outcome"] == "Good"
    assert acks[-1]["via"].startswith("web 127.0.0.1")


async def test_unauthenticated_and_cookie_flags(web):
    async with web.client() as c:
        r = await c.get("/api/alarms")
        assert r.status_code == 401
        assert r.json()["error"] == "unauthenticated"
        r = await c.get("/alarms", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = await c.post("/login", json={"user": "op1", "password": PASSWORDS["op1"]})
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie


async def test_viewer_refused_403_and_audited(web):
    web.feed({"centre/cab-01/door_open": True})
    c, csrf = await web.login("viewer1")
    async with aclosing(c):
        r = await c.post("/api/alarms/ack", json={"alarm_id": "centre/cab-01/door_open"},
                         headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
        assert r.json()["error"] == "BadUserAccessDenied"
        assert "viewer" in r.json()["detail"]
    refused = [e for e in web.audit() if e["action"] == "alarm.acknowledge"]
    assert refused and refused[-1]["user"] == "viewer1" and refused[-1]["outcome"] == "BadUserAccessDenied"


async def test_csrf_missing_or_wrong_is_403(web):
    web.feed({"centre/cab-01/door_open": True})
    c, csrf = await web.login("op1")
    async with aclosing(c):
        for headers in ({}, {"X-CSRF-Token": "nope"}):
            r = await c.post("/api/alarms/ack", json={"alarm_id": "centre/cab-01/door_open"}, headers=headers)
            assert r.status_code == 403 and r.json()["error"] == "csrf"
        assert (await c.get("/api/alarms")).json()["alarms"][0]["acked"] is False
        # the CSRF token of another session is refused too
        c2, _csrf2 = await web.login("op1")
        async with aclosing(c2):
            r = await c2.post("/api/alarms/ack", json={"alarm_id": "centre/cab-01/door_open"},
                              headers={"X-CSRF-Token": csrf})
            assert r.status_code == 403
    assert web.service.counters["csrf_refused"] == 3


async def test_restricted_user_sees_only_their_area(web):
    web.feed({"centre/cab-01/door_open": True, "north/cab-02/door_open": True})
    c, csrf = await web.login("north1")
    async with aclosing(c):
        ids = [a["alarm_id"] for a in (await c.get("/api/alarms")).json()["alarms"]]
        assert ids == ["north/cab-02/door_open"]
        devs = {d["path"] for d in (await c.get("/api/devices")).json()["devices"]}
        assert devs == {"north/cab-02", "north/j-01"}
        web.feed({"north/j-01/conflict": True})
        js = (await c.get("/api/junctions")).json()
        assert [j["path"] for j in js["junctions"]] == ["north/j-01"]
        j = js["junctions"][0]
        assert j["mode"]["value"] == 0 and j["mode"]["status_name"] == "Good" and j["plan"]["value"] == 2
        assert [g["value"] for g in j["signal_groups"]] == [1, 3] and j["faults"] == ["conflict"]
        assert [a["name"] for a in j["alarms"]] == ["conflict"]
        assert (await c.get("/api/devices/north/cab-02")).status_code == 200
        r = await c.get("/api/devices/centre/cab-01")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert (await c.get("/api/trend", params={"tag": "centre/cab-01/power_w"})).status_code == 404
        r = await c.post("/api/alarms/ack", json={"alarm_id": "centre/cab-01/door_open"},
                         headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
        r = await c.post("/api/write", json={"tag": "centre/cab-01/group_level", "value": 77},
                         headers={"X-CSRF-Token": csrf})
        assert r.status_code == 404
        sysj = (await c.get("/api/system")).json()
        assert sysj["visible"] is False and sysj["drivers"] == {} and sysj["server"] == {}
    assert not [w for w in web.writes if w[1] == 77]


async def test_malformed_and_oversized(web):
    c, csrf = await web.login("op1")
    h = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    async with aclosing(c):
        r = await c.post("/api/alarms/ack", content=b"{not json", headers=h)
        assert r.status_code == 400
        body = r.json()
        assert body["error"] == "malformed_json" and "JSON" in body["detail"]
        r = await c.post("/api/alarms/ack", content=b"[1, 2]", headers=h)
        assert r.status_code == 400
        r = await c.post("/api/alarms/ack", json={"alarm_id": 5}, headers=h)
        assert r.status_code == 400 and "alarm_id" in r.json()["detail"]
        r = await c.get("/api/alarms", params={"sort": "nonsense"})
        assert r.status_code == 400 and r.json()["error"] == "bad_parameter"
        r = await c.get("/api/trend", params={"tag": "centre/cab-01/power_w", "start": "x"})
        assert r.status_code == 400
        r = await c.post("/api/alarms/comment", content=b"{" + b" " * 10_000 + b"}", headers=h)
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        async def chunks():
            for _ in range(10):
                yield b" " * 1000

        r = await c.post("/api/alarms/comment", content=chunks(), headers=h)
        assert r.status_code == 413
        r = await c.get("/api/nothing-here")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        # the server still answers
        assert (await c.get("/api/me")).status_code == 200
    cnt = web.service.counters
    assert cnt["malformed"] >= 5 and cnt["oversized"] == 2
    web.service.publish_health()
    db = web.runtime.tagdb
    assert db.read("_system/web/oversized").value == 2


async def test_login_rate_limits(tmp_path):
    w = await start_web(tmp_path, per_address=100, per_account=3)
    try:
        async with w.client() as c:
            for _ in range(3):
                r = await c.post("/login", json={"user": "eng1", "password": "wrong"})
                assert r.status_code == 401 and r.json()["error"] == "bad_credentials"
            r = await c.post("/login", json={"user": "eng1", "password": PASSWORDS["eng1"]})
            assert r.status_code == 429
            assert r.json()["error"] == "rate_limited" and "try again" in r.json()["detail"]
            assert int(r.headers["retry-after"]) > 0
            # another account from the same address is still allowed
            r = await c.post("/login", json={"user": "op1", "password": PASSWORDS["op1"]})
            assert r.status_code == 200
            # the window passes on the server's clock: allowed again
            await w.clock.advance(61)
            r = await c.post("/login", json={"user": "eng1", "password": PASSWORDS["eng1"]})
            assert r.status_code == 200
    finally:
        await w.runtime.stop()
    w2 = await start_web(tmp_path / "b", per_address=2, per_account=100)
    try:
        async with w2.client() as c:
            for u in ("op1", "eng1"):
                assert (await c.post("/login", json={"user": u, "password": "x"})).status_code == 401
            r = await c.post("/login", json={"user": "viewer1", "password": PASSWORDS["viewer1"]})
            assert r.status_code == 429 and "127.0.0.1" in r.json()["detail"]
        assert w2.service.counters["rate_limited"] == 1
    finally:
        await w2.runtime.stop()


async def test_idle_timeout_on_the_injected_clock(web):
    c, csrf = await web.login("op1")
    async with aclosing(c):
        assert (await c.get("/api/me")).status_code == 200
        await web.clock.advance(9 * 60)  # used within the 10 min idle timeout: still open
        assert (await c.get("/api/me")).status_code == 200
        # a page's periodic refresh does not keep the session alive
        await web.clock.advance(9 * 60)
        assert (await c.get("/api/alarms", headers={"X-Scada-Background": "1"})).status_code == 200
        await web.clock.advance(60 + 1)
        r = await c.get("/api/me")
        assert r.status_code == 401 and r.json()["error"] == "expired"
        r = await c.post("/api/alarms/ack", json={"alarm_id": "x"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 401


async def test_logout_closes_the_session(web):
    c, csrf = await web.login("op1")
    async with aclosing(c):
        token = c.cookies["scada_session"]
        r = await c.post("/logout", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        c.cookies.set("scada_session", token)  # the old token no longer opens anything
        assert (await c.get("/api/me")).status_code == 401
    assert len(web.service.sessions) == 0
    assert [e["action"] for e in web.audit()][-1] == "logout"


async def test_sse_stream_filters_by_area(web):
    c_all, _ = await web.login("op1")
    c_north, _ = await web.login("north1")
    got: dict[str, list[str]] = {"op1": [], "north1": []}

    async def read(c, who):
        async with c.stream("GET", "/api/stream") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "alarm":
                    got[who].append(line)
                elif kind == "hello" and line.startswith("data: "):
                    got[who].append("hello")

    tasks = [asyncio.create_task(read(c_all, "op1")), asyncio.create_task(read(c_north, "north1"))]
    try:
        await _until(lambda: got["op1"] and got["north1"], "both streams open")
        web.feed({"centre/cab-01/door_open": True})
        web.feed({"north/cab-02/door_open": True})
        await _until(lambda: len(got["op1"]) >= 3 and len(got["north1"]) >= 2, "alarm events")
        assert any("north/cab-02/door_open" in x for x in got["north1"])
        assert not any("centre/" in x for x in got["north1"])
        assert any("centre/cab-01/door_open" in x for x in got["op1"])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await c_all.aclose()
        await c_north.aclose()


async def _until(cond, what: str, within: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_schedules_and_overrides_through_the_operator_api(web):
    c, csrf = await web.login("eng1")
    h = {"X-CSRF-Token": csrf}
    async with aclosing(c):
        j = (await c.get("/api/schedules")).json()
        assert j["available"] and {a["area"] for a in j["areas"]} == {"centre"}
        assert any(s["level"] == 100 for s in j["areas"][0]["steps"])
        r = await c.post("/api/overrides", json={"areas": ["centre"], "level": 30, "minutes": 60,
                                                 "reason": "works"}, headers=h)
        assert r.status_code == 201, r.text
        oid = r.json()["data"]["id"]
        ovs = (await c.get("/api/schedules")).json()["overrides"]
        assert [o["id"] for o in ovs] == [oid] and ovs[0]["source"] == "web"
        assert (await c.post(f"/api/overrides/{oid}/cancel", headers=h)).status_code == 200
        assert (await c.get("/api/schedules")).json()["overrides"] == []
        r = await c.post("/api/overrides", json={"areas": ["centre"], "level": 300, "minutes": 60,
                                                 "reason": "x"}, headers=h)
        assert r.status_code == 400 and r.json()["error"] == "BadOutOfRange"
    c, csrf = await web.login("op1")
    async with aclosing(c):
        r = await c.post("/api/overrides", json={"areas": ["centre"], "level": 30, "minutes": 60,
                                                 "reason": "works"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403
    acts = [(e["user"], e["outcome"]) for e in web.audit() if e["action"] == "schedule.override"]
    assert ("eng1", "Good") in acts and ("op1", "BadUserAccessDenied") in acts


async def test_write_out_of_service_history_and_system(web):
    c, csrf = await web.login("eng1")
    h = {"X-CSRF-Token": csrf}
    async with aclosing(c):
        r = await c.post("/api/write", json={"tag": "centre/cab-01/group_level", "value": 40}, headers=h)
        assert r.status_code == 200 and r.json()["status_name"] == "Good"
        assert ("centre/cab-01/group_level", 40.0) in web.writes or ("centre/cab-01/group_level", 40) in web.writes
        r = await c.post("/api/write", json={"tag": "centre/cab-01/group_level", "value": 400}, headers=h)
        assert r.status_code == 400 and r.json()["error"] == "BadOutOfRange"
        r = await c.post("/api/write", json={"tag": "centre/cab-01/power_w", "value": 1}, headers=h)
        assert r.status_code == 400 and r.json()["error"] == "BadNotWritable"
        dev = (await c.get("/api/devices/centre/cab-01")).json()
        t = {x["name"]: x for x in dev["tags"]}
        assert t["group_level"]["value"] == 40 and t["group_level"]["status_name"] == "Good"
        assert t["group_level"]["source_ts"] == web.clock.time()
        web.feed({"centre/cab-01/door_open": True})
        r = await c.post("/api/devices/out-of-service", json={"device": "centre/cab-01", "oos": True,
                                                              "comment": "works"}, headers=h)
        assert r.status_code == 200
        oos = (await c.get("/api/alarms", params={"view": "out-of-service"})).json()["alarms"]
        assert [a["alarm_id"] for a in oos] == ["centre/cab-01/door_open"]
        assert oos[0]["isa_state"] == "out-of-service"
        assert (await c.get("/api/alarms")).json()["alarms"] == []
        hist = (await c.get("/api/alarms/history", params={"device": "centre/cab-01"})).json()
        assert hist["total"] >= 2 and hist["entries"][0]["ts"] >= hist["entries"][-1]["ts"]
        assert {e["event"] for e in hist["entries"]} >= {"raise", "out_of_service"}
        sysj = (await c.get("/api/system")).json()
        assert sysj["visible"] and "loop_lag_ms" in sysj["server"] and "spool_blocks" in sysj["historian"]
        assert (await c.get("/api/energy")).json()["available"] is False


async def test_plain_http_when_tls_is_off_and_a_taken_port_is_one_line(tmp_path):
    import socket

    from scada.errors import CannotListen

    w = await start_web(tmp_path / "http", tls=False)
    try:
        assert w.url.startswith("http://")
        async with w.client() as c:
            r = await c.post("/login", json={"user": "op1", "password": PASSWORDS["op1"]})
            assert r.status_code == 200
            cookie = r.headers["set-cookie"].lower()
            assert "httponly" in cookie and "secure" not in cookie
    finally:
        await w.runtime.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        with pytest.raises(CannotListen) as e:
            await start_web(tmp_path / "busy", port=busy)
    assert f"cannot listen on 127.0.0.1:{busy} for the web console" in str(e.value)
    assert "web.port in" in str(e.value)
