"""``historian:`` section (owned by the historian issue).

Example::

    historian:
      backend: embedded          # or influx (any InfluxDB v2 write API: InfluxDB 2/3, VictoriaMetrics)
      path: historian            # under the site's state_dir unless absolute
      flush_interval: 1s         # recorder -> spool block period
      snapshot: 15min            # every recorded tag written at least this often
      deadband: {power_w: 1.0}   # historian deadband per point name (absolute, analog points)
      swinging_door: {driver_temp_c: 0.5}   # swinging-door compression deviation per point name
      spool_max_bytes: 2000000000
      options: {url: "http://127.0.0.1:8428", bucket: scada, org: city, token: ""}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .common import Duration, Strict


class HistorianConfig(Strict):
    """Where values are stored. ``backend`` names a ``scada.historians`` entry point."""

    enabled: bool = True
    backend: str = "embedded"
    path: str = "historian"
    flush_interval: Duration = 1.0
    snapshot: Duration = 900.0
    deadband: dict[str, float] = Field(default_factory=dict)
    #: swinging-door compression deviation by point name (analog points), e.g. {power_w: 2.0}
    swinging_door: dict[str, float] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=lambda: ["_system/historian/*"])
    spool_max_bytes: int = Field(2_000_000_000, ge=1_000_000)
    max_block_points: int = Field(500_000, ge=1000)
    options: dict[str, Any] = Field(default_factory=dict)
