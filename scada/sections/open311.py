"""``open311:`` section: citizen reports through Open311 GeoReport v2 (issue 21).

Example::

    open311:
      enabled: true
      attach_radius_m: 40          # a report this close to a device already in fault attaches to it
      match_radius_m: 150          # the device a report is about: the nearest of its kind this close
      retention: 90d               # reporters' e-mail, names, phone, device/account ids kept this long
      rate: {per_key: 120, per_address: 30, window: 1min}
      max_body_bytes: 16384
      max_description: 4000
      max_media_url: 1000
      jurisdiction_margin_m: 300   # a jurisdiction = its areas' devices' extent plus this margin
      jurisdictions:               # optional explicit bounding boxes [south, west, north, east]
        Dijon: {bbox: [47.28, 4.96, 47.36, 5.10]}
      services:                    # optional per service: alarms it matches, priority, off
        streetlight_out: {alarms: [lamp_failure, lamp_dark]}
        graffiti: {enabled: false}

The jurisdiction id is an area's municipality (``areas[].municipality``, else its name or id).
Client applications are registered with ``scada open311 add-client NAME --site site.yaml``
(an API key, stored hashed under ``<state_dir>/open311/clients.json``). See ``docs/open311.md``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from .common import Duration, Ident, Strict


class Open311Rate(Strict):
    """Requests allowed per ``window`` (sliding), per client key and per client address; 429 beyond."""

    per_key: int = Field(120, ge=1)
    per_address: int = Field(30, ge=1)
    window: Duration = Field(60.0, gt=0)


class Jurisdiction(Strict):
    #: [south, west, north, east] in WGS84 degrees
    bbox: tuple[float, float, float, float]

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        s, w, n, e = v
        if not (-90 <= s < n <= 90 and -180 <= w < e <= 180):
            raise ValueError("expected [south, west, north, east] with south < north, west < east, in degrees")
        return v


class ServiceOptions(Strict):
    """Per-service settings over the built-in catalogue (``scada.open311.services``)."""

    enabled: bool = True
    #: alarm names (the profile's alarm ``name``) this service matches; the first is the fault
    #: class of the work orders it creates (so a later alarm attaches to the citizen's order)
    alarms: list[Ident] | None = None
    priority: int | None = Field(None, ge=1, le=4)
    trade: Ident | None = None


class Open311Config(Strict):
    enabled: bool = False
    #: a report this close to a device with an active alarm or open order of its kind attaches to it
    attach_radius_m: float = Field(40.0, gt=0, le=5000)
    #: the device a new report is about: the nearest device of the service's kinds this close
    match_radius_m: float = Field(150.0, gt=0, le=10000)
    #: personal data (email, first/last name, phone, device_id, account_id) purged after this
    retention: Duration = Field(90 * 86400.0, gt=0)
    rate: Open311Rate = Field(default_factory=Open311Rate)
    max_body_bytes: int = Field(16384, ge=1024, le=1_000_000)
    max_description: int = Field(4000, ge=100, le=100_000)
    max_media_url: int = Field(1000, ge=20, le=8000)
    #: answers of GET requests are capped at this many requests (newest first)
    max_results: int = Field(1000, ge=1, le=100_000)
    jurisdiction_margin_m: float = Field(300.0, ge=0, le=50_000)
    jurisdictions: dict[str, Jurisdiction] = Field(default_factory=dict)
    services: dict[Ident, ServiceOptions] = Field(default_factory=dict)
    #: agency_responsible in the answers
    agency: str = "Public lighting and traffic signals"
    #: records between two snapshots of the store
    snapshot_every: int = Field(2000, ge=10)
