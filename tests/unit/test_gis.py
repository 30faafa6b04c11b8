"""GIS import (scada.gis, Operations.import_positions): GeoJSON, CSV in Lambert-93 reprojected
with pyproj, shapefiles written by pyshp, a reason per rejected feature, idempotency, the role
matrix and the audit log; gen-city's coordinates."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import shapefile  # pyshp
from pyproj import CRS

from scada import gis as G
from scada import quality as Q
from scada.audit import AuditLog
from scada.gencity import generate
from scada.loader import load_site
from scada.operations import Identity
from scada.runtime import Runtime

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
#: Lambert-93's natural origin: (700 000 m, 6 600 000 m) is 46.5 N, 3 E by definition of EPSG:2154
L93_ORIGIN = (700_000.0, 6_600_000.0)


@pytest.fixture
def site(tmp_path):
    out = tmp_path / "city.yaml"
    generate(200, 2, out_path=str(out), profiles_dir=str(PROFILES), seed=11, base_port=41000)
    return load_site(out, validate_drivers=False)


def _paths(site):
    cab = next(d for d in site.devices if d.kind == "cabinet")
    jct = next(d for d in site.devices if d.kind == "junction")
    return cab, cab.children[0], jct


def _fc(*features) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}).encode()


def _pt(fid, lon, lat, **props):
    return {"type": "Feature", "properties": {"id": fid, **props},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}


def test_geojson_counts_reasons_and_idempotency(site, tmp_path):
    cab, lum, jct = _paths(site)
    short = lum.path.split("/", 1)[1]  # cab-0001/lum-01: unique without the area
    data = _fc(
        _pt(cab.path, cab.location.lon, cab.location.lat),           # unchanged (site file)
        _pt(short, 5.05, 47.33),                                      # moved: updated
        _pt(jct.path, 5.0301, 47.3102),                               # updated
        _pt("nowhere/cab-9999", 5.0, 47.3),                           # unmatched
        {"type": "Feature", "properties": {"id": "x1"}, "geometry": None},
        {"type": "Feature", "properties": {"id": "x2"},
         "geometry": {"type": "LineString", "coordinates": [[5, 47], [5.1, 47.1]]}},
        _pt("x3", 5.0, 147.0),                                        # out of range
        _pt("x4", 652_000.0, 6_862_000.0),                            # projected metres
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 47.3]}},
        _pt(cab.children[1].path, 5.01, 47.31),                      # duplicate id ...
        _pt(cab.children[1].path, 5.02, 47.32),                      # ... twice
        _pt(cab.children[2].path, 2.35, 48.85),                       # Paris: far from Dijon
    )
    rep = G.import_file(site, "lamps.geojson", data, G.Options())
    c = rep.counts()
    assert c == {"features": 12, "created": 0, "updated": 2, "unchanged": 1, "unmatched": 1, "rejected": 8}
    reasons = {ref: why for ref, _id, why in rep.rejected}
    assert reasons["feature 5"] == "no geometry"
    assert reasons["feature 6"].startswith("not a point (LineString)")
    assert reasons["feature 7"].startswith("out of range: latitude 147")
    assert "wrong CRS" in reasons["feature 8"] and "--epsg" in reasons["feature 8"]
    assert reasons["feature 9"] == "no id (property 'id')"
    assert reasons["feature 10"].startswith("duplicate id") and reasons["feature 11"].startswith("duplicate id")
    assert "km from the site" in reasons["feature 12"]
    assert rep.unmatched == [("feature 4", "nowhere/cab-9999")]
    assert site.device(lum.path).location.lat == 47.33  # applied in memory
    store = G.PositionStore(site.state_dir)
    saved = store.load()
    assert saved[lum.path] == (47.33, 5.05) and saved[jct.path] == (47.3102, 5.0301)
    before = Path(store.path).read_bytes()
    # the same file again changes nothing, on disk or in the report
    again = G.import_file(site, "lamps.geojson", data, G.Options())
    assert again.counts() == {**c, "updated": 0, "unchanged": 3}
    assert not again.positions and Path(store.path).read_bytes() == before
    # a freshly loaded site gets the imported positions laid over the site file's
    fresh = load_site(site.path, validate_drivers=False)
    assert fresh.device(lum.path).location == fresh.device(cab.path).location  # the site file's
    G.apply_saved(fresh)
    assert (fresh.device(lum.path).location.lat, fresh.device(lum.path).location.lon) == (47.33, 5.05)


def test_csv_lambert93_reprojected_to_wgs84(site):
    cab, lum, _ = _paths(site)
    x, y = L93_ORIGIN
    # a French export: semicolons, decimal commas, Windows-1252 accents
    text = ("identifiant;commune;X;Y\n"
            f"{lum.path};Dijon;{x:.2f};{y:.2f}\n".replace(".", ",")
            + f"{cab.path};Chenôve;;\n")
    rep = G.import_file(site, "points.csv", text.encode("cp1252"), G.Options(id_field="identifiant", epsg=2154))
    assert rep.crs == "EPSG:2154" and rep.format == "csv"
    assert rep.counts()["updated"] == 1
    lat, lon = rep.positions[lum.path]
    assert abs(lat - 46.5) < 1e-6 and abs(lon - 3.0) < 1e-6
    assert rep.rejected == [("line 3", cab.path, "no geometry (empty coordinates)")]
    # x/y without a CRS is refused as a whole, saying what to pass
    with pytest.raises(G.GisError, match="--epsg"):
        G.import_file(site, "points.csv", text.encode("cp1252"), G.Options(id_field="identifiant"), dry_run=True)


def test_csv_lat_lon_and_dry_run(site):
    _, lum, _ = _paths(site)
    text = f"id,latitude,longitude\n{lum.path},47.3311,5.0422\n{lum.path}x,abc,5\n"
    before = Path(G.PositionStore(site.state_dir).path).read_bytes()  # gen-city's
    rep = G.import_file(site, "p.csv", text.encode(), G.Options(), dry_run=True)
    assert rep.counts()["updated"] == 1 and rep.dry_run
    assert rep.rejected[0][2].startswith("coordinates are not numbers")
    assert Path(G.PositionStore(site.state_dir).path).read_bytes() == before  # a dry run writes nothing
    assert site.device(lum.path).location.lat != 47.3311


def _shapefile_zip(rows, prj: str | None) -> bytes:
    parts = {ext: io.BytesIO() for ext in ("shp", "shx", "dbf")}
    w = shapefile.Writer(shp=parts["shp"], shx=parts["shx"], dbf=parts["dbf"], shapeType=shapefile.POINT)
    w.field("ASSET", "C", size=60)
    w.field("KIND", "C", size=20)
    for fid, xy in rows:
        if xy is None:
            w.null()
        else:
            w.point(*xy)
        w.record(fid, "lamp")
    w.close()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for ext, b in parts.items():
            z.writestr(f"lamps.{ext}", b.getvalue())
        if prj is not None:
            z.writestr("lamps.prj", prj)
    return buf.getvalue()


def test_shapefile_with_prj_in_lambert93(site):
    _, lum, jct = _paths(site)
    prj = CRS.from_epsg(2154).to_wkt("WKT1_ESRI")
    data = _shapefile_zip([(lum.path, L93_ORIGIN), (jct.path, None), ("ghost", (701_000.0, 6_601_000.0))], prj)
    rep = G.import_file(site, "lamps.zip", data, G.Options(id_field="asset"))
    assert rep.format == "shapefile" and "2154" in rep.crs
    lat, lon = rep.positions[lum.path]
    assert abs(lat - 46.5) < 1e-6 and abs(lon - 3.0) < 1e-6
    assert rep.rejected == [("record 2", jct.path, "no geometry")]
    assert rep.unmatched == [("record 3", "ghost")]
    with pytest.raises(G.GisError, match="no attribute 'id'"):
        G.import_file(site, "lamps.zip", data, G.Options(), dry_run=True)
    with pytest.raises(G.GisError, match=r"a \.zip of"):
        G.import_file(site, "lamps.zip", b"PK\x03\x04garbage", G.Options(), dry_run=True)


def test_whole_file_errors_are_clear(site):
    with pytest.raises(G.GisError, match="FeatureCollection"):
        G.import_file(site, "a.geojson", b'{"type": "Point"}', G.Options())
    with pytest.raises(G.GisError, match="not valid GeoJSON"):
        G.import_file(site, "a.geojson", b"{nope", G.Options())
    with pytest.raises(G.GisError, match="cannot tell the format"):
        G.import_file(site, "a.bin", b"\x00\x01", G.Options())
    with pytest.raises(G.GisError, match="EPSG"):
        G.Options.from_dict({"epsg": "lambert"})
    with pytest.raises(G.GisError, match="not a coordinate reference system"):
        G.import_file(site, "a.csv", b"id,x,y\na,1,2\n", G.Options(epsg=999999))


async def test_operator_api_role_matrix_and_audit(site, stepped_clock):
    rt = Runtime(site, stepped_clock)
    ops = rt.operations
    _, lum, _ = _paths(site)
    data = _fc(_pt(lum.path, 5.06, 47.34))
    moved = []
    ops.position_listeners.append(moved.append)
    for who in (Identity("v", "viewer"), Identity("o", "operator"), Identity("e", "engineer", frozenset({"dijon"}))):
        out = await ops.import_positions(who, "a.geojson", data)
        assert out.status == Q.BadUserAccessDenied
    out = await ops.import_positions(Identity("eng", "engineer", via="web 127.0.0.1"), "a.geojson", data)
    assert out.ok and out.data["updated"] == 1 and moved == [{lum.path: (47.34, 5.06)}]
    bad = await ops.import_positions(Identity("eng", "engineer"), "a.geojson", b"{", {"id_field": "id"})
    assert bad.status == Q.BadInvalidArgument and "GeoJSON" in bad.message
    ops.close()
    audit = [e for e in AuditLog.read(str(Path(site.state_dir) / "audit.log")) if e["action"] == "gis.import"]
    assert [(e["user"], e["outcome"]) for e in audit] == [
        ("v", "BadUserAccessDenied"), ("o", "BadUserAccessDenied"), ("e", "BadUserAccessDenied"),
        ("eng", "Good"), ("eng", "BadInvalidArgument")]
    assert audit[3]["updated"] == 1 and audit[3]["via"] == "web 127.0.0.1"


def test_gencity_places_luminaires_along_streets(site):
    G.apply_saved(site)
    for cab in (d for d in site.devices if d.kind in ("cabinet", "gateway")):
        own = [(c.location.lat, c.location.lon) for c in cab.children]
        assert len(set(own)) == len(own)  # every luminaire has its own place ...
        for lat, lon in own:  # ... within ~2.5 km of its cabinet (64 lamps x 35 m at most)
            assert G._km(lat, lon, cab.location.lat, cab.location.lon) < 2.5
    jpos = [(d.location.lat, d.location.lon) for d in site.devices if d.kind == "junction"]
    assert len(set(jpos)) == len(jpos)
    for lat, _lon in jpos:  # on the ~110 m street grid
        assert abs(lat / G_GRID - round(lat / G_GRID)) < 1e-6


G_GRID = 0.001


def test_cli_dry_run_offline(site, tmp_path):
    """`scada gis import --dry-run` reports without a server and writes nothing; without
    --dry-run the import needs the running console (a state change through the operator API)."""
    from click.testing import CliRunner

    from cli import main

    _, lum, _ = _paths(site)
    f = tmp_path / "p.geojson"
    f.write_bytes(_fc(_pt(lum.path, 5.0431, 47.3251), _pt("ghost", 5.0, 47.3)))
    r = CliRunner().invoke(main, ["gis", "import", str(f), "--site", site.path, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run (nothing changed)" in r.output and "1 updated" in r.output and "1 unmatched" in r.output
    assert "unmatched feature 2: no device 'ghost'" in r.output
    r = CliRunner().invoke(main, ["gis", "import", str(f), "--site", site.path, "--json", "--dry-run"])
    assert json.loads(r.output)["updated"] == 1
    r = CliRunner().invoke(main, ["gis", "import", str(f), "--site", site.path, "--user", "eng"])
    assert r.exit_code != 0 and "web console" in r.output


def test_map_config_tiles_and_multipart():
    from pydantic import ValidationError

    from scada.sections.web import MapConfig
    from scada.web.map_api import split_multipart, tile_dir

    with pytest.raises(ValidationError, match=r"\{z\}, \{x\} and \{y\}"):
        MapConfig(tiles="https://tiles.example/map.png")
    assert MapConfig(tiles="https://t.example/{z}/{x}/{y}.png").tiles.endswith("{y}.png")

    class _Site:
        path = "/srv/city/site.yaml"

    assert tile_dir(_Site, "tiles/") == "/srv/city/tiles"
    assert tile_dir(_Site, "https://t.example/{z}/{x}/{y}.png") is None
    body = (b"--b1\r\nContent-Disposition: form-data; name=\"id_field\"\r\n\r\nasset\r\n"
            b"--b1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
            b"Content-Type: text/csv\r\n\r\nid,lat\r\n1,2\r\n--b1--\r\n")
    parts = split_multipart("multipart/form-data; boundary=b1", body)
    assert parts == {"id_field": (None, b"asset"), "file": ("a.csv", b"id,lat\r\n1,2")}
    for bad in (body[:-8], b"nothing", body.replace(b"name=\"file\"", b"")):
        with pytest.raises(ValueError):
            split_multipart("multipart/form-data; boundary=b1", bad)
    with pytest.raises(ValueError, match="boundary"):
        split_multipart("application/json", body)
