"""gen-city: generated cities validate against the real profiles and look like a city."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from scada.gencity import generate
from scada.loader import load_site

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


def test_generated_city_is_valid_and_realistic(tmp_path):
    out = tmp_path / "city.yaml"
    st = generate(3000, 12, out_path=str(out), profiles_dir=str(PROFILES), seed=7, base_port=40000,
                  junctions_per_server=5)
    site = load_site(out)  # full validation, drivers included
    kinds = Counter(d.kind for d in site.all_devices())
    assert kinds["luminaire"] == st.luminaires == 3000
    assert kinds["junction"] == st.junctions == 12
    assert kinds["cabinet"] == st.cabinets and kinds["gateway"] == st.gateways
    cabinets = [d for d in site.devices if d.kind == "cabinet"]
    sizes = [len(c.children) for c in cabinets]
    assert all(1 <= s <= 64 for s in sizes) and sum(20 <= s for s in sizes) >= len(sizes) - st.areas
    dali = sum(len(d.children) for d in site.devices if d.kind == "gateway")
    assert 0.25 <= dali / 3000 <= 0.35  # the default 30 % behind DALI gateways
    for lum in (c for d in site.devices for c in d.children):
        assert lum.attrs["legacy_w"] > lum.attrs["nominal_w"] > 0
    ports = [d.connection["port"] for d in cabinets]
    assert len(set(ports)) == len(ports)
    # junctions share OPC UA endpoints (objects of one simulator server), on their own ports
    endpoints = Counter(d.connection["endpoint"] for d in site.devices if d.kind == "junction")
    assert len(endpoints) == st.junction_servers == 3 and max(endpoints.values()) <= 5
    jports = {int(e.rsplit(":", 1)[1].strip("/")) for e in endpoints}
    assert not jports & set(ports)
    assert site.config.schedules.profiles  # a dimming policy comes with the city


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    generate(800, 3, out_path=str(a), profiles_dir=str(PROFILES), seed=3)
    generate(800, 3, out_path=str(b), profiles_dir=str(PROFILES), seed=3)
    assert a.read_text() == b.read_text()
    generate(800, 3, out_path=str(b), profiles_dir=str(PROFILES), seed=4)
    assert a.read_text() != b.read_text()


def test_gen_city_cli(tmp_path):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "c.yaml"
    res = CliRunner().invoke(main, ["gen-city", "--luminaires", "500", "--junctions", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "500 luminaires" in res.output and "2 junctions" in res.output
    res = CliRunner().invoke(main, ["check", str(out)])
    assert res.exit_code == 0, res.output
