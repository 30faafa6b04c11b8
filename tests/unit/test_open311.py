"""Open311's pure parts (no sockets): body parsing (form, JSON, XML through defusedxml), report
validation with the reason in each refusal, the spec's XML shapes and error format, the store
(journal, snapshot, torn line, reload, purge compaction), client keys, the catalogue options
and the ``citizen-app`` service role."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET

import pytest

from scada.open311 import protocol as P
from scada.open311.clients import Clients, key_hash
from scada.open311.services import CATALOGUE, catalogue
from scada.open311.store import Store
from scada.operations import roles as R
from scada.sections.open311 import Open311Config, ServiceOptions

SERVICES = catalogue({})


def post(**kw):
    base = {"service_code": "streetlight_out", "lat": "47.3", "long": "5.04",
            "attribute": {"lights_affected": "one"}}
    return P.validate_post({**base, **kw}, SERVICES, max_description=4000, max_media_url=1000)


def refused(status: int, match: str, fn, *a, **kw) -> None:
    with pytest.raises(P.Open311Error, match=match) as e:
        fn(*a, **kw)
    assert e.value.status == status


def test_form_json_and_xml_bodies_give_the_same_fields() -> None:
    form = P.fields_from_body(b"service_code=graffiti&lat=47.3&long=5.04&attribute%5Boffensive%5D=no",
                              "application/x-www-form-urlencoded; charset=utf-8")
    js = P.fields_from_body(json.dumps({"service_code": "graffiti", "lat": "47.3", "long": "5.04",
                                        "attribute": {"offensive": "no"}}).encode(), "application/json")
    xml = P.fields_from_body(b"<service_request><service_code>graffiti</service_code><lat>47.3</lat>"
                             b"<long>5.04</long><attribute><offensive>no</offensive></attribute></service_request>",
                             "text/xml")
    assert form == js == xml == {"service_code": "graffiti", "lat": "47.3", "long": "5.04",
                                 "attribute": {"offensive": "no"}}


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><service_request>&b;</service_request>',
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><service_request>&x;</service_request>',
    b'<!DOCTYPE service_request SYSTEM "http://127.0.0.1:9/a.dtd"><service_request/>',
])
def test_xml_dtds_and_entities_are_refused_not_expanded(body: bytes) -> None:
    refused(400, "XML refused", P.fields_from_body, body, "application/xml")


def test_body_refusals() -> None:
    refused(400, "not valid JSON", P.fields_from_body, b"{x", "application/json")
    refused(400, "must be an object", P.fields_from_body, b"[]", "application/json")
    refused(400, "not UTF-8", P.fields_from_body, b"\xff", "application/json")
    refused(415, "unsupported Content-Type", P.fields_from_body, b"a", "text/plain")
    refused(400, "malformed XML", P.fields_from_body, b"<service_request>", "application/xml")
    refused(400, "expected a <service_request>", P.fields_from_body, b"<x/>", "application/xml")
    refused(400, "malformed form|too many", P.fields_from_body, "&".join(["a=1"] * 100).encode(), "")


def test_a_good_report_and_what_is_wrong_with_bad_ones() -> None:
    r = post(email=" a@b.example ", description="dark", media_url="https://img.example/1.jpg",
             **{"attribute": {"lights_affected": "one", "luminaire_number": "lum-03"}})
    assert r["service"].code == "streetlight_out" and (r["lat"], r["long"]) == (47.3, 5.04)
    assert r["email"] == "a@b.example" and r["attributes"] == {"lights_affected": "one", "luminaire_number": "lum-03"}
    refused(400, "service_code is required", post, service_code=None)
    refused(400, "not found", post, service_code="pothole")
    refused(400, "lat and long are required", post, lat=None)
    refused(400, "outside", post, lat="91")
    refused(400, "outside", post, lat="nan")
    refused(400, "outside", post, long="inf")
    refused(400, "not a number", post, lat="north")
    refused(400, "expected a number", post, lat=[1])
    refused(400, "expected a number", post, lat=True)
    refused(400, "expected text", post, description={"a": 1})
    refused(400, "at most 4000", post, description="x" * 4001)
    refused(400, "control characters", post, description="a\x00b")
    refused(400, "http", post, media_url="javascript:alert(1)")
    refused(400, "at most 1000", post, media_url="https://x/" + "a" * 1000)
    refused(400, "not an e-mail", post, email="nobody")
    refused(400, "phone", post, phone="call me")
    refused(400, "is required", post, attribute={})
    refused(400, "is not one of", post, attribute={"lights_affected": "all"})
    refused(400, "not an attribute", post, attribute={"lights_affected": "one", "colour": "red"})
    refused(400, "one value expected", post, attribute={"lights_affected": ["one", "street"]})
    refused(400, "expected attribute", post, attribute="x")


def test_xml_answers_have_the_spec_shapes_and_errors_the_spec_format() -> None:
    body, ctype = P.render("services", [s.summary() for s in CATALOGUE], "xml")
    root = ET.fromstring(body)
    assert ctype.startswith("text/xml") and root.tag == "services"
    assert [e.tag for e in root] == ["service"] * len(CATALOGUE)
    assert root[0].findtext("metadata") == "true" and root[0].findtext("type") == "realtime"
    d = ET.fromstring(P.render("definition", CATALOGUE[0].definition(), "xml")[0])
    assert d.tag == "service_definition"
    vals = d.find("attributes").findall("attribute")[1].find("values").findall("value")
    assert (vals[0].findtext("key"), vals[0].findtext("name")) == ("one", "Just this one")
    body, ctype = P.errors_body(403, "invalid api_key", "xml")
    e = ET.fromstring(body)
    assert (e.tag, e.findtext("error/code"), e.findtext("error/description")) == ("errors", "403", "invalid api_key")
    body, ctype = P.errors_body(400, "lat: bad", "json")
    assert json.loads(body) == [{"code": 400, "description": "lat: bad"}] and ctype == "application/json"


def test_public_request_never_carries_personal_data() -> None:
    r = {"id": "1", "status": "open", "service_name": "Graffiti", "service_code": "graffiti", "requested": 0.0,
         "lat": 1.0, "long": 2.0, "personal": {"email": "a@b.c", "phone": "123"}}
    out = P.public_request(r, None)
    assert not set(out) & set(P.PERSONAL) and "a@b.c" not in json.dumps(out)
    assert out["requested_datetime"] == "1970-01-01T00:00:00+00:00"


def test_dates_and_lists() -> None:
    assert P.parse_datetime("1970-01-01T00:01:00Z", "start_date") == 60.0
    refused(400, "time zone", P.parse_datetime, "2026-01-01T00:00:00", "start_date")
    refused(400, "W3C", P.parse_datetime, "yesterday", "start_date")
    assert P.query_list("1, 2,,3", "ids") == ["1", "2", "3"]
    refused(400, "at most 200", P.query_list, ",".join(map(str, range(201))), "ids")


def _rec(rid: str, ts: float, email: str | None = None) -> dict:
    return {"id": rid, "token": "t" + rid, "requested": ts, "updated": ts, "status": "open",
            "personal": {"email": email} if email else None}


async def test_store_journal_snapshot_reload_and_purge(tmp_path) -> None:
    s = Store(str(tmp_path / "o"), snapshot_every=1000)
    s.load()
    async with s.lock:
        rid = s.new_id()
        await s.commit([{"op": "request", "ts": 1.0, "request": _rec(rid, 1.0, "x@y.z"),
                         "update": s.update_row(rid, 1.0, "open", "received")}])
        await s.commit([{"op": "change", "id": rid, "ts": 2.0, "fields": {"order": "WO-1", "status": "closed"},
                         "update": s.update_row(rid, 2.0, "closed", "Repaired.")}])
    # a torn last line (a crash mid-write) is skipped and counted
    await asyncio.to_thread(_append, s.journal_path, b'{"op":"change","id":"1","ts":3')
    t = Store(s.directory)
    t.load()
    assert t.stats["bad_lines"] == 1 and t.requests[rid]["status"] == "closed" and t.by_order == {"WO-1": [rid]}
    assert [u["update_id"] for u in t.updates] == [1, 2] and t.tokens == {"t1": rid}
    assert t.new_id() == "2" and t.update_row("2", 4.0, "open", "")["update_id"] == 3
    # purge: personal data gone from memory and from both files (the journal is compacted)
    async with s.lock:
        await s.commit([{"op": "purge", "ts": 5.0, "ids": [rid]}])
    assert s.requests[rid]["personal"] is None
    for p in (s.journal_path, s.snapshot_path):
        assert "x@y.z" not in await asyncio.to_thread(_read, p)
    s.reload()
    assert s.requests[rid]["personal"] is None and s.requests[rid]["status"] == "closed" and len(s.updates) == 2


def _append(p: str, data: bytes) -> None:
    with open(p, "ab") as f:
        f.write(data)


def _read(p: str) -> str:
    with open(p, encoding="utf-8") as f:
        return f.read()


def test_client_keys_are_stored_hashed(tmp_path) -> None:
    c = Clients(str(tmp_path / "clients.json"))
    key = c.add("fixmystreet", "apps@example", 0.0)
    assert len(key) >= 40 and key not in _read(c.path) and key_hash(key) in _read(c.path)
    assert c.authenticate(key) == "fixmystreet" and c.authenticate(key + "x") is None and c.authenticate(None) is None
    assert "key_sha256" not in c.rows()["fixmystreet"]
    with pytest.raises(ValueError, match="already exists"):
        c.add("fixmystreet", "", 0.0)
    with pytest.raises(ValueError, match="client name"):
        c.add("bad name/..", "", 0.0)
    c.remove("fixmystreet")
    assert c.authenticate(key) is None


def test_catalogue_options_and_config() -> None:
    s = catalogue({"streetlight_out": ServiceOptions(alarms=["lamp_dark"], priority=2), "graffiti": ServiceOptions(enabled=False)})
    assert "graffiti" not in s and s["streetlight_out"].fault == "lamp_dark" and s["streetlight_out"].priority == 2
    with pytest.raises(ValueError, match="unknown service pothole"):
        catalogue({"pothole": ServiceOptions()})
    cfg = Open311Config.model_validate({"enabled": True, "retention": "30d", "rate": {"window": "2min"},
                                        "jurisdictions": {"Dijon": {"bbox": [47.2, 4.9, 47.4, 5.1]}}})
    assert cfg.retention == 30 * 86400 and cfg.rate.window == 120
    with pytest.raises(ValueError, match="south < north"):
        Open311Config.model_validate({"jurisdictions": {"Dijon": {"bbox": [47.4, 4.9, 47.2, 5.1]}}})


def test_citizen_app_may_only_file_citizen_reports() -> None:
    assert [a.name for a in R.ACTIONS if R.allows("citizen-app", a.name)] == ["wo.citizen"]
    assert R.allows("operator", "wo.citizen") and not R.allows("viewer", "wo.citizen")
    assert "citizen-app" in R.markdown().splitlines()[0]


def test_site_file_errors_name_file_and_line(tmp_path) -> None:
    from scada.errors import ConfigError
    from scada.loader import load_site

    p = tmp_path / "site.yaml"
    p.write_text("site: {name: x, latitude: 47.3, longitude: 5.0}\n"
                 "areas: [{id: centre, municipality: Dijon}]\n"
                 "open311:\n"
                 "  enabled: true\n"
                 "  retention: forever\n"
                 "  jurisdictions:\n"
                 "    Paris: {bbox: [48.8, 2.2, 48.9, 2.4]}\n"
                 "  services:\n"
                 "    streetlight_outt: {priority: 2}\n")
    with pytest.raises(ConfigError) as e:
        load_site(p)
    text = str(e.value)
    assert f"{p}:5: open311.retention" in text and "duration" in text
    p.write_text(p.read_text().replace("  retention: forever\n", ""))
    with pytest.raises(ConfigError) as e:
        load_site(p)
    text = str(e.value)
    assert f"{p}:6: open311.jurisdictions.Paris: 'Paris' is no area's municipality" in text
    assert f"{p}:8: open311.services.streetlight_outt: unknown Open311 service" in text
    assert "did you mean 'streetlight_out'" in text
