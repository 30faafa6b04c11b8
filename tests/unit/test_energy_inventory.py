"""Versioned KPI inputs: YAML and CSV inventories (added/removed points, stipulated hours,
contract start) load with their SHA-256, and a bad entry names the file and the entry."""

from __future__ import annotations

import hashlib
from datetime import date

import pytest

from historian.energy import inventory_from_site, load_inventory
from tests.fixtures.historian import make_site

YAML = """\
contract: {start: 2025-03-01, target_pct: 65}
hours: {stipulated_per_night: 11.5}
luminaires:
  - {path: centre/cab-1/lum-01, legacy_w: 170, nominal_w: 40, area: centre, cabinet: centre/cab-1}
  - {path: centre/cab-1/lum-02, legacy_w: 118, area: centre, cabinet: centre/cab-1, installed: 2025-07-01}
  - {path: centre/cab-1/lum-03, legacy_w: 83, removed: 2025-09-15}
"""


def test_yaml_inventory(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text(YAML)
    inv = load_inventory(str(p))
    assert inv.sha256 == hashlib.sha256(YAML.encode()).hexdigest()
    assert inv.stipulated_hours == 11.5 and inv.contract_start == date(2025, 3, 1)
    assert [(x.path, x.legacy_w, x.installed, x.removed) for x in inv.points] == [
        ("centre/cab-1/lum-01", 170.0, None, None),
        ("centre/cab-1/lum-02", 118.0, date(2025, 7, 1), None),
        ("centre/cab-1/lum-03", 83.0, None, date(2025, 9, 15)),
    ]


def test_csv_inventory_and_errors(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_text("path,legacy_w,nominal_w,area,cabinet,installed,removed\n"
                 "north/cab-2/lum-01,170,40,north,north/cab-2,2025-02-01,\n")
    inv = load_inventory(str(p))
    assert inv.points[0].installed == date(2025, 2, 1) and inv.points[0].removed is None
    bad = tmp_path / "bad.csv"
    bad.write_text("path,legacy_w\nnorth/cab-2/lum-01,lots\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2: field legacy_w"):
        load_inventory(str(bad))
    # an asset register's columns: lamp + ballast loss, LED nominal, commissioning date
    reg = tmp_path / "register.csv"
    reg.write_text("luminaire,lamp_w,ballast_pct,led_w,commissioned\nc/l1,150,13.3333333333,40,2025-07-01\n"
                   "c/l2,100,,30,\n")
    inv = load_inventory(str(reg))
    assert [(p.path, round(p.legacy_w, 6), p.nominal_w, p.installed) for p in inv.points] == [
        ("c/l1", 170.0, 40.0, date(2025, 7, 1)), ("c/l2", 100.0, 30.0, None)]


def test_inventory_from_site_attrs(tmp_path):
    site = make_site(tmp_path, cabinets=2, lamps=3)
    inv = inventory_from_site(site)
    assert len(inv.points) == 6 and {x.legacy_w for x in inv.points} == {170.0}
    assert inv.points[0].cabinet == "centre/cab-1" and len(inv.sha256) == 64
