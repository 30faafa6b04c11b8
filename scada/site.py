"""The typed site model: what a site file declares, validated with pydantic v2.

A site file declares the site (name, position, time zone), areas, device profiles (protocol,
connection defaults, point map, alarm templates), devices, schedules, historian, OPC UA server
and users. Loading, line-aware errors and template expansion live in :mod:`scada.loader`; this
module only defines the shapes and the expansion of a validated model into device instances.

Protocol-specific parts (a device's ``connection``, a point's ``source``, a profile's
``options`` and the site-wide ``drivers.<protocol>`` options) are free-form here and validated by
the driver's own models (``Driver.Connection``, ``Driver.PointSource``, ``Driver.ProfileOptions``,
``Driver.Options``), so the core knows no protocol.
"""

from __future__ import annotations

import os
import re
import string
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .sections.alarms import AlarmDef, AlarmsConfig
from .sections.common import Ident, Strict, check_format
from .sections.ha import HaConfig
from .sections.historian import HistorianConfig
from .sections.interventions import InterventionsConfig
from .sections.opcua import OpcUaServerConfig
from .sections.open311 import Open311Config
from .sections.schedules import SchedulesConfig
from .sections.users import UserConfig
from .sections.web import WebConfig
from .tags import DEFAULT_UA_TYPE, FUTURE_TOLERANCE, UA_TYPES, PointDef, PointSchema

DeviceKind = Literal[
    "cabinet", "luminaire", "junction", "gateway", "meter", "sensor", "controller", "other"
]


class SiteInfo(Strict):
    name: str
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    timezone: str = "Europe/Paris"
    state_dir: str = "state"
    #: seconds a device's source timestamp may lie ahead of the server's clock; later ones are
    #: clamped to the server's time with BadInvalidTimestamp (docs/devices/field-data.md)
    future_tolerance_s: float = Field(FUTURE_TOLERANCE, ge=0, le=86400)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"expected an IANA time zone such as 'Europe/Paris'; {v!r} is not one"
            ) from None
        return v


class Area(Strict):
    id: Ident
    name: str = ""
    municipality: str = ""


class Location(Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


UaTypeName = Literal["Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64",
                     "UInt64", "Float", "Double", "String"]


class CounterConfig(Strict):
    """A cumulative counter (energy, operating hours, starts): see ``PointConfig.counter``."""

    #: largest plausible increase per second in the point's unit (e.g. Wh/s: rated W / 3600
    #: with a margin); a faster rise is held BadOutOfRange like a backwards step
    max_rate: float | None = Field(None, gt=0)


class PointConfig(Strict):
    """One point of a profile: becomes one tag per device."""

    name: Ident
    type: Literal["float", "int", "bool", "string"] = "float"
    unit: str = ""
    description: str = ""
    access: Literal["r", "rw"] = "r"
    deadband: float = Field(0.0, ge=0)
    history: bool = True
    #: normal operating range (OPC UA Part 8 §5.6.2 EURange): writes outside it are refused,
    #: readings outside it are not Good (BadOutOfRange, or Uncertain within ``valid_range``)
    eu_range: tuple[float, float] | None = None
    #: range the instrument can legitimately report (Part 8 InstrumentRange), wider than
    #: ``eu_range``: readings between the two are UncertainEngineeringUnitsExceeded, readings
    #: outside it BadOutOfRange. Default: the EU range
    valid_range: tuple[float, float] | None = None
    #: OPC UA data type the point is served as (Part 6 §5.1.2); implies ``type`` when that is
    #: not given. Default: Double, Int64, Boolean, String by ``type``
    data_type: UaTypeName | None = None
    #: a cumulative counter: ``true`` or ``{max_rate: ...}``; readings that go backwards (or
    #: rise faster than ``max_rate``) are held BadOutOfRange until the next reading tells a
    #: glitch from a restart
    counter: bool | CounterConfig = False
    #: Protocol addressing, validated by the driver's ``PointSource`` model.
    source: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _range(self) -> PointConfig:
        for key in ("eu_range", "valid_range"):
            r = getattr(self, key)
            if r is not None and r[0] >= r[1]:
                raise ValueError(f"{key}: expected [low, high] with low < high")
        if self.data_type is not None:
            implied = UA_TYPES[self.data_type]
            if "type" not in self.model_fields_set:
                self.type = implied
            elif implied != self.type:
                raise ValueError(f"data_type {self.data_type} holds a {implied} value but the point's type "
                                 f"is {self.type!r}; drop 'type' or use a {self.type} data type "
                                 f"({', '.join(k for k, v in UA_TYPES.items() if v == self.type)})")
        if self.valid_range is not None and self.eu_range is not None and not (
                self.valid_range[0] <= self.eu_range[0] and self.eu_range[1] <= self.valid_range[1]):
            raise ValueError(f"valid_range {list(self.valid_range)} must contain eu_range "
                             f"{list(self.eu_range)} (it is the wider range the instrument may report)")
        if self.counter and self.type not in ("float", "int"):
            raise ValueError(f"counter: a {self.type} point cannot be a cumulative counter")
        return self

    @property
    def counter_spec(self) -> CounterConfig | None:
        if isinstance(self.counter, CounterConfig):
            return self.counter
        return CounterConfig() if self.counter else None

    def to_pointdef(self) -> PointDef:
        lo, hi = self.eu_range if self.eu_range else (None, None)
        vlo, vhi = self.valid_range if self.valid_range else (None, None)
        c = self.counter_spec
        ua = self.data_type if self.data_type and self.data_type != DEFAULT_UA_TYPE[self.type] else None
        return PointDef(
            name=self.name, dtype=self.type, unit=self.unit, description=self.description,
            access=self.access, deadband=self.deadband, history=self.history, eu_low=lo, eu_high=hi,
            ua_type=ua, valid_low=vlo, valid_high=vhi, counter=c is not None,
            max_rate=c.max_rate if c is not None else None,
        )


class ProfileConfig(Strict):
    """A reusable device type: protocol, connection defaults, points, alarm templates."""

    protocol: str | None = None
    kind: DeviceKind = "other"
    description: str = ""
    vendor: str = ""
    connection: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    points: list[PointConfig] = Field(min_length=1)
    alarms: list[AlarmDef] = Field(default_factory=list)
    #: Free attributes every device of this profile inherits (nominal power, lamp type...).
    attrs: dict[str, Any] = Field(default_factory=dict)

    # duplicate point names are reported by the loader's semantic checks, at the point's line


class ChildGroup(Strict):
    """Devices reached through their parent (luminaires behind a cabinet or a DALI gateway)."""

    profile: str
    #: id template: ``{n}`` (the child number, from ``start``) and the fields the child's
    #: protocol gives (MQTT gateways: ``{line}``, ``{address}``), each with an optional offset
    #: and format: ``lum-{n:03d}``, ``lamp-{line}-{address+1:02d}``, ``node-{n-1}``
    id: str = "lum-{n:02d}"
    count: int = Field(ge=1, le=4096)
    start: int = Field(1, ge=0)
    attrs: dict[str, Any] = Field(default_factory=dict)
    location: Location | None = None

    @field_validator("id")
    @classmethod
    def _id_template(cls, v: str) -> str:
        return check_format(v)  # formatted once per child: no megabyte-wide fields


class DeviceConfig(Strict):
    id: Ident
    profile: str
    area: str
    description: str = ""
    enabled: bool = True
    connection: dict[str, Any] = Field(default_factory=dict)
    location: Location | None = None
    attrs: dict[str, Any] = Field(default_factory=dict)
    children: list[ChildGroup] = Field(default_factory=list)


class SiteConfig(Strict):
    site: SiteInfo
    include: list[str] = Field(default_factory=list)
    areas: list[Area] = Field(min_length=1)
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)
    devices: list[DeviceConfig] = Field(default_factory=list)
    drivers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    schedules: SchedulesConfig = Field(default_factory=SchedulesConfig)
    historian: HistorianConfig = Field(default_factory=HistorianConfig)
    opcua: OpcUaServerConfig = Field(default_factory=OpcUaServerConfig)
    users: list[UserConfig] = Field(default_factory=list)
    web: WebConfig = Field(default_factory=WebConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    interventions: InterventionsConfig = Field(default_factory=InterventionsConfig)
    open311: Open311Config = Field(default_factory=Open311Config)
    #: a redundant pair (issue 22, docs/redundancy.md); absent: a single server, always active
    ha: HaConfig | None = None


@dataclass(slots=True)
class DeviceInstance:
    """One concrete device after expansion (a cabinet, or luminaire 17 behind it).

    ``path`` is ``area/device`` or ``area/parent/child``; its tags are ``path/point``.
    ``index`` is the child's number behind its parent (Modbus block number, DALI short
    address...). ``connection`` is the profile's defaults merged with the device's (children
    inherit their parent's). ``first_tag`` is filled in when the device is registered in the
    tag database.
    """

    path: str
    id: str
    area: str
    profile_name: str
    profile: ProfileConfig
    connection: dict[str, Any]
    attrs: dict[str, Any]
    location: Location | None = None
    parent: str | None = None
    index: int | None = None
    enabled: bool = True
    first_tag: int = -1
    children: list[DeviceInstance] = field(default_factory=list)

    @property
    def protocol(self) -> str | None:
        return self.profile.protocol

    @property
    def kind(self) -> str:
        return self.profile.kind


@dataclass(slots=True)
class Site:
    """A loaded, validated site: the typed config plus what expansion derived from it."""

    config: SiteConfig
    path: str
    devices: list[DeviceInstance]
    schemas: dict[str, PointSchema]
    #: file:line of each top-level device entry (for messages that point back at the config)
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.site.name

    @property
    def state_dir(self) -> str:
        """The state directory, absolute (a relative ``site.state_dir`` is relative to the site
        file): alarm journal, audit log, historian spool, overrides, certificates."""
        d = self.config.site.state_dir
        if os.path.isabs(d):
            return d
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path)), d))

    def all_devices(self) -> Iterator[DeviceInstance]:
        for d in self.devices:
            yield d
            yield from d.children

    def by_protocol(self) -> dict[str, list[DeviceInstance]]:
        out: dict[str, list[DeviceInstance]] = {}
        for d in self.all_devices():
            if d.protocol and d.enabled:
                out.setdefault(d.protocol, []).append(d)
        return out

    def device(self, path: str) -> DeviceInstance:
        for d in self.all_devices():
            if d.path == path:
                return d
        raise KeyError(f"unknown device {path!r}")

    @property
    def tag_count(self) -> int:
        return sum(len(self.schemas[d.profile_name]) for d in self.all_devices())


_CHILD_FIELD = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d{1,9}))?\s*$")
_FMT = string.Formatter()

#: For a child profile: child number -> its protocol's id fields ({line}, {address}); from
#: ``Driver.child_segments`` (the loader looks it up, the core imports no driver).
SegmentsOf = Callable[[str], "Callable[[int], Mapping[str, int]] | None"]


def child_id(template: str, n: int, segments: Mapping[str, int] | None = None) -> str:
    """The id of child ``n``: ``{n}`` and the protocol's ``segments`` (``{line}``,
    ``{address}``), each with an optional integer offset and format spec (``{address+1:02d}``,
    ``{n-1}``). Raises ``ValueError`` naming the fields a template may use."""
    values = {"n": n, **(segments or {})}
    out: list[str] = []
    for text, name, spec, conv in _FMT.parse(template):
        out.append(text)
        if name is None:
            continue
        m = _CHILD_FIELD.match(name)
        if m is None or m.group(1) not in values:
            known = ", ".join("{" + k + "}" for k in values)
            raise ValueError(f"unknown field {{{name}}}; this child group can use {known}, each "
                             "with an offset ({n-1}, {address+1}) and a format ({n:03d})")
        v = values[m.group(1)] + (int(m.group(2) + m.group(3)) if m.group(2) else 0)
        out.append(format(str(v) if conv else v, spec or ""))
    return "".join(out)


def expand(config: SiteConfig, path: str = "<site>", segments: SegmentsOf | None = None) -> Site:
    """Turn a validated config into device instances and point schemas (one per profile).

    ``segments(profile)`` gives the id fields of a child of that profile (None: ``{n}`` only).
    """
    schemas = {
        name: PointSchema(name, tuple(p.to_pointdef() for p in prof.points))
        for name, prof in config.profiles.items()
    }
    devices: list[DeviceInstance] = []
    for dc in config.devices:
        prof = config.profiles[dc.profile]
        conn = {**prof.connection, **dc.connection}
        dev = DeviceInstance(
            path=f"{dc.area}/{dc.id}", id=dc.id, area=dc.area, profile_name=dc.profile,
            profile=prof, connection=conn, attrs={**prof.attrs, **dc.attrs},
            location=dc.location, enabled=dc.enabled,
        )
        for cg in dc.children:
            cprof = config.profiles[cg.profile]
            cconn = {**cprof.connection, **conn}
            seg = segments(cg.profile) if segments is not None else None
            for n in range(cg.start, cg.start + cg.count):
                cid = child_id(cg.id, n, seg(n) if seg is not None else None)
                dev.children.append(
                    DeviceInstance(
                        path=f"{dev.path}/{cid}", id=cid, area=dc.area, profile_name=cg.profile,
                        profile=cprof, connection=cconn, attrs={**cprof.attrs, **cg.attrs},
                        location=cg.location or dc.location, parent=dev.path, index=n,
                        enabled=dc.enabled,
                    )
                )
        devices.append(dev)
    return Site(config=config, path=path, devices=devices, schemas=schemas)
