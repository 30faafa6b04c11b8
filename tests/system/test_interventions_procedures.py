"""A serious alarm triggers its procedure: the checklist gets the duty-manager step, and the
notification engine sends an SMS to the municipality's elected official through a real local
HTTP SMS gateway (down at first: retried until it answers) and an e-mail to a real local SMTP
server (aiosmtpd). Each step done is recorded with user, time and origin, and audited."""

from __future__ import annotations

from scada.audit import AuditLog
from tests.fixtures.alarms import http_server, smtp_server  # noqa: F401 - fixtures
from tests.fixtures.interventions import FAR, JUNC, PASSWORDS, start_city, wait_for


async def test_serious_alarm_procedure_sms_and_mail_with_retries(tmp_path, http_server, smtp_server) -> None:  # noqa: F811
    http_server.status = 503  # the SMS gateway is down when the accident happens
    web = await start_city(tmp_path, sms_url=http_server.url, smtp_port=smtp_server.port)
    try:
        svc = web.runtime.services["interventions"]
        aid = f"{JUNC}/accident"
        web.feed({f"{JUNC}/crash": 1})
        await wait_for(lambda: http_server.requests, "a first attempt at the SMS gateway")
        await wait_for(lambda: smtp_server.messages, "the e-mail to the duty manager")
        _, rcpt, mail = smtp_server.messages[0]
        assert rcpt == ["duty@city.example"] and "road accident" in mail["Subject"] and aid in mail["Subject"]
        # the gateway comes back: the channel retries (backoff on the server's clock) and delivers
        http_server.status = 200
        n_failed = len(http_server.requests)
        for _ in range(50):
            if len(http_server.requests) > n_failed:
                break
            await web.clock.advance(2)
            await wait_for(lambda: not web.runtime.services["alarms"].notifier.channels["sms_mayor_dijon"].busy, "attempt")
        assert len(http_server.requests) == n_failed + 1
        sms = http_server.requests[-1]["body"]
        assert sms["to"] == "+33600000001" and "road accident" in sms["text"]
        # the checklist shown with the alarm: class steps, the serious steps, the notification done by the server
        client, h = await _login(web, "op1")
        p = (await client.get(f"/api/procedures/{aid}")).json()
        assert p["serious"] is True and p["condition"] is None
        assert [s["text"] for s in p["steps"]][:2] == ["Check the junction's mode", "Call the duty manager"]
        notify = next(s for s in p["steps"] if s["id"] == "notify")
        assert notify["done"] and notify["user"] == "server"
        # the operator ticks the duty-manager call: user, time, where from
        r = await client.post("/api/procedures/step", json={"alarm_id": aid, "step": "x1", "key": "call-1"}, headers=h)
        assert r.status_code == 200, r.text
        r = await client.post("/api/procedures/step", json={"alarm_id": aid, "step": "x1", "key": "call-1"}, headers=h)
        step = next(s for s in r.json()["data"]["procedure"]["steps"] if s["id"] == "x1")
        assert step["done"] and step["user"] == "op1" and step["ts"] == web.clock.time()
        assert [s for s in svc.store.steps[aid] if s == "x1"] == ["x1"]
        r = await client.post("/api/procedures/step", json={"alarm_id": aid, "step": "nope"}, headers=h)
        assert r.status_code == 404
        viewer, hv = await _login(web, "viewer1")
        r = await viewer.post("/api/procedures/step", json={"alarm_id": aid, "step": "s1"}, headers=hv)
        assert r.status_code == 403
        audit = [e for e in AuditLog.read(str(web.runtime.operations.audit.path))
                 if e["action"] in ("procedure.step", "procedure.notify")]
        # the replay with the same key is answered but neither recorded nor audited again
        assert [(e["user"], e["outcome"]) for e in audit] == [
            ("server", "Good"), ("op1", "Good"), ("op1", "BadNodeIdUnknown"), ("viewer1", "BadUserAccessDenied")]
        assert all(e["via"].startswith("web 127.0.0.1") for e in audit if e["user"] == "op1")
        # a device out of service: no action, nothing sent
        eng = await _login(web, "eng1")
        r = await eng[0].post("/api/devices/out-of-service", json={"device": FAR, "oos": True, "comment": "works"},
                              headers=eng[1])
        assert r.status_code == 200
        web.feed({f"{FAR}/door_open": 1})
        await wait_for(lambda: web.runtime.operations.alarms.by_id.get(f"{FAR}/door_open") is not None, "the alarm row")
        p = (await client.get(f"/api/procedures/{FAR}/door_open")).json()
        assert p["condition"] == "out_of_service" and p["steps"][0]["id"] == "no_action"
        await svc.idle()
        assert svc.store.open_for(FAR, "door_open") is None  # no automatic order for a device under works
        for cl in (client, viewer, eng[0]):
            await cl.aclose()
    finally:
        await web.runtime.stop()


async def _login(web, user):
    c = web.client()
    r = await c.post("/api/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"]}
