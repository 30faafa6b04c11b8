"""JSON Schema of site files, with every installed driver's mapping keys (``scada schema``).

The site model (:class:`scada.site.SiteConfig`) leaves the protocol parts free-form (a
device's ``connection``, a point's ``source``, a profile's ``options``, ``drivers.<name>``):
the drivers validate them with their own pydantic models. For editors to autocomplete those
keys too, this module merges each driver's models (found through the ``scada.drivers`` entry
points, as the loader finds them; the core imports no driver) into the schema:

* a profile whose ``protocol`` is ``modbus`` gets ``options`` = the Modbus ``ProfileOptions``,
  its points' ``source`` = the Modbus ``PointSource``, its ``connection`` defaults = the Modbus
  ``Connection`` with nothing required (JSON Schema ``if``/``then`` on the protocol);
* a device's ``connection`` is one of the drivers' ``Connection`` models (``anyOf``: the
  protocol comes from the device's profile, which a schema cannot follow);
* ``drivers.<name>`` is that driver's ``Options``.

Driver models' own definitions are kept under ``$defs`` as ``<driver>.<Model>``.
"""

from __future__ import annotations

import copy
import logging
from importlib.metadata import entry_points
from typing import Any

from .site import SiteConfig

log = logging.getLogger(__name__)

_PARTS = ("Connection", "PointSource", "ProfileOptions", "Options")


def _driver_classes() -> dict[str, type]:
    out: dict[str, type] = {}
    for ep in entry_points(group="scada.drivers"):
        try:
            out[ep.name] = ep.load()
        except (ImportError, AttributeError) as e:  # a broken driver must not break the schema
            log.warning("scada schema: driver %r (%s) failed to load: %s", ep.name, ep.value, e)
    return dict(sorted(out.items()))


def _model_schema(model: Any, prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``model``'s schema with its nested definitions moved to ``defs`` under ``prefix.``."""
    sub = model.model_json_schema(ref_template=f"#/$defs/{prefix}.{{model}}")
    for name, d in sub.pop("$defs", {}).items():
        defs[f"{prefix}.{name}"] = d
    return sub


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """The same object schema with nothing required (profile defaults, partial connections)."""
    out = copy.deepcopy(schema)
    out.pop("required", None)
    return out


def site_json_schema() -> dict[str, Any]:
    """The site-file schema with every installed driver's ``connection``/``source``/
    ``options``/``drivers.<name>`` keys, for editor autocompletion."""
    schema = SiteConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    conditions: list[dict[str, Any]] = []
    connections: list[dict[str, Any]] = []
    options: dict[str, Any] = {}
    for name, cls in _driver_classes().items():
        parts: dict[str, str] = {}
        for attr in _PARTS:
            model = getattr(cls, attr, None)
            if model is None or not hasattr(model, "model_json_schema"):
                continue
            key = f"{name}.{attr}"
            defs[key] = _model_schema(model, name, defs)
            parts[attr] = key
        then: dict[str, Any] = {}
        if "ProfileOptions" in parts:
            then["options"] = {"$ref": f"#/$defs/{parts['ProfileOptions']}"}
        if "PointSource" in parts:
            then["points"] = {"items": {"properties": {"source": {"$ref": f"#/$defs/{parts['PointSource']}"}}}}
        if "Connection" in parts:
            defs[f"{name}.ConnectionDefaults"] = _optional(defs[parts["Connection"]])
            then["connection"] = {"$ref": f"#/$defs/{name}.ConnectionDefaults"}
            connections.append({"$ref": f"#/$defs/{name}.ConnectionDefaults"})
        if then:
            conditions.append({
                "if": {"properties": {"protocol": {"const": name}}, "required": ["protocol"]},
                "then": {"properties": then},
            })
        if "Options" in parts:
            options[name] = {"$ref": f"#/$defs/{parts['Options']}"}
    if conditions:
        defs["ProfileConfig"]["allOf"] = conditions
    if connections:
        dev = defs["DeviceConfig"]["properties"]
        dev["connection"] = {**{k: v for k, v in dev["connection"].items() if k not in ("additionalProperties", "type")},
                             "anyOf": connections}
    if options:
        drv = schema["properties"]["drivers"]
        drv["properties"] = options
        drv["description"] = "site-wide options per protocol driver"
    return schema
