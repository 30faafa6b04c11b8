"""Open311 GeoReport v2 on a running server (real HTTPS on loopback, the console's port): every
answer validated against the published GeoReport v2 JSON schemas (tests/data/open311/, CC BY
3.0) and the spec's XML structure; three reports of the same dark street light make one work
order (origin citizen) with two reports attached, through the operator API with the client
application's identity; closing the order closes all three; the FixMyStreet updates feed shows
each change once; a report next to an active alarm is "already known"; personal data never in
public answers and purged after the retention period."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from scada.audit import AuditLog
from tests.fixtures.interventions import CAB, JUNC, PASSWORDS, wait_for
from tests.fixtures.open311 import add_client, cli, o311, start_open311

DATA = Path(__file__).resolve().parents[1] / "data" / "open311"
SPOT = {"lat": "47.32203", "long": "5.04102"}  # a few metres from cab-01 and its luminaires
EMAIL = "jeanne.citizen@mail.example"


def _schemas() -> tuple[Registry, dict[str, Any]]:
    docs = {p.name: json.loads(p.read_text()) for p in (DATA / "georeport-v2").glob("*.json")}
    docs |= {f"extra/{p.name}": json.loads(p.read_text()) for p in (DATA / "extra").glob("*.json")}
    reg = Registry().with_resources(
        (name, Resource.from_contents(doc, default_specification=DRAFT7)) for name, doc in docs.items())
    return reg, docs


REGISTRY, DOCS = _schemas()


def valid(data: Any, schema: str) -> None:
    """Validate against a vendored schema (``swagger.json#Name`` = one of its definitions, per item)."""
    if schema.startswith("swagger.json#"):
        sch = {"type": "array", "items": DOCS["swagger.json"]["definitions"][schema.split("#")[1]]}
    else:
        sch = {"$ref": schema}
    jsonschema.Draft7Validator(sch, registry=REGISTRY, format_checker=jsonschema.FormatChecker()).validate(data)
    for row in data if isinstance(data, list) else [data]:  # date-time without rfc3339-validator installed
        for k, v in row.items():
            if k.endswith("datetime") and v is not None:
                assert datetime.fromisoformat(v).tzinfo is not None, (k, v)


def xml_rows(body: bytes, root: str, item: str | None) -> list[dict[str, Any]]:
    """The spec's XML structure: ``<root><item><field>text</field>...</item>...</root>``; the
    rows as {field: text or None}."""
    el = ET.fromstring(body)
    assert el.tag == root, el.tag
    items = [el] if item is None else list(el)
    assert all(i.tag == item for i in items) if item else True
    return [{c.tag: (c.text if not len(c) else c) for c in i} for i in items]


def same(json_row: dict[str, Any], xml_row: dict[str, Any]) -> None:
    assert set(json_row) == set(xml_row), (set(json_row) ^ set(xml_row))
    for k, v in json_row.items():
        if isinstance(v, (list, dict)):
            continue
        want = None if v is None else ("true" if v is True else "false" if v is False else str(v))
        got = xml_row[k]
        if isinstance(v, float):
            assert float(got) == v, k
        else:
            assert got == want, (k, got, want)


def read_text(p: Path) -> str:
    return p.read_text(encoding="utf-8")


async def login(web: Any, user: str) -> tuple[Any, dict[str, str]]:
    c = web.client()
    r = await c.post("/api/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return c, {"X-CSRF-Token": r.json()["csrf"]}


async def test_three_reports_one_order_close_and_updates(tmp_path) -> None:
    web = await start_open311(tmp_path)
    svc = o311(web)
    try:
        key = await add_client(web, "fixmystreet")
        c = web.client()
        # ---- services, their definitions: JSON against the published schemas, XML structure
        r = await c.get("/open311/v2/services.json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        services = r.json()
        valid(services, "services.json")
        codes = [s["service_code"] for s in services]
        assert {"streetlight_out", "streetlight_flicker", "streetlight_day_burning", "traffic_light_fault",
                "pole_damaged", "graffiti"} <= set(codes)
        x = await c.get("/open311/v2/services.xml")
        assert x.headers["content-type"].startswith("text/xml")
        for j, xr in zip(services, xml_rows(x.content, "services", "service"), strict=True):
            same(j, xr)
        for code in codes:
            d = (await c.get(f"/open311/v2/services/{code}.json")).json()
            valid(d, "service-definition.json")
            xd = xml_rows((await c.get(f"/open311/v2/services/{code}.xml")).content, "service_definition", None)[0]
            assert xd["service_code"] == code
            assert [a.findtext("code") for a in xd["attributes"].findall("attribute")] == [
                a["code"] for a in d["attributes"]]
        sl = (await c.get("/open311/v2/services/streetlight_out.json")).json()
        assert [a["code"] for a in sl["attributes"]] == ["luminaire_number", "lights_affected"]
        disc = (await c.get("/open311/discovery.json")).json()
        assert disc["endpoints"][0]["url"].endswith("/open311/v2")

        # ---- three reports of the same dark street light
        before_orders = len(web.runtime.services["interventions"].store.orders)
        answers = []
        for i in range(3):
            form = {"api_key": key, "jurisdiction_id": "Dijon", "service_code": "streetlight_out",
                    "attribute[lights_affected]": "one", "description": f"dark since yesterday ({i})",
                    "email": EMAIL, "first_name": "Jeanne", "phone": "+33 6 00 00 00 0" + str(i), **SPOT}
            if i == 0:
                form["attribute[luminaire_number]"] = "lum-02"
            fmt = "xml" if i == 2 else "json"
            r = await c.post(f"/open311/v2/requests.{fmt}", data=form)
            assert r.status_code == 201, r.text
            if fmt == "json":
                valid(r.json(), "swagger.json#RequestResponse")
                answers.append(r.json()[0])
            else:
                row = xml_rows(r.content, "service_requests", "request")[0]
                answers.append(row)
        wos = web.runtime.services["interventions"]
        assert len(wos.store.orders) == before_orders + 1
        wo = next(iter(wos.store.orders.values()))
        assert wo.origin == "citizen" and wo.devices == [f"{CAB}/lum-02"] and wo.fault == "lamp_failure"
        assert wo.trade == "electrician" and wo.created_by == "open311:fixmystreet"
        assert answers[0]["service_notice"].startswith("Thank you: work order " + wo.id)
        for a in answers[1:]:
            assert a["service_notice"].startswith("Already known") and wo.id in a["service_notice"]
        assert [n["text"] for n in wo.notes] == [f"citizen report {answers[1]['service_request_id']} "
                                                 "(streetlight_out) attached",
                                                 f"citizen report {answers[2]['service_request_id']} "
                                                 "(streetlight_out) attached"]
        ids = [a["service_request_id"] for a in answers]
        # the operator API saw the client application's identity, and audited each report
        audit = [e for e in AuditLog.read(str(web.runtime.operations.audit.path)) if e["action"] == "wo.citizen"]
        assert [(e["user"], e["role"], e["outcome"]) for e in audit] == [
            ("open311:fixmystreet", "citizen-app", "Good")] * 3
        assert all(e["via"].startswith("open311 127.0.0.1") for e in audit)

        # ---- GET requests: schemas, no personal data, expected time from the order's SLA
        r = await c.get("/open311/v2/requests.json", params={"jurisdiction_id": "Dijon"})
        rows = r.json()
        valid(rows, "requests.json")
        assert sorted(x["service_request_id"] for x in rows) == sorted(ids)
        assert all(x["status"] == "open" and x["expected_datetime"] for x in rows)
        assert datetime.fromisoformat(rows[0]["expected_datetime"]).timestamp() == wo.due_repair
        for body in (r.text, (await c.get("/open311/v2/requests.xml", params={"jurisdiction_id": "Dijon"})).text):
            assert EMAIL not in body and "Jeanne" not in body and "+33" not in body
        one = await c.get(f"/open311/v2/requests/{ids[1]}.xml")
        xr = xml_rows(one.content, "service_requests", "request")
        jr = (await c.get(f"/open311/v2/requests/{ids[1]}.json")).json()
        valid(jr, "requests.json")
        same(jr[0], xr[0])
        tok = (await c.get(f"/open311/v2/tokens/{answers[0]['token']}.json")).json()
        valid(tok, "swagger.json#TokenResponse")
        assert tok[0]["service_request_id"] == ids[0]
        # filters
        assert (await c.get("/open311/v2/requests.json", params={"service_request_id": f"{ids[0]},{ids[2]}"})).json()[0][
            "service_request_id"] in (ids[0], ids[2])
        assert (await c.get("/open311/v2/requests.json", params={"status": "closed", "jurisdiction_id": "Dijon"})).json() == []
        assert (await c.get("/open311/v2/requests.json", params={"service_code": "graffiti", "jurisdiction_id": "Dijon"})).json() == []

        # ---- the order goes through its lifecycle and closes: all three requests close
        op, h = await login(web, "op1")
        for to in ("approved", "scheduled", "in_progress", "completed"):
            r = await op.post(f"/api/wo/{wo.id}/transition", json={"to": to}, headers=h)
            assert r.status_code == 200, r.text
        assert (await op.post(f"/api/wo/{wo.id}/assign", json={"crew": "crew-a"}, headers=h)).status_code == 200
        r = await op.post(f"/api/wo/{wo.id}/transition", json={"to": "closed", "resolution": "lamp replaced"},
                          headers=h)
        assert r.status_code == 200, r.text
        await svc.idle()
        rows = (await c.get("/open311/v2/requests.json", params={"jurisdiction_id": "Dijon"})).json()
        valid(rows, "requests.json")
        assert [x["status"] for x in rows] == ["closed"] * 3
        assert {x["status_notes"] for x in rows} == {"Repaired: lamp replaced."}
        assert all(x["updated_datetime"] for x in rows)

        # ---- the updates feed: each change once per request, in order, stable across reads
        feed = (await c.get("/open311/v2/servicerequestupdates.json", params={"jurisdiction_id": "Dijon"})).json()
        valid(feed, "extra/request-updates.json")
        again = (await c.get("/open311/v2/servicerequestupdates.json", params={"jurisdiction_id": "Dijon"})).json()
        assert again == feed
        assert len({u["update_id"] for u in feed}) == len(feed)
        for rid in ids:
            mine = [u for u in feed if u["service_request_id"] == rid]
            # received/attached, approved, scheduled, in progress, completed, closed (the assignment and
            # the notes change nothing a citizen sees)
            assert len(mine) == 6, mine
            assert [u["status"] for u in mine] == ["open"] * 5 + ["closed"]
        xf = xml_rows((await c.get("/open311/v2/servicerequestupdates.xml",
                                   params={"jurisdiction_id": "Dijon"})).content,
                      "service_requests_updates", "request_update")
        for j, xr in zip(feed, xf, strict=True):
            same(j, xr)
        # a start_date after everything: nothing
        late = (await c.get("/open311/v2/servicerequestupdates.json",
                            params={"start_date": "2100-01-01T00:00:00Z", "jurisdiction_id": "Dijon"})).json()
        assert late == []

        # ---- the store survives a reload (a standby taking over) and keeps personal data apart
        n_before = len(svc.store)
        await svc.reload()
        assert len(svc.store) == n_before and svc.store.requests[ids[0]]["personal"]["email"] == EMAIL
        # ---- retention: after 30 days the personal data is gone, from memory and files
        assert await svc.purge(now=web.clock.time() + 29 * 86400) == 0
        assert await svc.purge(now=web.clock.time() + 31 * 86400) == 3
        assert all(r["personal"] is None for r in svc.store.requests.values())
        for name in ("journal.jsonl", "snapshot.json"):
            assert EMAIL not in read_text(Path(svc.dir) / name), name
        await op.aclose()
        await c.aclose()
    finally:
        await web.runtime.stop()


async def test_report_near_an_active_alarm_is_already_known(tmp_path) -> None:
    web = await start_open311(tmp_path)
    svc = o311(web)
    try:
        key = await add_client(web, "cityapp")
        web.feed({f"{JUNC}/crash": 1})
        eng = web.runtime.operations.alarms
        aid = f"{JUNC}/accident"
        await wait_for(lambda: eng.view(eng.by_id[aid]).active, "the accident alarm")
        c = web.client()
        report = {"api_key": key, "jurisdiction_id": "Dijon", "service_code": "traffic_light_fault",
                  "lat": 47.32206, "long": 5.04126, "attribute": {"fault_type": "dark"}}
        # a report while the alarm is active: already known; the alarm clears: the report closes
        r = await c.post("/open311/v2/requests.json", json=report)
        assert r.status_code == 201, r.text
        first = r.json()[0]["service_request_id"]
        assert svc.store.requests[first]["alarm"] == aid
        web.feed({f"{JUNC}/crash": 0})
        await wait_for(lambda: svc.store.requests[first]["status"] == "closed", "the report to close")
        row = (await c.get(f"/open311/v2/requests/{first}.json")).json()[0]
        assert row["status_notes"].startswith("The fault cleared")
        feed = (await c.get("/open311/v2/servicerequestupdates.json", params={"jurisdiction_id": "Dijon"})).json()
        assert [u["status"] for u in feed if u["service_request_id"] == first] == ["open", "closed"]
        # it comes back: a new report attaches to the active alarm again
        web.feed({f"{JUNC}/crash": 1})
        await wait_for(lambda: eng.view(eng.by_id[aid]).active, "the accident alarm again")
        r = await c.post("/open311/v2/requests.json", json=report)
        assert r.status_code == 201, r.text
        ans = r.json()[0]
        assert ans["service_notice"].startswith("Already known: the supervision system detected") and aid in ans[
            "service_notice"]
        rid = ans["service_request_id"]
        row = (await c.get(f"/open311/v2/requests/{rid}.json")).json()[0]
        v = eng.view(eng.by_id[aid])
        sla = web.runtime.services["interventions"].cfg.sla_for(v.priority).repair
        assert datetime.fromisoformat(row["expected_datetime"]).timestamp() == int(v.ts + sla)
        wos = web.runtime.services["interventions"]
        assert not [o for o in wos.store.orders.values() if o.origin == "citizen"]
        # an operator opens the order for the alarm: the report follows it
        op, h = await login(web, "op1")
        r = await op.post("/api/wo", json={"devices": [JUNC], "alarm_id": aid, "fault": "accident"}, headers=h)
        assert r.status_code == 201, r.text
        oid = r.json()["data"]["order"]["id"]
        await svc.idle()
        assert svc.store.requests[rid]["order"] == oid
        row = (await c.get(f"/open311/v2/requests/{rid}.json")).json()[0]
        assert row["status"] == "open" and row["status_notes"].startswith("A work order was opened")
        # the city lists its client apps (never their keys) and removes one: its key is refused at once
        listed = json.loads(await cli(web, "list-clients", "--json"))
        assert listed["cityapp"]["contact"] == "apps@city.example" and key not in json.dumps(listed)
        assert "key_sha256" not in listed["cityapp"]
        # a graffiti report far from any equipment is kept for the call centre, no order
        r = await c.post("/open311/v2/requests.json", json={
            "api_key": key, "jurisdiction_id": "Dijon", "service_code": "graffiti", "lat": 47.3197, "long": 5.0410})
        assert r.status_code == 201, r.text
        assert "No lighting or traffic equipment" in r.json()[0]["service_notice"]
        assert "removed" in await cli(web, "remove-client", "cityapp")
        r = await c.post("/open311/v2/requests.json", json={**report, "service_code": "graffiti"})
        assert r.status_code == 403 and r.json() == [{"code": 403, "description": "invalid api_key"}]
        await op.aclose()
        await c.aclose()
    finally:
        await web.runtime.stop()
