"""The services citizens may report (GeoReport v2 "GET Service List" / "GET Service Definition").

Each service says which devices a report is about (device kinds), which alarms mean the same
fault (a report near a device with such an alarm active is "already known"), the fault class
and trade of the work order it creates, and its attributes (the spec's service definition:
``variable``, ``code``, ``datatype``, ``required``, ``datatype_description``, ``order``,
``description``, ``values``). The site file may change the alarms, priority and trade of a
service or switch it off (``open311.services``); the catalogue itself is code, so the answers
are the same on every server of a city.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")


@dataclass(frozen=True, slots=True)
class Attribute:
    code: str
    description: str
    datatype: str = "string"
    required: bool = False
    variable: bool = True
    datatype_description: str = ""
    values: tuple[tuple[str, str], ...] = ()  # (key, name) for the list datatypes
    max_length: int = 100

    def as_dict(self, order: int) -> dict[str, Any]:
        d: dict[str, Any] = {"variable": self.variable, "code": self.code, "datatype": self.datatype,
                             "required": self.required, "datatype_description": self.datatype_description or None,
                             "order": order, "description": self.description}
        if self.values:
            d["values"] = [{"key": k, "name": n} for k, n in self.values]
        return d


@dataclass(frozen=True, slots=True)
class Service:
    code: str
    name: str
    description: str
    group: str
    keywords: tuple[str, ...]
    #: device kinds a report of this service is about (``None``: any device)
    kinds: tuple[str, ...] | None
    #: alarm names meaning the same fault; the first is the fault class of the orders created
    alarms: tuple[str, ...]
    trade: str | None
    priority: int
    attributes: tuple[Attribute, ...] = field(default_factory=tuple)

    @property
    def fault(self) -> str:
        return self.alarms[0]

    def summary(self) -> dict[str, Any]:
        """One row of GET services (spec: service_code, service_name, description, metadata,
        type, keywords, group)."""
        return {"service_code": self.code, "service_name": self.name, "description": self.description,
                "metadata": bool(self.attributes), "type": "realtime", "keywords": ",".join(self.keywords),
                "group": self.group}

    def definition(self) -> dict[str, Any]:
        return {"service_code": self.code,
                "attributes": [a.as_dict(i + 1) for i, a in enumerate(self.attributes)]}


_LUMINAIRE_NO = Attribute(
    "luminaire_number", "The number on the pole or the luminaire's label, if you can read it",
    datatype_description="as painted on the pole, e.g. lum-03", max_length=60)
_YES_NO = (("yes", "Yes"), ("no", "No"))

CATALOGUE: tuple[Service, ...] = (
    Service("streetlight_out", "Street light out", "A street light stays dark at night.", "Street lighting",
            ("street light", "lamp", "dark", "out"), ("luminaire",), ("lamp_failure", "driver_failure", "led_fault", "offline"), "electrician", 3,
            (_LUMINAIRE_NO,
             Attribute("lights_affected", "How many lights are dark?", "singlevaluelist", True,
                       values=(("one", "Just this one"), ("several", "Several in a row"),
                               ("street", "The whole street"))))),
    Service("streetlight_flicker", "Street light flickering", "A street light flickers or cycles on and off.",
            "Street lighting", ("street light", "flicker", "blinking"), ("luminaire",),
            ("lamp_flicker", "led_short", "lamp_failure"), "electrician", 4, (_LUMINAIRE_NO,)),
    Service("streetlight_day_burning", "Street light on in daytime", "A street light is lit during the day.",
            "Street lighting", ("street light", "day burning", "daytime"), ("luminaire", "cabinet"),
            ("day_burning",), "electrician", 4, (_LUMINAIRE_NO,)),
    Service("traffic_light_fault", "Traffic light fault", "A traffic signal is dark, stuck, flashing or damaged.",
            "Traffic signals", ("traffic light", "signal", "junction"), ("junction",),
            ("signal_fault", "conflict", "flashing", "mains_failure", "lamp_failure"), "signal_technician", 2,
            (Attribute("fault_type", "What is wrong with the signal?", "singlevaluelist", True,
                       values=(("dark", "Dark"), ("stuck", "Stuck on one colour"), ("flashing", "Flashing"),
                               ("damaged", "Damaged or turned"))),
             Attribute("approach", "Which approach (street you come from)?", max_length=120))),
    Service("pole_damaged", "Pole damaged", "A lighting or signal pole is leaning, hit, open or has wires showing.",
            "Street furniture", ("pole", "column", "leaning", "wires"), ("luminaire", "other", "junction", "cabinet"),
            ("damaged",), "civil_works", 2,
            (_LUMINAIRE_NO,
             Attribute("hazard", "Is it dangerous now (leaning over the road, wires showing)?", "singlevaluelist",
                       True, values=_YES_NO))),
    Service("graffiti", "Graffiti", "Graffiti on a cabinet, a pole or a signal.", "Street furniture",
            ("graffiti", "tag", "paint"), None, ("graffiti",), "painter", 4,
            (Attribute("offensive", "Is it offensive?", "singlevaluelist", False, values=_YES_NO),
             Attribute("surface", "What is painted (cabinet, pole, signal)?", max_length=60))),
)


def catalogue(options: dict[str, Any]) -> dict[str, Service]:
    """The site's services: the catalogue with ``open311.services`` applied (disabled ones
    dropped, alarms/priority/trade replaced)."""
    unknown = sorted(set(options) - {s.code for s in CATALOGUE})
    if unknown:
        raise ValueError(f"open311.services: unknown service {', '.join(unknown)}; expected one of "
                         f"{', '.join(s.code for s in CATALOGUE)}")
    out: dict[str, Service] = {}
    for s in CATALOGUE:
        o = options.get(s.code)
        if o is not None:
            if not o.enabled:
                continue
            s = replace(s, alarms=tuple(o.alarms) if o.alarms else s.alarms,
                        priority=o.priority or s.priority, trade=o.trade or s.trade)
        out[s.code] = s
    return out
