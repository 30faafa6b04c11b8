"""Synthetic but realistic city generator (``scada gen-city``), around Dijon's coordinates.

The demo, the tests and the benchmarks need cities of any size that look like the real thing:

* the 23 municipalities of Dijon Métropole as areas, devices placed around their centres;
* lighting cabinets (segment controllers, Modbus TCP) of 20-64 luminaires, and DALI gateways
  (MQTT) with 1-4 lines of up to 64 luminaires - about 70 % / 30 % of the light points;
* a mixed legacy inventory per cabinet (high-pressure sodium, mercury vapour, metal halide) with
  each lamp's wattage *including ballast losses*, the baseline of the energy-savings KPI, and
  the LED that replaced it (``nominal_w``);
* junctions (traffic controllers, OPC UA) with 4-12 signal groups.

Every cabinet gets its own loopback port so the simulators can serve the whole city from one
machine; junctions share OPC UA endpoints (``junctions_per_server`` objects per server: a server
per junction would cost ~40 MB and seconds each, see docs/devices/traffic-controller.md).
``--host`` and ``--base-port`` choose the addresses. Output is deterministic for a given seed.

Positions, so that demo and bench cities have a map: cabinets and gateways are spread over
their municipality, junctions sit on a street grid (about 110 m), and each luminaire stands
along one to three streets leaving its cabinet (25-35 m apart, alternating sides). A child group
has one ``location`` in a site file, so the luminaires' own positions are written where a GIS
import puts them, ``<state_dir>/gis/positions.json`` (:mod:`scada.gis`), laid over the site
file when the server loads.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

#: (name, lat, lon, weight) - the 23 municipalities of Dijon Métropole; weight ~ light points
MUNICIPALITIES: tuple[tuple[str, str, float, float, float], ...] = (
    ("dijon", "Dijon", 47.3220, 5.0415, 52.0),
    ("chenove", "Chenôve", 47.2930, 5.0080, 6.0),
    ("talant", "Talant", 47.3360, 5.0050, 4.0),
    ("quetigny", "Quetigny", 47.3140, 5.1060, 4.0),
    ("longvic", "Longvic", 47.2870, 5.0630, 4.0),
    ("fontaine", "Fontaine-lès-Dijon", 47.3420, 5.0200, 3.0),
    ("st-apollinaire", "Saint-Apollinaire", 47.3330, 5.0850, 3.0),
    ("chevigny", "Chevigny-Saint-Sauveur", 47.3010, 5.1340, 3.0),
    ("marsannay", "Marsannay-la-Côte", 47.2710, 5.0000, 2.5),
    ("plombieres", "Plombières-lès-Dijon", 47.3380, 4.9690, 1.5),
    ("ahuy", "Ahuy", 47.3700, 5.0200, 1.0),
    ("bressey", "Bressey-sur-Tille", 47.3130, 5.1840, 0.7),
    ("breteniere", "Bretenière", 47.2370, 5.1070, 0.6),
    ("corcelles", "Corcelles-les-Monts", 47.3020, 4.9400, 0.6),
    ("crimolois", "Neuilly-Crimolois", 47.2800, 5.1200, 1.0),
    ("daix", "Daix", 47.3510, 4.9990, 0.8),
    ("fenay", "Fénay", 47.2330, 5.0570, 0.8),
    ("flavignerot", "Flavignerot", 47.2830, 4.9490, 0.3),
    ("hauteville", "Hauteville-lès-Dijon", 47.3660, 4.9950, 0.6),
    ("magny", "Magny-sur-Tille", 47.2800, 5.1700, 0.4),
    ("ouges", "Ouges", 47.2600, 5.0700, 0.8),
    ("perrigny", "Perrigny-lès-Dijon", 47.2670, 5.0060, 1.0),
    ("sennecey", "Sennecey-lès-Dijon", 47.2900, 5.1050, 1.2),
)

#: Legacy lamp types: (name, lamp+ballast W, typical LED replacement W)
LEGACY_LAMPS: tuple[tuple[str, float, float], ...] = (
    ("SHP-70", 84.0, 30.0),
    ("SHP-100", 115.0, 40.0),
    ("SHP-150", 170.0, 60.0),
    ("SHP-250", 277.0, 100.0),
    ("HgHP-125", 137.0, 40.0),
    ("MH-150", 167.0, 60.0),
)
_LAMP_WEIGHTS = (22, 25, 25, 6, 14, 8)

#: Junction profiles by number of signal groups (a profile has a fixed point list).
JUNCTION_PROFILES = {4: "junction-opcua-4", 8: "junction-opcua", 12: "junction-opcua-12"}


@dataclass(slots=True)
class CityStats:
    luminaires: int = 0
    cabinets: int = 0
    gateways: int = 0
    junctions: int = 0
    junction_servers: int = 0
    signal_groups: int = 0
    areas: int = 0
    lines: int = 0


def _flow(d: dict) -> str:
    """One-line YAML flow mapping (keys and simple values only; strings quoted when needed)."""
    parts = []
    for k, v in d.items():
        parts.append(f"{k}: {_scalar(v)}")
    return "{" + ", ".join(parts) + "}"


def _scalar(v: object) -> str:
    if isinstance(v, dict):
        return _flow(v)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if s and all(c.isalnum() or c in "-_./" for c in s) and not s[0].isdigit() and s not in ("true", "false", "null"):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(
    luminaires: int,
    junctions: int,
    *,
    out_path: str,
    profiles_dir: str,
    seed: int = 1,
    host: str = "127.0.0.1",
    base_port: int = 20000,
    dali_share: float = 0.3,
    broker: str = "embedded",
    name: str | None = None,
    junctions_per_server: int = 100,
    positions: bool = True,
) -> CityStats:
    """Write a site file for a city of ``luminaires`` light points and ``junctions`` junctions."""
    if luminaires < 0 or junctions < 0:
        raise ValueError("luminaires and junctions must be >= 0")
    rng = random.Random(seed)
    # a second generator for positions: the site file stays what it was for a given seed
    prng = random.Random(seed * 7919 + 17)
    lum_pos: dict[str, tuple[float, float]] = {}
    grid_used: set[tuple[int, int]] = set()
    stats = CityStats()
    # a small city covers fewer municipalities (about 150 light points each at least), the
    # largest first, so cabinets and gateways keep realistic sizes
    n_areas = max(1, min(len(MUNICIPALITIES), luminaires // 150))
    weights = [m[4] if i < n_areas else 0.0 for i, m in enumerate(MUNICIPALITIES)]
    total_w = sum(weights)
    # split light points over municipalities (largest remainder), then over cabinets / gateways
    quotas = [luminaires * w / total_w for w in weights]
    counts = [int(q) for q in quotas]
    for i in sorted(range(len(quotas)), key=lambda i: quotas[i] - counts[i], reverse=True)[: luminaires - sum(counts)]:
        counts[i] += 1
    jq = [junctions * w / total_w for w in weights]
    jcounts = [int(q) for q in jq]
    for i in sorted(range(len(jq)), key=lambda i: jq[i] - jcounts[i], reverse=True)[: junctions - sum(jcounts)]:
        jcounts[i] += 1

    out_dir = os.path.dirname(os.path.abspath(out_path))
    rel_profiles = os.path.relpath(os.path.abspath(profiles_dir), out_dir)
    lines: list[str] = []
    w = lines.append
    w(f"# Synthetic city generated by `scada gen-city --luminaires {luminaires} --junctions {junctions} --seed {seed}`")
    w("# Municipalities of Dijon Métropole; legacy lamp inventory (lamp + ballast W) is the KPI baseline.")
    w("site:")
    w(f"  name: {_scalar(name or f'Synthetic city ({luminaires} light points, {junctions} junctions)')}")
    w("  latitude: 47.322")
    w("  longitude: 5.0415")
    w("  timezone: Europe/Paris")
    w("  state_dir: state")
    w("include:")
    w(f"  - {_scalar(rel_profiles + '/*.yaml')}")
    w("areas:")
    used = [i for i, m in enumerate(MUNICIPALITIES) if counts[i] or jcounts[i]] or [0]
    for i in used:
        aid, label, *_ = MUNICIPALITIES[i]
        w(f"  - {_flow({'id': aid, 'name': label, 'municipality': label})}")
    stats.areas = len(used)
    w(_SCHEDULES.rstrip("\n"))
    w("devices:")
    port = base_port
    cab_no = gw_no = j_no = 0
    # junction controllers of a simulated city share OPC UA endpoints (objects of one server,
    # `connection.object` = device id), junctions_per_server at most per endpoint
    j_port = port + luminaires // 20 + 32  # beyond the cabinets' ports
    j_endpoint_fill = junctions_per_server
    for i in used:
        aid, _label, lat0, lon0, _ = MUNICIPALITIES[i]
        n_left = counts[i]
        radius = 0.004 + 0.003 * math.sqrt(MUNICIPALITIES[i][4])
        dali_left = round(n_left * dali_share)
        modbus_left = n_left - dali_left
        while modbus_left > 0:
            size = min(modbus_left, rng.randint(20, 64))
            if modbus_left - size < 20 and modbus_left <= 64:
                size = modbus_left
            modbus_left -= size
            cab_no += 1
            lat = round(lat0 + rng.uniform(-radius, radius), 5)
            lon = round(lon0 + rng.uniform(-radius, radius) * 1.4, 5)
            groups = _lamp_groups(rng, size)
            w(f"  - id: cab-{cab_no:04d}")
            w("    profile: cabinet-modbus")
            w(f"    area: {aid}")
            w(f"    connection: {_flow({'host': host, 'port': port, 'unit': 1})}")
            w(f"    location: {_flow({'lat': lat, 'lon': lon})}")
            w("    children:")
            if positions:
                _streets(prng, lum_pos, f"{aid}/cab-{cab_no:04d}", "lum-{n:02d}", lat, lon, size)
            start = 1
            for lamp, count in groups:
                lw, led = _lamp(lamp)
                attrs = {"nominal_w": led, "legacy_lamp": lamp, "legacy_w": lw, "group": cab_no}
                w(f"      - {_flow({'profile': 'luminaire-modbus', 'id': 'lum-{n:02d}', 'start': start, 'count': count, 'attrs': attrs})}")
                start += count
            port += 1
            stats.cabinets += 1
            stats.luminaires += size
        while dali_left > 0:
            size = min(dali_left, rng.choice((64, 96, 128, 192, 256)))
            dali_left -= size
            gw_no += 1
            lat = round(lat0 + rng.uniform(-radius, radius), 5)
            lon = round(lon0 + rng.uniform(-radius, radius) * 1.4, 5)
            conn = {"broker": broker, "gateway": f"gw-{gw_no:04d}"}
            w(f"  - id: gw-{gw_no:04d}")
            w("    profile: dali-gateway")
            w(f"    area: {aid}")
            w(f"    connection: {_flow(conn)}")
            w(f"    location: {_flow({'lat': lat, 'lon': lon})}")
            w("    children:")
            if positions:
                _streets(prng, lum_pos, f"{aid}/gw-{gw_no:04d}", "lum-{n:03d}", lat, lon, size)
            start = 1
            for lamp, count in _lamp_groups(rng, size):
                lw, led = _lamp(lamp)
                attrs = {"nominal_w": led, "legacy_lamp": lamp, "legacy_w": lw, "group": (start - 1) // 16 % 16}
                w(f"      - {_flow({'profile': 'luminaire-dali', 'id': 'lum-{n:03d}', 'start': start, 'count': count, 'attrs': attrs})}")
                start += count
            stats.gateways += 1
            stats.lines += (size + 63) // 64
            stats.luminaires += size
        for _ in range(jcounts[i]):
            j_no += 1
            lat = round(lat0 + rng.uniform(-radius, radius), 5)
            lon = round(lon0 + rng.uniform(-radius, radius) * 1.4, 5)
            lat, lon = _on_grid(grid_used, lat, lon)
            sg = rng.choice((4, 8, 8, 8, 12))
            w(f"  - id: jct-{j_no:04d}")
            w(f"    profile: {JUNCTION_PROFILES[sg]}")
            w(f"    area: {aid}")
            if j_endpoint_fill >= junctions_per_server:
                j_port += 1
                j_endpoint_fill = 0
                stats.junction_servers += 1
            j_endpoint_fill += 1
            w(f"    connection: {_flow({'endpoint': f'opc.tcp://{host}:{j_port}/'})}")
            w(f"    location: {_flow({'lat': lat, 'lon': lon})}")
            w(f"    attrs: {_flow({'signal_groups': sg})}")
            stats.junctions += 1
            stats.signal_groups += sg
    if not (cab_no or gw_no or j_no):
        lines.pop()  # "devices:" with nothing under it
        w("devices: []")
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    if positions and lum_pos:
        from .gis import PositionStore

        PositionStore(os.path.join(out_dir, "state")).save(
            lum_pos, {"file": "gen-city", "features": len(lum_pos), "seed": seed})
    return stats


#: junction grid step in degrees of latitude (~110 m; longitude steps are 1.4 times wider)
GRID = 0.001
#: metres per degree of latitude
M_PER_DEG = 111_320.0


def _on_grid(used: set[tuple[int, int]], lat: float, lon: float) -> tuple[float, float]:
    """The nearest free crossing of the street grid (junctions sit on crossings)."""
    i0, j0 = round(lat / GRID), round(lon / (GRID * 1.4))
    for r in range(0, 50):
        for di in range(-r, r + 1):
            for dj in (-r, r) if abs(di) != r else range(-r, r + 1):
                k = (i0 + di, j0 + dj)
                if k not in used:
                    used.add(k)
                    return round(k[0] * GRID, 6), round(k[1] * GRID * 1.4, 6)
    return lat, lon


def _streets(rng: random.Random, out: dict[str, tuple[float, float]], parent: str, template: str,
             lat: float, lon: float, n: int) -> None:
    """Place ``n`` luminaires along 1-3 streets leaving the cabinet at (lat, lon): 25-35 m apart,
    alternating sides 8 m off the street's axis, streets on the city's (slightly rotated) grid."""
    k = 1 if n <= 24 else rng.choice((2, 2, 3))
    base = math.radians(rng.uniform(-15, 15))
    m_lon = M_PER_DEG * math.cos(math.radians(lat))
    per = [n // k + (1 if i < n % k else 0) for i in range(k)]
    num = 1
    for d, count in zip(rng.sample(range(4), k), per, strict=True):  # k different directions
        ang = base + d * math.pi / 2
        ux, uy = math.cos(ang), math.sin(ang)  # along the street (east, north)
        spacing = rng.uniform(25.0, 35.0)
        for i in range(count):
            along = 15.0 + i * spacing
            side = 8.0 if i % 2 == 0 else -8.0
            east = along * ux - side * uy
            north = along * uy + side * ux
            out[f"{parent}/{template.format(n=num)}"] = (round(lat + north / M_PER_DEG, 7),
                                                         round(lon + east / m_lon, 7))
            num += 1


#: The dimming policy every generated city starts with (see docs/schedules.md).
_SCHEDULES = """\
schedules:
  dusk: sunset
  dawn: sunrise
  default_profile: standard
  profiles:
    standard:
      description: residential streets
      fade: 30s
      steps:
        - {at: dusk, level: 100}
        - {at: "22:00", level: 70}
        - {at: midnight-1h, until: midnight+4h, level: 40}
      switch_off: dawn+10min
    full:
      description: public holidays
      steps:
        - {at: dusk, level: 100}
      switch_off: dawn+10min
  calendars:
    - {name: every-night, profile: standard, priority: 10}
    - {name: public-holidays, profile: full, holidays: FR, priority: 50}
"""


def _lamp(name: str) -> tuple[float, float]:
    for n, lw, led in LEGACY_LAMPS:
        if n == name:
            return lw, led
    raise KeyError(name)


def _lamp_groups(rng: random.Random, size: int) -> list[tuple[str, int]]:
    """Split ``size`` luminaires into 1-3 groups of different legacy lamps."""
    k = 1 if size < 24 else rng.choice((1, 2, 2, 3))
    cuts = sorted(rng.sample(range(1, size), k - 1)) if k > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    lamps = rng.choices([n for n, *_ in LEGACY_LAMPS], weights=_LAMP_WEIGHTS, k=k)
    return [(lamp, s) for lamp, s in zip(lamps, sizes, strict=True) if s > 0]
