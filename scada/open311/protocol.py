"""Open311 GeoReport v2 on the wire: request parsing and validation, JSON and XML answers,
the spec's error format. Pure: no I/O, no clock (times are passed in).

Spec: GeoReport v2 (wiki.open311.org/GeoReport_v2): ``POST requests`` takes
``application/x-www-form-urlencoded`` fields (``service_code``, ``lat``, ``long``,
``address_string``, ``address_id``, ``email``, ``device_id``, ``account_id``, ``first_name``,
``last_name``, ``phone``, ``description``, ``media_url``, ``attribute[code]``); we also take a
JSON object with the same keys and an XML ``<service_request>`` element (parsed by defusedxml:
a DTD, entity declarations or external references are refused with 400, never expanded).
Errors are ``[{"code": 400, "description": "..."}]`` or
``<errors><error><code>400</code><description>...</description></error></errors>``.
Answers never carry the reporter's personal data (email, names, phone, device and account ids).
The FixMyStreet extension ``GET servicerequestupdates`` answers ``<service_requests_updates>``
of ``<request_update>`` (update_id, service_request_id, status, updated_datetime, description,
media_url).
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from .services import Service

FORMATS = ("json", "xml")
PERSONAL = ("email", "device_id", "account_id", "first_name", "last_name", "phone")
#: text fields of a POST and their longest accepted length (description and media_url: config)
TEXT_LIMITS = {"address_string": 300, "address_id": 100, "email": 254, "device_id": 100, "account_id": 100,
               "first_name": 100, "last_name": 100, "phone": 30, "api_key": 200, "jurisdiction_id": 100,
               "service_code": 60}
MAX_FIELDS = 60
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}$")
_PHONE = re.compile(r"^\+?[0-9 ().\-]{3,30}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ATTR = re.compile(r"^attribute\[([A-Za-z0-9_\-]{1,60})\](\[\])?$")


class Open311Error(ValueError):
    """A request refused: HTTP ``status`` and the spec's error ``description``."""

    def __init__(self, status: int, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.headers = headers or {}


# ----------------------------------------------------------------------------- input
def fields_from_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The POST's fields (str -> str, ``attribute`` -> {code: str | list[str]}) from a form, a
    JSON object or an XML ``<service_request>`` body; :class:`Open311Error` 400/415 otherwise."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Open311Error(400, "the body is not UTF-8") from None
    raw: dict[str, Any]
    if ctype in ("", "application/x-www-form-urlencoded"):
        try:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                           max_num_fields=MAX_FIELDS)
        except ValueError as e:
            raise Open311Error(400, f"malformed form body: {e}") from None
        raw = {}
        for k, v in pairs:
            raw.setdefault(k, []).append(v)
        raw = {k: (v[0] if len(v) == 1 else v) for k, v in raw.items()}
    elif ctype == "application/json":
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise Open311Error(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise Open311Error(400, "the JSON body must be an object of request fields")
    elif ctype in ("application/xml", "text/xml"):
        raw = _xml_fields(body)
    else:
        raise Open311Error(415, f"unsupported Content-Type {ctype!r}: send application/x-www-form-urlencoded "
                                "(the spec), application/json or application/xml")
    if len(raw) > MAX_FIELDS:
        raise Open311Error(400, f"too many fields ({len(raw)}; at most {MAX_FIELDS})")
    out: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    for k, v in raw.items():
        m = _ATTR.match(k)
        if m:
            attrs[m.group(1)] = v
        elif k == "attribute" and isinstance(v, dict):
            for ak, av in v.items():
                if not isinstance(ak, str) or not re.match(r"^[A-Za-z0-9_\-]{1,60}$", ak):
                    raise Open311Error(400, f"attribute code {str(ak)[:60]!r}: expected letters, digits, '_' or '-'")
                attrs[ak] = av
        else:
            out[k] = v
    out["attribute"] = attrs
    return out


def _xml_fields(body: bytes) -> dict[str, Any]:
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        root = DET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise Open311Error(400, f"XML refused: {type(e).__name__} (DTDs, entities and external references "
                                "are not accepted)") from None
    except ET.ParseError as e:
        raise Open311Error(400, f"malformed XML: {e}") from None
    if root.tag != "service_request":
        raise Open311Error(400, f"XML body: expected a <service_request> element, got <{root.tag[:40]}>")
    raw: dict[str, Any] = {}
    for child in root:
        if child.tag == "attribute":
            raw["attribute"] = {a.tag: (a.text or "") for a in child}
        elif len(child):
            raise Open311Error(400, f"XML body: <{child.tag[:40]}> must hold text, not elements")
        else:
            raw[child.tag] = child.text or ""
    return raw


def _text(fields: dict[str, Any], name: str, limit: int) -> str | None:
    v = fields.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise Open311Error(400, f"{name}: expected text, got {type(v).__name__}")
    s = str(v).strip()
    if len(s) > limit:
        raise Open311Error(400, f"{name}: {len(s)} characters; at most {limit}")
    if _CONTROL.search(s):
        raise Open311Error(400, f"{name}: control characters are not accepted")
    return s or None


def _coord(fields: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = fields.get(name)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise Open311Error(400, f"{name}: expected a number (WGS84 degrees), got {type(v).__name__}")
    try:
        x = float(v)
    except ValueError:
        raise Open311Error(400, f"{name}: {str(v)[:40]!r} is not a number (WGS84 degrees)") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise Open311Error(400, f"{name}: {str(v)[:40]} is outside [{lo:g}, {hi:g}]")
    return x


def validate_post(fields: dict[str, Any], services: dict[str, Service], *, max_description: int,
                  max_media_url: int) -> dict[str, Any]:
    """The checked report: service, lat, long, texts, attributes, personal data apart.
    :class:`Open311Error` 400 saying what is wrong (the jurisdiction is checked by the caller)."""
    for k in fields:
        if not isinstance(k, str) or len(k) > 80:
            raise Open311Error(400, "field names must be short text")
    code = _text(fields, "service_code", TEXT_LIMITS["service_code"])
    if not code:
        raise Open311Error(400, "service_code is required (GET services.json lists them)")
    svc = services.get(code)
    if svc is None:
        raise Open311Error(400, f"service_code {code[:60]!r} not found; expected one of {', '.join(services)}")
    lat = _coord(fields, "lat", -90, 90)
    lon = _coord(fields, "long", -180, 180)
    if lat is None or lon is None:
        raise Open311Error(400, "lat and long are required (WGS84): this server does not geocode "
                                "address_string or address_id")
    out: dict[str, Any] = {"service": svc, "lat": lat, "long": lon}
    for name, limit in TEXT_LIMITS.items():
        if name in ("service_code", "api_key", "jurisdiction_id"):
            continue
        out[name] = _text(fields, name, limit)
    out["description"] = _text(fields, "description", max_description)
    media = _text(fields, "media_url", max_media_url)
    if media is not None:
        u = urllib.parse.urlsplit(media)
        if u.scheme not in ("http", "https") or not u.netloc or any(c.isspace() for c in media):
            raise Open311Error(400, "media_url: expected an http(s) URL")
    out["media_url"] = media
    if out["email"] is not None and not _EMAIL.match(out["email"]):
        raise Open311Error(400, "email: not an e-mail address")
    if out["phone"] is not None and not _PHONE.match(out["phone"]):
        raise Open311Error(400, "phone: expected digits, spaces, + - ( ) .")
    out["attributes"] = _attributes(svc, fields.get("attribute") or {})
    return out


def _attributes(svc: Service, given: Any) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise Open311Error(400, "attribute: expected attribute[code]=value fields")
    known = {a.code: a for a in svc.attributes}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise Open311Error(400, f"attribute {unknown[0][:60]!r} is not an attribute of {svc.code} "
                                f"(GET services/{svc.code}.json lists them)")
    out: dict[str, Any] = {}
    for a in svc.attributes:
        v = given.get(a.code)
        if v is None or v == "" or v == []:
            if a.required:
                raise Open311Error(400, f"attribute[{a.code}] is required for {svc.code}: {a.description}")
            continue
        if a.datatype == "multivaluelist":
            vs = v if isinstance(v, list) else [v]
        else:
            if isinstance(v, list):
                raise Open311Error(400, f"attribute[{a.code}]: one value expected")
            vs = [v]
        clean = []
        for x in vs:
            if isinstance(x, bool) or not isinstance(x, (str, int, float)):
                raise Open311Error(400, f"attribute[{a.code}]: expected text, got {type(x).__name__}")
            s = str(x).strip()
            if len(s) > a.max_length or _CONTROL.search(s):
                raise Open311Error(400, f"attribute[{a.code}]: at most {a.max_length} characters of text")
            if a.values and s not in {k for k, _ in a.values}:
                raise Open311Error(400, f"attribute[{a.code}]: {s[:40]!r} is not one of "
                                        f"{', '.join(k for k, _ in a.values)}")
            if a.datatype == "number":
                try:
                    float(s)
                except ValueError:
                    raise Open311Error(400, f"attribute[{a.code}]: expected a number") from None
            clean.append(s)
        out[a.code] = clean if a.datatype == "multivaluelist" else clean[0]
    return out


def parse_datetime(v: str, name: str) -> float:
    """A W3C datetime (``2010-01-01T00:00:00Z``, with an offset) as epoch seconds."""
    try:
        dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name}: {v[:40]!r} is not a W3C datetime such as 2026-01-31T08:00:00Z") from None
    if dt.tzinfo is None:
        raise Open311Error(400, f"{name}: give a time zone (Z or +01:00)")
    return dt.timestamp()


def query_list(v: str | None, name: str, limit: int = 200) -> list[str] | None:
    if v is None or v == "":
        return None
    items = [x.strip() for x in v.split(",") if x.strip()]
    if len(items) > limit:
        raise Open311Error(400, f"{name}: at most {limit} values")
    if any(len(x) > 80 for x in items):
        raise Open311Error(400, f"{name}: values too long")
    return items


# ----------------------------------------------------------------------------- output
def iso(ts: float | None, tz: ZoneInfo | None = None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz or UTC).isoformat(timespec="seconds")


def public_request(r: dict[str, Any], tz: ZoneInfo | None) -> dict[str, Any]:
    """A stored request as GET requests shows it: the spec's fields, no personal data."""
    return {"service_request_id": r["id"], "status": r["status"], "status_notes": r.get("status_notes"),
            "service_name": r["service_name"], "service_code": r["service_code"],
            "description": r.get("description"), "agency_responsible": r.get("agency"),
            "service_notice": r.get("service_notice"), "requested_datetime": iso(r["requested"], tz),
            "updated_datetime": iso(r.get("updated"), tz), "expected_datetime": iso(r.get("expected"), tz),
            "address": r.get("address_string"), "address_id": r.get("address_id"), "zipcode": None,
            "lat": r["lat"], "long": r["long"], "media_url": r.get("media_url")}


def public_update(u: dict[str, Any], tz: ZoneInfo | None) -> dict[str, Any]:
    return {"update_id": str(u["update_id"]), "service_request_id": u["id"], "status": u["status"],
            "updated_datetime": iso(u["ts"], tz), "description": u.get("description") or "",
            "media_url": None}


def _value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _fill(parent: ET.Element, d: dict[str, Any]) -> None:
    for k, v in d.items():
        el = ET.SubElement(parent, k)
        if k == "attributes" and isinstance(v, list):
            for a in v:
                _fill(ET.SubElement(el, "attribute"), a)
        elif k == "values" and isinstance(v, list):
            for a in v:
                _fill(ET.SubElement(el, "value"), a)
        elif isinstance(v, dict):
            _fill(el, v)
        elif isinstance(v, list):
            for x in v:
                ET.SubElement(el, "value").text = _value(x)
        else:
            el.text = _value(v)


#: (root element, item element) of each answer in XML, by kind
XML_SHAPES = {"services": ("services", "service"), "requests": ("service_requests", "request"),
              "updates": ("service_requests_updates", "request_update"),
              "discovery": ("discovery", None), "definition": ("service_definition", None)}


def to_xml(kind: str, data: Any) -> bytes:
    root_tag, item_tag = XML_SHAPES[kind]
    root = ET.Element(root_tag)
    if item_tag is None:
        _fill(root, data)
    else:
        for row in data:
            _fill(ET.SubElement(root, item_tag), row)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def errors_body(status: int, description: str, fmt: str) -> tuple[bytes, str]:
    """The spec's error answer: JSON ``[{"code", "description"}]`` or XML ``<errors>``."""
    if fmt == "xml":
        root = ET.Element("errors")
        e = ET.SubElement(root, "error")
        ET.SubElement(e, "code").text = str(status)
        ET.SubElement(e, "description").text = description
        return (b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8"),
                "text/xml; charset=utf-8")
    return json.dumps([{"code": status, "description": description}]).encode(), "application/json"


def render(kind: str, data: Any, fmt: str) -> tuple[bytes, str]:
    if fmt == "xml":
        return to_xml(kind, data), "text/xml; charset=utf-8"
    return json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8"
