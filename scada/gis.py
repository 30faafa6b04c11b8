"""GIS import: device positions from a city's GIS (GeoJSON, CSV, ESRI shapefile).

A city's GIS exports its street-light points and junctions as files whose features carry the
device's id in a property (``--id-field``, default ``id``). :func:`parse` reads one file into
features (id, latitude, longitude in WGS84), reprojecting with pyproj when the file is in another
CRS (Lambert-93, EPSG:2154, is what French cities export); :func:`plan` matches them to the
site's devices and says, per feature, what an import would do; :class:`PositionStore` keeps the
imported positions in ``<state_dir>/gis/positions.json`` (atomic replace), and
:func:`apply_saved` lays them over the site file's ``location`` values when the server loads.

Matching: a feature id is a device path (``dijon/cab-0001/lum-03``), or the path without its
area (``cab-0001/lum-03``, ``cab-0001``) when that is unique in the site.

Every feature is accounted for: **created** (the device had no position), **updated**,
**unchanged** (same position to 1e-7 degree, about 1 cm), **unmatched** (no such device) or
**rejected** with a reason (no geometry, not a point, no id, out of range, wrong CRS, far from
the site, duplicate id). Importing the same file twice changes nothing the second time.

Shapefiles arrive as a ``.zip`` of ``.shp``/``.shx``/``.dbf`` (and ``.prj``, read for the CRS);
the CLI zips a ``.shp`` and its siblings itself.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .files import replace_text

#: largest file a GIS import reads (the web console refuses bigger uploads before this)
MAX_BYTES = 64 * 2**20
#: features further than this from the site's position are rejected (a wrong CRS or swapped axes)
MAX_DISTANCE_KM = 200.0
#: positions equal to this many degrees are "unchanged" (1e-7 degree ~ 1 cm)
EPS = 1e-7
FORMATS = ("geojson", "csv", "shapefile")
LAT_NAMES = ("lat", "latitude", "y_wgs84")
LON_NAMES = ("lon", "lng", "long", "longitude", "x_wgs84")
X_NAMES = ("x", "easting", "coord_x", "x_l93")
Y_NAMES = ("y", "northing", "coord_y", "y_l93")


class GisError(ValueError):
    """The file as a whole cannot be read (wrong format, missing columns, unknown CRS)."""


@dataclass(slots=True)
class Feature:
    ref: str            # where it is in the file: "feature 3", "line 12", "record 7"
    id: str | None
    lat: float | None = None
    lon: float | None = None
    reason: str | None = None  # set when the feature is rejected


@dataclass
class Options:
    id_field: str = "id"
    epsg: int | None = None
    lat_field: str | None = None
    lon_field: str | None = None
    x_field: str | None = None
    y_field: str | None = None
    format: str | None = None  # None: from the file name / content
    max_distance_km: float = MAX_DISTANCE_KM

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Options:
        o = cls()
        for k in ("id_field", "lat_field", "lon_field", "x_field", "y_field", "format"):
            v = d.get(k)
            if v not in (None, ""):
                setattr(o, k, str(v))
        if d.get("epsg") not in (None, ""):
            try:
                o.epsg = int(str(d["epsg"]).upper().removeprefix("EPSG:"))
            except ValueError:
                raise GisError(f"epsg: expected an EPSG code such as 2154, got {d['epsg']!r}") from None
        if o.format is not None and o.format not in FORMATS:
            raise GisError(f"format: expected one of {', '.join(FORMATS)}, got {o.format!r}")
        return o


@dataclass
class Report:
    """What an import did (or would do): counts, and every unmatched / rejected feature."""

    file: str = ""
    format: str = ""
    crs: str = ""
    features: int = 0
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)   # (ref, id)
    rejected: list[tuple[str, str | None, str]] = field(default_factory=list)  # (ref, id, reason)
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)  # created + updated
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {"features": self.features, "created": len(self.created), "updated": len(self.updated),
                "unchanged": len(self.unchanged), "unmatched": len(self.unmatched),
                "rejected": len(self.rejected)}

    def as_dict(self, limit: int = 1000) -> dict[str, Any]:
        """JSON shape (lists cut at ``limit`` entries; the counts are complete)."""
        return {"file": self.file, "format": self.format, "crs": self.crs, "dry_run": self.dry_run,
                **self.counts(),
                "unmatched_features": [{"ref": r, "id": i} for r, i in self.unmatched[:limit]],
                "rejected_features": [{"ref": r, "id": i, "reason": why} for r, i, why in self.rejected[:limit]]}

    @staticmethod
    def text(d: dict[str, Any], limit: int = 50) -> str:
        """A person's summary of :meth:`as_dict` (the CLI prints it)."""
        head = "dry run (nothing changed): " if d.get("dry_run") else ""
        out = [f"{head}{d['file']} ({d['format']}, {d['crs']}): {d['features']} features: "
               f"{d['created']} created, {d['updated']} updated, {d['unchanged']} unchanged, "
               f"{d['unmatched']} unmatched, {d['rejected']} rejected"]
        for f in d.get("unmatched_features", [])[:limit]:
            out.append(f"  unmatched {f['ref']}: no device {f['id']!r}")
        for f in d.get("rejected_features", [])[:limit]:
            out.append(f"  rejected {f['ref']}" + (f" ({f['id']})" if f["id"] else "") + f": {f['reason']}")
        more = d["unmatched"] + d["rejected"] - min(limit, d["unmatched"]) - min(limit, d["rejected"])
        if more > 0:
            out.append(f"  ... and {more} more (--json lists up to 1000 of each)")
        return "\n".join(out)


# ---------------------------------------------------------------------------- reading
def detect_format(name: str, data: bytes) -> str:
    low = name.lower()
    if low.endswith((".geojson", ".json")):
        return "geojson"
    if low.endswith((".csv", ".txt", ".tsv")):
        return "csv"
    if low.endswith((".zip", ".shp")) or data[:4] == b"PK\x03\x04":
        return "shapefile"
    if data.lstrip()[:1] == b"{":
        return "geojson"
    raise GisError(f"{name}: cannot tell the format from the name; expected .geojson/.json, .csv "
                   "or a shapefile (.shp with its .shx/.dbf, or a .zip of them), or pass --format")


def parse(name: str, data: bytes, opts: Options) -> tuple[str, str, list[Feature]]:
    """Read one file: (format, CRS description, features in WGS84 or rejected with a reason).

    Raises :class:`GisError` when the file as a whole is unreadable."""
    if len(data) > MAX_BYTES:
        raise GisError(f"{name}: {len(data)} bytes is above the GIS import limit of {MAX_BYTES}")
    fmt = opts.format or detect_format(name, data)
    if fmt == "geojson":
        crs, feats = _geojson(name, data, opts)
    elif fmt == "csv":
        crs, feats = _csv(name, data, opts)
    else:
        crs, feats = _shapefile(name, data, opts)
    return fmt, crs, feats


def _crs_of(epsg: int | None = None, wkt: str | None = None) -> Any:
    """A pyproj CRS, or None for WGS84 longitude/latitude (no reprojection)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_epsg(epsg) if epsg is not None else CRS.from_wkt(wkt or "")
    except CRSError as e:
        what = f"EPSG:{epsg}" if epsg is not None else "the .prj file's CRS"
        raise GisError(f"{what} is not a coordinate reference system pyproj knows: {e}") from None
    if epsg == 4326 or (epsg is None and crs.is_geographic and crs.to_epsg() == 4326):
        return None
    return crs


def _reproject(feats: list[Feature], crs: Any, xs: list[float], ys: list[float]) -> None:
    """Fill lat/lon of ``feats`` from projected x/y (same order) with pyproj."""
    from pyproj import Transformer

    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = t.transform(xs, ys, errcheck=False)
    for f, la, lo in zip(feats, lat, lon, strict=True):
        if not (math.isfinite(la) and math.isfinite(lo)):
            f.reason = f"wrong CRS: ({f.lat}, {f.lon}) cannot be converted from {crs.name}"
        else:
            f.lat, f.lon = float(la), float(lo)


def _finish(feats: list[Feature], crs: Any) -> str:
    """Reproject the features whose lat/lon hold raw x/y, when ``crs`` is not WGS84."""
    if crs is None:
        return "EPSG:4326"
    todo = [f for f in feats if f.reason is None]
    if todo:
        xs = [f.lon for f in todo]
        ys = [f.lat for f in todo]
        _reproject(todo, crs, xs, ys)  # type: ignore[arg-type]
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.name


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip().replace(",", ".")
    try:
        return float(s)
    except ValueError:
        return None


def _ident(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = str(v).strip()
    return s or None


def _geojson(name: str, data: bytes, opts: Options) -> tuple[str, list[Feature]]:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GisError(f"{name}: not valid GeoJSON: {e}") from None
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        doc = {"type": "FeatureCollection", "features": [doc]}
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or \
            not isinstance(doc.get("features"), list):
        raise GisError(f"{name}: expected a GeoJSON FeatureCollection of Point features")
    epsg = opts.epsg
    named = ((doc.get("crs") or {}).get("properties") or {}).get("name") if isinstance(doc.get("crs"), dict) else None
    if epsg is None and isinstance(named, str) and "CRS84" not in named.upper():
        tail = named.rsplit(":", 1)[-1]
        if tail.isdigit():
            epsg = int(tail)
        else:
            raise GisError(f"{name}: unknown crs {named!r}; pass --epsg")
    crs = _crs_of(epsg) if epsg is not None else None
    feats: list[Feature] = []
    for k, ft in enumerate(doc["features"], 1):
        ref = f"feature {k}"
        if not isinstance(ft, dict):
            feats.append(Feature(ref, None, reason="not a GeoJSON Feature object"))
            continue
        props = ft.get("properties") if isinstance(ft.get("properties"), dict) else {}
        fid = _ident(props.get(opts.id_field))
        if fid is None and opts.id_field == "id":
            fid = _ident(ft.get("id"))
        f = Feature(ref, fid)
        feats.append(f)
        geom = ft.get("geometry")
        if not isinstance(geom, dict) or geom.get("coordinates") in (None, []):
            f.reason = "no geometry"
            continue
        coords = geom.get("coordinates")
        if geom.get("type") == "MultiPoint" and isinstance(coords, list) and len(coords) == 1:
            coords = coords[0]
        elif geom.get("type") != "Point":
            f.reason = f"not a point ({geom.get('type')}): a device is placed by a Point geometry"
            continue
        if not isinstance(coords, list) or len(coords) < 2 or _num(coords[0]) is None or _num(coords[1]) is None \
                or isinstance(coords[0], str) or isinstance(coords[1], str):
            f.reason = f"coordinates are not two numbers: {str(coords)[:60]}"
            continue
        f.lon, f.lat = float(coords[0]), float(coords[1])
    return _finish(feats, crs), feats


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # French GIS exports in Windows-1252


def _pick(header: list[str], given: str | None, names: tuple[str, ...], what: str) -> int | None:
    low = [h.strip().lower() for h in header]
    if given is not None:
        if given.lower() not in low:
            raise GisError(f"no column {given!r} for {what}; the header has {', '.join(header)}")
        return low.index(given.lower())
    for n in names:
        if n in low:
            return low.index(n)
    return None


def _csv(name: str, data: bytes, opts: Options) -> tuple[str, list[Feature]]:
    text = _decode(data)
    sample = text[:8192]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = csv.reader(io.StringIO(text), dialect)
    try:
        header = next(rows)
    except StopIteration:
        raise GisError(f"{name}: empty CSV file") from None
    idc = _pick(header, opts.id_field, (), "the device id (--id-field)")
    use_xy = opts.epsg is not None or opts.x_field is not None
    la = lo = None
    if not use_xy:
        la = _pick(header, opts.lat_field, LAT_NAMES, "latitude (--lat-field)")
        lo = _pick(header, opts.lon_field, LON_NAMES, "longitude (--lon-field)")
        if la is None or lo is None:
            if _pick(header, None, X_NAMES, "x") is not None:
                raise GisError(f"{name}: x/y columns need the file's CRS: pass --epsg CODE "
                               "(2154 for Lambert-93)")
            raise GisError(f"{name}: no latitude/longitude columns (looked for {', '.join(LAT_NAMES)} "
                           f"and {', '.join(LON_NAMES)}); name them with --lat-field/--lon-field, or give "
                           "x/y columns with --epsg")
        crs = None
    else:
        la = _pick(header, opts.y_field, Y_NAMES, "y (--y-field)")
        lo = _pick(header, opts.x_field, X_NAMES, "x (--x-field)")
        if la is None or lo is None:
            raise GisError(f"{name}: no x/y columns (looked for {', '.join(X_NAMES)} and {', '.join(Y_NAMES)}); "
                           "name them with --x-field/--y-field")
        crs = _crs_of(opts.epsg if opts.epsg is not None else 4326)
    assert idc is not None
    feats: list[Feature] = []
    for row in rows:
        if not any(c.strip() for c in row):
            continue
        ref = f"line {rows.line_num}"
        row = [*row, *[""] * (max(idc, la, lo) + 1 - len(row))]
        f = Feature(ref, _ident(row[idc]))
        feats.append(f)
        x, y = row[lo].strip(), row[la].strip()
        if not x and not y:
            f.reason = "no geometry (empty coordinates)"
            continue
        fx, fy = _num(x), _num(y)
        if fx is None or fy is None:
            f.reason = f"coordinates are not numbers: {y!r}, {x!r}"
            continue
        f.lon, f.lat = fx, fy
    return _finish(feats, crs), feats


def _shapefile(name: str, data: bytes, opts: Options) -> tuple[str, list[Feature]]:
    import shapefile  # pyshp

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise GisError(f"{name}: a shapefile is read from a .zip of its .shp, .shx, .dbf (and .prj) "
                       "files") from None
    with zf:
        members = {n.lower(): n for n in zf.namelist() if not n.endswith("/")}
        shps = [n for n in members if n.endswith(".shp")]
        if len(shps) != 1:
            raise GisError(f"{name}: expected one .shp in the archive, found {len(shps)}")
        stem = shps[0][:-4]
        parts: dict[str, io.BytesIO] = {}
        for ext in ("shp", "shx", "dbf", "prj"):
            n = members.get(f"{stem}.{ext}")
            if n is not None:
                info = zf.getinfo(n)
                if info.file_size > MAX_BYTES:
                    raise GisError(f"{name}: {n} unpacks to {info.file_size} bytes, above {MAX_BYTES}")
                parts[ext] = io.BytesIO(zf.read(n))
    if "dbf" not in parts:
        raise GisError(f"{name}: the .dbf (attributes, where the device ids are) is missing")
    prj = parts.pop("prj", None)
    if opts.epsg is not None:
        crs = _crs_of(opts.epsg)
    elif prj is not None:
        crs = _crs_of(wkt=_decode(prj.getvalue()))
    else:
        crs = None
    try:
        rd = shapefile.Reader(shp=parts.get("shp"), shx=parts.get("shx"), dbf=parts["dbf"])
    except shapefile.ShapefileException as e:
        raise GisError(f"{name}: not a readable shapefile: {e}") from None
    names = [f[0] for f in rd.fields[1:]]
    low = [n.lower() for n in names]
    if opts.id_field.lower() not in low:
        raise GisError(f"{name}: no attribute {opts.id_field!r} (--id-field); the .dbf has {', '.join(names)}")
    k_id = low.index(opts.id_field.lower())
    feats: list[Feature] = []
    with rd:
        for k, sr in enumerate(rd.iterShapeRecords(), 1):
            f = Feature(f"record {k}", _ident(sr.record[k_id]))
            feats.append(f)
            shp = sr.shape
            pts = getattr(shp, "points", None) or []
            if shp.shapeType == shapefile.NULL or not pts:
                f.reason = "no geometry"
            elif shp.shapeType not in (shapefile.POINT, shapefile.POINTZ, shapefile.POINTM,
                                       shapefile.MULTIPOINT, shapefile.MULTIPOINTZ, shapefile.MULTIPOINTM) \
                    or len(pts) != 1:
                f.reason = f"not a point ({shp.shapeTypeName}): a device is placed by a point"
            else:
                f.lon, f.lat = float(pts[0][0]), float(pts[0][1])
    return _finish(feats, crs), feats


# ---------------------------------------------------------------------------- matching
def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def device_index(site: Any) -> dict[str, Any]:
    """Feature id -> device: every path, and every path without its area when unique."""
    out: dict[str, Any] = {}
    short: dict[str, Any] = {}
    dup: set[str] = set()
    for d in site.all_devices():
        out[d.path] = d
        s = d.path.split("/", 1)[1]
        if s in short:
            dup.add(s)
        short[s] = d
    for s, d in short.items():
        if s not in dup and s not in out:
            out[s] = d
    return out


def plan(site: Any, fmt: str, crs: str, feats: list[Feature], current: dict[str, tuple[float, float]],
         opts: Options, name: str = "") -> Report:
    """Match features to devices and compare with the current positions (imported ones over the
    site file's). Rejects out-of-range, far-away and duplicate features with their reason."""
    rep = Report(file=name, format=fmt, crs=crs, features=len(feats))
    index = device_index(site)
    lat0, lon0 = site.config.site.latitude, site.config.site.longitude
    seen: dict[str, str] = {}
    dups: set[str] = set()
    for f in feats:
        if f.reason is None and f.id is not None:
            d = index.get(f.id)
            key = d.path if d is not None else f.id
            if key in seen:
                dups.add(key)
            else:
                seen[key] = f.ref
    for f in feats:
        if f.reason is None and f.id is None:
            f.reason = f"no id (property {opts.id_field!r})"
        if f.reason is None:
            assert f.lat is not None and f.lon is not None
            if not (math.isfinite(f.lat) and math.isfinite(f.lon)):
                f.reason = "coordinates are not finite numbers"
            elif not (-90 <= f.lat <= 90 and -180 <= f.lon <= 180):
                f.reason = (f"out of range: latitude {f.lat:g}, longitude {f.lon:g}"
                            + ("; these look like projected metres: wrong CRS, pass --epsg (2154 for "
                               "Lambert-93)" if max(abs(f.lat), abs(f.lon)) > 1000 else ""))
            else:
                km = _km(lat0, lon0, f.lat, f.lon)
                if km > opts.max_distance_km:
                    f.reason = (f"{km:.0f} km from the site ({lat0:g}, {lon0:g}): wrong CRS or swapped "
                                f"latitude/longitude? (limit {opts.max_distance_km:g} km)")
        if f.reason is not None:
            rep.rejected.append((f.ref, f.id, f.reason))
            continue
        d = index.get(f.id or "")
        if d is None:
            rep.unmatched.append((f.ref, f.id or ""))
            continue
        if d.path in dups:
            rep.rejected.append((f.ref, f.id, f"duplicate id: {d.path} is named by more than one feature "
                                               f"(first at {seen[d.path]}); none of them is applied"))
            continue
        new = (round(f.lat, 7), round(f.lon, 7))  # type: ignore[arg-type]
        old = current.get(d.path)
        if old is None:
            rep.created.append(d.path)
            rep.positions[d.path] = new
        elif abs(old[0] - new[0]) <= EPS and abs(old[1] - new[1]) <= EPS:
            rep.unchanged.append(d.path)
        else:
            rep.updated.append(d.path)
            rep.positions[d.path] = new
    return rep


# ---------------------------------------------------------------------------- storage
class PositionStore:
    """Imported positions, ``<state_dir>/gis/positions.json`` (``{"positions": {path: [lat,
    lon]}}``), replaced atomically by each import."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "gis", "positions.json")

    def load(self) -> dict[str, tuple[float, float]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise GisError(f"{self.path}: unreadable imported positions ({e}); fix or remove it "
                           "and import again") from None
        pos = doc.get("positions") or {}
        if not all(isinstance(v, list) and len(v) == 2 for v in pos.values()):
            raise GisError(f"{self.path}: positions must be [lat, lon] pairs; fix or remove the file")
        return {k: (v[0], v[1]) for k, v in pos.items()}

    def save(self, positions: dict[str, tuple[float, float]], meta: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        body = ",\n".join(f"{json.dumps(k)}:[{v[0]!r},{v[1]!r}]" for k, v in sorted(positions.items()))
        replace_text(self.path, '{"version":1,"last_import":' + json.dumps(meta, default=str)
                     + ',\n"positions":{\n' + body + "}}\n")


def current_positions(site: Any) -> dict[str, tuple[float, float]]:
    """Every device's position now (site file, with imports applied by :func:`apply_saved`)."""
    return {d.path: (d.location.lat, d.location.lon) for d in site.all_devices() if d.location is not None}


def apply(site: Any, positions: dict[str, tuple[float, float]] | Iterable[tuple[str, tuple[float, float]]]) -> int:
    """Set the devices' ``location`` from ``positions`` (unknown paths ignored); how many."""
    from .site import Location

    items = positions.items() if isinstance(positions, dict) else positions
    by_path = {d.path: d for d in site.all_devices()}
    n = 0
    for path, (lat, lon) in items:
        d = by_path.get(path)
        if d is not None:
            d.location = Location.model_construct(lat=float(lat), lon=float(lon))
            n += 1
    return n


def apply_saved(site: Any) -> int:
    """Lay the positions imported earlier over the site file's (once per loaded site)."""
    if id(site) in _APPLIED:
        return 0
    _APPLIED.add(id(site))
    return apply(site, PositionStore(site.state_dir).load())


#: sites whose saved positions were applied (Site is a slots dataclass: no attribute to mark)
_APPLIED: set[int] = set()


def import_file(site: Any, name: str, data: bytes, opts: Options, *, dry_run: bool = False,
                store: PositionStore | None = None) -> Report:
    """Parse, match, and (unless ``dry_run``) store and apply one file. Blocking: call it in a
    worker thread from the event loop."""
    apply_saved(site)
    fmt, crs, feats = parse(name, data, opts)
    rep = plan(site, fmt, crs, feats, current_positions(site), opts, name=name)
    rep.dry_run = dry_run
    if dry_run or not rep.positions:
        return rep
    store = store or PositionStore(site.state_dir)
    saved = store.load()
    saved.update(rep.positions)
    store.save(saved, {"file": name, **rep.counts()})
    apply(site, rep.positions)
    return rep
