"""Open311 under hostile input, on a running server (real HTTPS on loopback): 1,000 malformed or
hostile requests (wrong types, huge bodies, bad coordinates, missing or wrong api_key, XML
entity bombs and external entities, bad paths, formats and dates) each get a 4xx in the spec's
error format, nothing is stored (the store and its files, the work orders, the audit log's
citizen reports), every one is counted in ``_system/open311/refused``, and the server still
answers; then the rate limits per address and per api_key answer 429 with Retry-After."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from scada.audit import AuditLog
from tests.fixtures.open311 import add_client, o311, start_open311

SPOT = {"lat": "47.32203", "long": "5.04102"}

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<service_request><api_key>KEY</api_key><service_code>graffiti</service_code><jurisdiction_id>Dijon</jurisdiction_id>
<lat>47.32203</lat><long>5.04102</long><description>&lol9;</description></service_request>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<service_request><api_key>KEY</api_key><service_code>graffiti</service_code><jurisdiction_id>Dijon</jurisdiction_id>
<lat>47.32203</lat><long>5.04102</long><description>&x;</description></service_request>"""
DTD_ONLY = b"""<?xml version="1.0"?><!DOCTYPE service_request SYSTEM "http://127.0.0.1:9/x.dtd">
<service_request><api_key>KEY</api_key><service_code>graffiti</service_code></service_request>"""


def store_files(d: Path) -> dict[str, int]:
    """Size of each file of the report store (the journal and snapshot; not the client list)."""
    return {p.name: p.stat().st_size for p in d.glob("*.json*") if p.name != "clients.json"}


def hostile(key: str, rnd: random.Random) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx kwargs) of each kind of bad request; the test cycles through them."""
    good = {"api_key": key, "jurisdiction_id": "Dijon", "service_code": "streetlight_out",
            "attribute[lights_affected]": "one", **SPOT}

    def form(**over: Any) -> dict[str, Any]:
        d = {**good, **over}
        return {"data": {k: v for k, v in d.items() if v is not None}}

    def js(**over: Any) -> dict[str, Any]:
        d = {"api_key": key, "jurisdiction_id": "Dijon", "service_code": "streetlight_out",
             "lat": 47.32203, "long": 5.04102, "attribute": {"lights_affected": "one"}, **over}
        return {"content": json.dumps(d).encode(), "headers": {"content-type": "application/json"}}

    def xml(body: bytes) -> dict[str, Any]:
        return {"content": body.replace(b"KEY", key.encode()), "headers": {"content-type": "application/xml"}}

    P = "/open311/v2/requests.json"
    X = "/open311/v2/requests.xml"
    cases: list[tuple[str, str, dict[str, Any]]] = [
        # no or wrong api_key
        ("POST", P, form(api_key=None)),
        ("POST", X, form(api_key=None)),
        ("POST", P, form(api_key="not-a-key")),
        ("POST", P, form(api_key=key + "x")),
        ("POST", P, js(api_key=["a", "b"])),
        ("POST", P, js(api_key=12345)),
        # wrong types
        ("POST", P, js(lat=[47.3])),
        ("POST", P, js(lat={"x": 1})),
        ("POST", P, js(lat=True)),
        ("POST", P, js(long=None, lat=None)),
        ("POST", P, js(service_code=["streetlight_out"])),
        ("POST", P, js(service_code=5)),
        ("POST", P, js(attribute="lights_affected=one")),
        ("POST", P, js(attribute={"lights_affected": ["one", "several"]})),
        ("POST", P, js(attribute={"lights_affected": {"x": 1}})),
        ("POST", P, js(description={"a": "b"})),
        ("POST", P, js(email=["a@b.c"])),
        ("POST", P, {"content": b"[1, 2, 3]", "headers": {"content-type": "application/json"}}),
        ("POST", P, {"content": b"{nope", "headers": {"content-type": "application/json"}}),
        ("POST", P, {"content": b"\xff\xfe\x00bad", "headers": {"content-type": "application/json"}}),
        ("POST", P, {"content": b"a=1", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
        ("POST", P, {"content": b"a=1", "headers": {"content-type": "text/plain"}}),
        # missing or unknown fields and values
        ("POST", P, form(service_code=None)),
        ("POST", P, form(service_code="pothole")),
        ("POST", P, form(**{"attribute[lights_affected]": None})),
        ("POST", P, form(**{"attribute[lights_affected]": "all of them"})),
        ("POST", P, form(**{"attribute[colour]": "red"})),
        ("POST", P, form(jurisdiction_id=None)),
        ("POST", P, form(jurisdiction_id="Paris")),
        ("POST", P, form(email="not an email")),
        ("POST", P, form(phone="call me maybe")),
        ("POST", P, form(media_url="javascript:alert(1)")),
        ("POST", P, form(media_url="http://x/" + "a" * 1200)),
        ("POST", P, form(description="x\x00y")),
        ("POST", P, form(description="d" * 4001)),
        ("POST", P, form(first_name="n" * 101)),
        ("POST", P, {"content": "&".join(f"f{i}=1" for i in range(100)).encode(),
                     "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        # bad coordinates
        ("POST", P, form(lat="NaN")),
        ("POST", P, form(lat="inf")),
        ("POST", P, form(lat="1e999")),
        ("POST", P, form(lat="91")),
        ("POST", P, form(long="-181")),
        ("POST", P, form(lat="abc")),
        ("POST", P, form(lat="48.8566", long="2.3522")),  # Paris: outside Dijon
        ("POST", P, form(lat="47.36", long="5.00")),  # Talant's cabinet, but said to be Dijon
        ("POST", P, form(lat=None)),
        # huge bodies: above open311.max_body_bytes, and above the console's web.max_upload_bytes
        ("POST", P, form(description="x" * 17_000)),
        ("POST", P, {"content": b"a" * 300_000, "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        ("POST", X, {"content": b"<service_request>" + b"<a>1</a>" * 3000 + b"</service_request>",
                     "headers": {"content-type": "application/xml"}}),
        # XML: entity bombs, external entities, DTDs, malformed, wrong root
        ("POST", X, xml(BOMB)),
        ("POST", P, xml(BOMB)),
        ("POST", X, xml(XXE)),
        ("POST", X, xml(DTD_ONLY)),
        ("POST", X, xml(b"<service_request><lat>47.3</lat>")),
        ("POST", X, xml(b"<request><api_key>KEY</api_key></request>")),
        ("POST", X, xml(b"<service_request><lat><x>1</x></lat></service_request>")),
        # wrong methods, paths and formats
        ("PUT", P, form()),
        ("DELETE", "/open311/v2/requests/1.json", {}),
        ("POST", "/open311/v2/services.json", form()),
        ("GET", "/open311/v2/requests.html", {}),
        ("GET", "/open311/v2/requests", {}),
        ("GET", "/open311/v3/services.json", {}),
        ("GET", "/open311/v2/services/nope.json", {}),
        ("GET", "/open311/v2/services/nope.xml", {}),
        ("GET", "/open311/v2/requests/999999.json", {}),
        ("GET", "/open311/v2/tokens/nope.json", {}),
        ("GET", "/open311/v2/requests.json", {"params": {"start_date": "yesterday"}}),
        ("GET", "/open311/v2/requests.json", {"params": {"start_date": "2026-01-02T00:00:00"}}),
        ("GET", "/open311/v2/requests.json", {"params": {"start_date": "2026-02-01T00:00:00Z",
                                                        "end_date": "2026-01-01T00:00:00Z"}}),
        ("GET", "/open311/v2/requests.json", {"params": {"status": "pending"}}),
        ("GET", "/open311/v2/requests.json", {"params": {"jurisdiction_id": "Atlantis"}}),
        ("GET", "/open311/v2/requests.json", {"params": {"service_request_id": ",".join(map(str, range(300)))}}),
        ("GET", "/open311/v2/requests.json", {"params": {"q": "x" * 3000}}),
        ("GET", "/open311/v2/servicerequestupdates.xml", {"params": {"end_date": "never"}}),
    ]
    rnd.shuffle(cases)
    return cases


@pytest.mark.slow
@pytest.mark.timeout(600)  # 1,000 HTTPS requests on a shared 2-core machine: bounded in count, not time
async def test_a_thousand_hostile_requests_refused_nothing_stored(tmp_path) -> None:
    web = await start_open311(tmp_path)
    svc = o311(web)
    try:
        key = await add_client(web, "app")
        c = web.client()
        store_dir = Path(svc.dir)
        files_before = store_files(store_dir)
        n_requests, n_updates = len(svc.store), len(svc.store.updates)
        orders = len(web.runtime.services["interventions"].store.orders)
        refused0 = svc.counters["refused"]
        cases = hostile(key, random.Random(21))
        statuses: dict[int, int] = {}
        for i in range(1000):
            method, path, kw = cases[i % len(cases)]
            r = await c.request(method, path, **kw)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            # the spec's error format, in the format the path asks for
            if path.endswith(".xml"):
                root = ET.fromstring(r.content)
                assert root.tag == "errors" and root.find("error/code").text == str(r.status_code)
                assert root.find("error/description").text
            else:
                body = r.json()
                assert body[0]["code"] == r.status_code and body[0]["description"], body
            assert "Traceback" not in r.text
        assert statuses.keys() >= {400, 403, 404, 405, 413, 415}, statuses
        # nothing stored: the store, its files, the work orders, no citizen report audited
        assert len(svc.store) == n_requests and len(svc.store.updates) == n_updates
        assert store_files(store_dir) == files_before
        assert len(web.runtime.services["interventions"].store.orders) == orders
        assert not [e for e in AuditLog.read(str(web.runtime.operations.audit.path)) if e["action"] == "wo.citizen"]
        # every refusal counted, in the health counter published as _system/open311/refused
        assert svc.counters["refused"] - refused0 == 1000
        svc.publish_health()
        assert web.runtime.tagdb.read(web.runtime.tagdb.index("_system/open311/refused")).value == svc.counters["refused"]
        # the server still answers, and a good report still goes through
        assert (await c.get("/open311/v2/services.json")).status_code == 200
        r = await c.post("/open311/v2/requests.json", data={
            "api_key": key, "jurisdiction_id": "Dijon", "service_code": "streetlight_out",
            "attribute[lights_affected]": "one", **SPOT})
        assert r.status_code == 201, r.text
        assert len(svc.store) == n_requests + 1
        await c.aclose()
    finally:
        await web.runtime.stop()


async def test_rate_limits_per_address_and_per_key(tmp_path) -> None:
    web = await start_open311(tmp_path, per_address=8, per_key=3)
    svc = o311(web)
    try:
        key = await add_client(web, "app")
        c = web.client()
        form = {"api_key": key, "jurisdiction_id": "Dijon", "service_code": "graffiti", **SPOT}
        codes = [(await c.post("/open311/v2/requests.json", data=form)).status_code for _ in range(4)]
        assert codes == [201, 201, 201, 429]  # per key: 3 a minute
        codes = [(await c.get("/open311/v2/services.json")).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]  # per address: 8 a minute, all requests counted
        r = await c.get("/open311/v2/services.xml")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert ET.fromstring(r.content).find("error/code").text == "429"
        assert svc.counters["rate_limited"] == 3
        # the window slides on the server's clock
        await web.clock.advance(61)
        assert (await c.get("/open311/v2/services.json")).status_code == 200
        await c.aclose()
    finally:
        await web.runtime.stop()
