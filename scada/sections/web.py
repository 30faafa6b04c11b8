"""``web:`` section: the operator console served by ``scada run`` / ``scada demo`` (issue 19).

Example::

    web:
      enabled: true
      host: 0.0.0.0
      port: 8443
      tls: true                 # HTTPS with the server's certificate (default)
      idle_timeout: 30min
      max_upload_bytes: 1000000
      login_rate: {per_address: 10, per_account: 5, window: 1min}

HTTPS by default, with the server's certificate (the one the OPC UA server presents,
``<state_dir>/opcua/server-cert.der``). Plain HTTP only when ``tls: false`` is written
explicitly; on an address other than loopback the server then says so loudly at start.
See ``docs/cockpit.md``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from .common import Duration, Strict


class LoginRate(Strict):
    """Login attempts allowed per ``window`` (a sliding window), beyond which ``429``."""

    per_address: int = Field(10, ge=1)
    per_account: int = Field(5, ge=1)
    window: Duration = 60.0


class MapConfig(Strict):
    """``web.map``: the live map's base map (docs/cockpit.md "Map"). No tiles: a plain background,
    which works with no internet."""

    #: raster tiles: a URL template (``https://tiles.example/{z}/{x}/{y}.png``) or a local
    #: directory of ``<z>/<x>/<y>.png`` files (relative to the site file) served by the console
    tiles: str | None = None
    #: credit line shown on the map (the tile provider's licence usually requires one)
    attribution: str = ""
    max_zoom: int = Field(19, ge=1, le=22)

    @field_validator("tiles")
    @classmethod
    def _tiles(cls, v: str | None) -> str | None:
        if v and v.startswith(("http://", "https://")) and not all(k in v for k in ("{z}", "{x}", "{y}")):
            raise ValueError("a tile URL template needs {z}, {x} and {y}, e.g. https://tiles.example/{z}/{x}/{y}.png")
        return v or None


class WebConfig(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    #: HTTPS with the server's certificate (false: plain HTTP, for loopback or behind a proxy)
    tls: bool = True
    #: a session unused this long is closed (the live stream does not count as use)
    idle_timeout: Duration = Field(1800.0, gt=0)
    #: request bodies above this are refused with 413
    max_upload_bytes: int = Field(1_000_000, ge=1024)
    #: sessions kept in memory; the least recently used is closed beyond it
    max_sessions: int = Field(1000, ge=1)
    #: live-update clients; a client whose queue holds this many events is dropped
    max_stream_clients: int = Field(200, ge=1)
    stream_queue: int = Field(500, ge=10)
    login_rate: LoginRate = Field(default_factory=LoginRate)
    map: MapConfig = Field(default_factory=MapConfig)
