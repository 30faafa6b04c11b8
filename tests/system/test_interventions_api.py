"""Work orders through the web API on a running server (real HTTPS on loopback): lifecycle
with illegal transitions refused (409), roles and areas, idempotency keys, automatic orders from
alarms with repeats attaching, maintenance mode (alarms shelved while in progress, back after),
close refused until the fault clears (or an audited override), survival across a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scada.audit import AuditLog
from tests.fixtures.interventions import CAB, FAR, LUM, PASSWORDS, POLE, start_city, wait_for

REPO = Path(__file__).resolve().parents[2]


async def login(web: Any, user: str) -> tuple[Any, dict[str, str]]:
    c = web.client()
    r = await c.post("/api/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"]}


def audit(web: Any, action_prefix: str = "wo.") -> list[dict[str, Any]]:
    return [r for r in AuditLog.read(str(web.runtime.operations.audit.path)) if str(r.get("action", "")).startswith(action_prefix)]


async def test_lifecycle_roles_idempotency_and_restart(tmp_path) -> None:
    web = await start_city(tmp_path)
    try:
        op, h = await login(web, "op1")
        viewer, hv = await login(web, "viewer1")
        north, hn = await login(web, "north1")
        # viewer may not create: 403, audited
        r = await viewer.post("/api/wo", json={"devices": [POLE]}, headers=hv)
        assert r.status_code == 403 and r.json()["error"] == "BadUserAccessDenied"
        # another area's user does not even see the device
        r = await north.post("/api/wo", json={"devices": [POLE]}, headers=hn)
        assert r.status_code == 404
        # malformed bodies: clear 400s
        assert (await op.post("/api/wo", content=b"{nope", headers=h)).status_code == 400
        assert (await op.post("/api/wo", json={"devices": []}, headers=h)).status_code == 400
        r = await op.post("/api/wo", json={"devices": [POLE], "priority": 9}, headers=h)
        assert r.status_code == 400 and "priority" in r.json()["detail"]
        r = await op.post("/api/wo", json={"devices": [POLE], "trade": "plumber"}, headers=h)
        assert r.status_code == 400 and "trade" in r.json()["detail"]
        # create, with an idempotency key twice: one order
        body = {"devices": [POLE], "priority": 2, "trade": "civil_works", "title": "Pole hit by a van", "key": "k-1"}
        r = await op.post("/api/wo", json=body, headers=h)
        assert r.status_code == 201, r.text
        wo = r.json()["data"]["order"]
        assert wo["state"] == "draft" and wo["area"] == "centre" and wo["site"] == POLE
        assert wo["due_repair"] - wo["created"] == 24 * 3600  # default SLA of priority 2
        r2 = await op.post("/api/wo", json=body, headers=h)
        assert r2.json()["data"]["order"]["id"] == wo["id"]
        assert len(web.runtime.services["interventions"].store.orders) == 1
        oid = wo["id"]
        # illegal transition: 409 with the allowed ones
        r = await op.post(f"/api/wo/{oid}/transition", json={"to": "closed"}, headers=h)
        assert r.status_code == 409 and "approved" in r.json()["detail"]
        r = await op.post(f"/api/wo/{oid}/transition", json={"to": "sleeping"}, headers=h)
        assert r.status_code == 400
        for to in ("approved", "scheduled"):
            r = await op.post(f"/api/wo/{oid}/transition", json={"to": to, "comment": "ok"}, headers=h)
            assert r.status_code == 200, r.text
        r = await op.post(f"/api/wo/{oid}/assign", json={"crew": "crew-a"}, headers=h)
        assert r.status_code == 200 and r.json()["data"]["order"]["crew"] == "crew-a"
        assert (await op.post(f"/api/wo/{oid}/assign", json={"crew": "nobody"}, headers=h)).status_code == 404
        # a note and a part; a photo that is not an image is refused
        assert (await op.post(f"/api/wo/{oid}/record", json={"op": "note", "text": "bring a crane"}, headers=h)).status_code == 200
        assert (await op.post(f"/api/wo/{oid}/record", json={"op": "part", "ref": "POLE-8M", "qty": 1}, headers=h)).status_code == 200
        r = await op.post(f"/api/wo/{oid}/record", json={"op": "photo", "photo": "aGVsbG8="}, headers=h)
        assert r.status_code == 400 and "JPEG" in r.json()["detail"]
        # the detail: journal with who and from where
        d = (await op.get(f"/api/wo/{oid}")).json()
        ops_ = [(x["op"], x.get("to")) for x in d["journal"]]
        assert ops_ == [("create", None), ("transition", "approved"), ("transition", "scheduled"), ("assign", None),
                        ("note", None), ("part", None)]
        assert all(x["user"] == "op1" and x["via"].startswith("web 127.0.0.1") for x in d["journal"])
        a = audit(web)
        assert [x["action"] for x in a if x["outcome"] == "Good"] == [
            "wo.create", "wo.transition", "wo.transition", "wo.assign", "wo.transition", "wo.transition"]
        assert any(x["action"] == "wo.create" and x["outcome"] == "BadUserAccessDenied" and x["user"] == "viewer1" for x in a)
        assert any(x["action"] == "wo.transition" and x["outcome"] == "BadInvalidState" for x in a)
        # lists
        assert (await op.get("/api/wo?state=scheduled")).json()["total"] == 1
        assert (await north.get("/api/wo")).json()["total"] == 0
        for c in (op, viewer, north):
            await c.aclose()
    finally:
        await web.runtime.stop()
    # restart on the same state directory: the order and its history are back
    web = await start_city(tmp_path)
    try:
        svc = web.runtime.services["interventions"]
        wo2 = svc.store.orders[oid]
        assert wo2.state == "scheduled" and wo2.crew == "crew-a" and [n["text"] for n in wo2.notes] == ["bring a crane"]
        op, h = await login(web, "op1")
        r = await op.post("/api/wo", json=body, headers=h)  # the key survives the restart
        assert r.json()["data"]["order"]["id"] == oid and len(svc.store.orders) == 1
        r = await op.post("/api/wo", json={"devices": [FAR]}, headers=h)
        assert r.json()["data"]["order"]["id"] == "WO-000002"
        await op.aclose()
    finally:
        await web.runtime.stop()


async def test_alarm_orders_maintenance_mode_and_verified_close(tmp_path) -> None:
    web = await start_city(tmp_path)
    try:
        svc = web.runtime.services["interventions"]
        eng = web.runtime.operations.alarms
        aid = f"{LUM}/lamp_failure"
        web.feed({f"{LUM}/lamp_failure": 1})
        wo = await wait_for(lambda: svc.store.open_for(LUM, "lamp_failure"), "the automatic order")
        assert wo.origin == "alarm" and wo.trade == "electrician" and wo.alarms == [aid] and wo.site == CAB
        assert [s["text"] for s in wo.checklist] == ["Check the cabinet's contactor", "Create a work order"]
        # the repeat alarm attaches to the open order
        web.feed({f"{LUM}/lamp_failure": 0})
        web.feed({f"{LUM}/lamp_failure": 1})
        await wait_for(lambda: wo.repeats == 1, "the repeat to attach")
        assert len(svc.store.orders) == 1
        op, h = await login(web, "op1")
        await op.post("/api/alarms/ack", json={"alarm_id": aid}, headers=h)
        await wait_for(lambda: wo.acked_at is not None, "the acknowledgement time")
        for to in ("approved", "scheduled", "in_progress"):
            assert (await op.post(f"/api/wo/{wo.id}/transition", json={"to": to}, headers=h)).status_code == 200
        # maintenance mode: the luminaire's alarm is shelved with the order's reference
        v = eng.view(eng.by_id.get(aid))
        assert v.state == "Shelved"
        alarms = (await op.get("/api/alarms?view=shelved")).json()
        assert any(a["alarm_id"] == aid for a in alarms["alarms"])
        # procedure of an alarm on a device under works: no action
        p = (await op.get(f"/api/procedures/{aid}")).json()
        assert p["condition"] == "under_works" and p["steps"][0]["id"] == "no_action"
        assert (await op.post(f"/api/wo/{wo.id}/transition", json={"to": "completed"}, headers=h)).status_code == 200
        # completed: the alarm is back (the fault remains)
        v = eng.view(eng.by_id.get(aid))
        assert v.state in ("UnackActive", "AckActive") and not v.shelved
        r = await op.post(f"/api/wo/{wo.id}/transition", json={"to": "closed"}, headers=h)
        assert r.status_code == 409 and aid in r.json()["detail"]
        r = await op.post(f"/api/wo/{wo.id}/transition", json={"to": "closed", "override": True}, headers=h)
        assert r.status_code == 400 and "comment" in r.json()["detail"]
        r = await op.post(f"/api/wo/{wo.id}/transition",
                          json={"to": "closed", "override": True, "comment": "lamp replaced, driver fault pending"},
                          headers=h)
        assert r.status_code == 200
        over = [x for x in audit(web) if x.get("override") and x["outcome"] == "Good"]
        assert len(over) == 1 and over[0]["user"] == "op1" and over[0]["comment"].startswith("lamp replaced")
        # a new occurrence after closing opens a new order
        web.feed({f"{LUM}/lamp_failure": 0})
        web.feed({f"{LUM}/lamp_failure": 1})
        wo2 = await wait_for(lambda: svc.store.open_for(LUM, "lamp_failure"), "a second order")
        assert wo2.id != wo.id
        await op.aclose()
    finally:
        await web.runtime.stop()


async def test_cli_through_the_running_server(tmp_path) -> None:
    import asyncio
    import os
    import sys

    repo = REPO
    web = await start_city(tmp_path)

    async def cli(*args: str, user: str = "op1") -> tuple[int, str]:
        env = {**os.environ, "SCADA_OPCUA_PASSWORD": PASSWORDS[user]}
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "wo", *args, "--site", str(tmp_path / "site.yaml"), "--user", user,
            cwd=str(repo), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(p.communicate(), 120)
        return p.returncode, out.decode()

    try:
        rc, out = await cli("create", POLE, "--priority", "2", "--trade", "civil_works", "--title", "Leaning pole")
        assert rc == 0 and "WO-000001 created" in out, out
        rc, out = await cli("transition", "WO-000001", "closed")
        assert rc != 0 and "409" in out and "cannot become closed" in out
        rc, out = await cli("transition", "WO-000001", "approved", "-m", "go")
        assert rc == 0, out
        rc, out = await cli("assign", "WO-000001", "--crew", "crew-a", "--planned", "2026-01-03")
        assert rc == 0 and "for 2026-01-03" in out, out
        rc, out = await cli("assign", "WO-000001", "--crew", "crew-a", "--planned", "3 Jan")
        assert rc != 0 and "YYYY-MM-DD" in out
        rc, out = await cli("list")
        assert rc == 0 and "WO-000001" in out and "approved" in out and "crew-a" in out and "1 orders" in out
        assert "2026-01-03" in out
        rc, out = await cli("transition", "WO-000001", "scheduled", "--planned", "2026-01-04")
        assert rc == 0, out
        assert web.runtime.services["interventions"].store.orders["WO-000001"].planned == "2026-01-04"
        rc, out = await cli("show", "WO-000001", "--json")
        d = json.loads(out)
        assert d["state"] == "scheduled" and d["planned"] == "2026-01-04"
        assert [r["op"] for r in d["journal"]] == ["create", "transition", "assign", "transition"]
        assert all(r["via"].startswith("web 127.0.0.1") for r in d["journal"])
        rc, out = await cli("create", POLE, user="viewer1")
        assert rc != 0 and "403" in out
    finally:
        await web.runtime.stop()
